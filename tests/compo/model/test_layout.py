"""The stacked master: which tensors move, their rows, their orientation, the refusals."""

import pytest
import torch

from compo.config import PerturbConfig
from compo.demo.families import build_family
from compo.errors import ModelError
from compo.model.layout import Layout, layout_of, model_tensors, moved_layer_count


def mlp(k: int) -> PerturbConfig:
    return PerturbConfig(target="mlp", last_layers=k)


def test_output_layer_alone_by_default():
    model = build_family("Llama")
    layout = layout_of(model)
    assert [b.name for b in layout.blocks] == ["lm_head.weight"]
    assert layout.shape == tuple(model.lm_head.weight.shape)
    assert torch.equal(layout.stack(model_tensors(model, layout)), model.lm_head.weight)


def test_last_two_mlps_follow_the_head_as_rows_of_width_d():
    model = build_family("Llama")  # hidden 32, intermediate 64, 2 layers
    layout = layout_of(model, mlp(2))
    names = [b.name for b in layout.blocks]
    assert names == ["lm_head.weight"] + [f"model.layers.{i}.mlp.{p}_proj.weight"
                                          for i in (0, 1) for p in ("gate", "up", "down")]
    assert [b.transposed for b in layout.blocks] == [False] + [False, False, True] * 2
    assert layout.shape == (128 + 6 * 64, 32) and moved_layer_count(layout) == 2
    starts = [b.start for b in layout.blocks]
    assert starts == [0, 128, 192, 256, 320, 384, 448]  # contiguous blocks
    master = layout.stack(model_tensors(model, layout))
    for name, tensor in layout.tensors(master).items():  # round trip, model orientation
        assert torch.equal(tensor, dict(model.named_parameters())[name])
    assert Layout.from_description(layout.describe()) == layout


def test_only_the_last_layers_move():
    layout = layout_of(build_family("Qwen2"), mlp(1))
    assert {b.name.split(".mlp.")[0] for b in layout.moved_layers} == {"model.layers.1"}


def test_fused_projections_and_other_mlp_names():
    phi3 = layout_of(build_family("Phi3"), mlp(1))
    assert [(b.name.split(".")[-2], b.rows, b.transposed) for b in phi3.moved_layers] == [
        ("gate_up_proj", 128, False), ("down_proj", 64, True)]
    neox = layout_of(build_family("GPT-NeoX"), mlp(1))
    assert [b.name.split(".")[-2] for b in neox.moved_layers] == ["dense_h_to_4h",
                                                                  "dense_4h_to_h"]


@pytest.mark.parametrize(("family", "layers", "message"), [
    ("GPT-2", 1, "get_decoder"), ("Falcon", 1, "get_decoder"), ("OPT", 1, "no .mlp"),
    ("Llama", 3, "has 2 decoder layers")])
def test_models_whose_mlps_cannot_move_are_refused(family, layers, message):
    with pytest.raises(ModelError, match=message):
        layout_of(build_family(family), mlp(layers))
