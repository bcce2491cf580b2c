"""Target attention_output: the output layer and the attention output projection of each of
the last k layers; its layout, its refusals, and the tail's load-time check covering it."""

import pytest
import torch
from torch import nn

from compo.config import ComPOConfig, PerturbConfig
from compo.demo.families import build_family
from compo.errors import ModelError
from compo.model.layout import layout_of, model_tensors, moved_layer_count
from compo.model.tail import Tail
from compo.oracle import LikelihoodOracle

ATTENTION = PerturbConfig(target="attention_output", last_layers=2)


def test_one_output_projection_per_layer_follows_the_head():
    model = build_family("Llama")  # hidden 32, 2 layers
    layout = layout_of(model, ATTENTION)
    assert [b.name for b in layout.blocks] == ["lm_head.weight"] + [
        f"model.layers.{i}.self_attn.o_proj.weight" for i in (0, 1)]
    assert moved_layer_count(layout) == 2
    master = layout.stack(model_tensors(model, layout))
    for name, tensor in layout.tensors(master).items():  # round trip, model orientation
        assert torch.equal(tensor, dict(model.named_parameters())[name])


@pytest.mark.parametrize(("family", "name"), [
    ("Phi", "self_attn.dense"), ("GPT-NeoX", "attention.dense"), ("OPT", "self_attn.out_proj"),
    ("Phi3", "self_attn.o_proj")])
def test_each_family_names_its_projection(family, name):
    layout = layout_of(build_family(family), PerturbConfig(target="attention_output",
                                                           last_layers=1))
    [block] = layout.moved_layers
    assert block.name.endswith(f".layers.1.{name}.weight"), block.name


def test_gemma_projection_from_wider_heads_is_stored_transposed():
    model = build_family("Gemma")  # heads * head_dim differs from the hidden size
    block = layout_of(model, ATTENTION).moved_layers[0]
    weight = dict(model.named_parameters())[block.name]
    assert block.transposed == (weight.shape[1] != weight.shape[0])
    assert block.rows == weight.shape[1]


def test_layers_without_an_output_projection_are_refused_with_the_fix():
    model = build_family("Llama")
    model.model.layers[1].self_attn.o_proj = nn.Identity()  # as a linear-attention layer
    with pytest.raises(ModelError, match="no attention output projection.*target: head or mlp"):
        layout_of(model, ATTENTION)
    with pytest.raises(ModelError, match="get_decoder"):
        layout_of(build_family("GPT-2"), ATTENTION)


def test_a_family_whose_attention_ignores_the_moved_weight_is_refused_at_load_time():
    model = build_family("Llama")
    tail = Tail(model, layout_of(model, ATTENTION))
    for projection in tail.projections.values():  # as a forward reading .weight directly
        projection.forward = lambda x, p=projection: nn.functional.linear(x, p.weight)
    with pytest.raises(ModelError, match="ignore the moved weights"):
        tail.check()


def test_the_oracle_moves_the_attention_output_exactly_as_set():
    model = build_family("Qwen2")
    oracle = LikelihoodOracle(model, ComPOConfig(perturb=ATTENTION), pad_id=0)
    assert oracle.tail is not None and set(oracle.tail.projections) == {
        b.name for b in oracle.layout.moved_layers}
