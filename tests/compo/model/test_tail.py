"""The tail (last layers, final norm) rerun from captured inputs, checked at load time."""

import pytest
import torch

from compo.config import PerturbConfig
from compo.demo.families import build_family
from compo.errors import ModelError
from compo.model.head import head_input
from compo.model.layout import layout_of, model_tensors
from compo.model.tail import Tail

FAMILIES = ["Llama", "Qwen2", "Gemma2", "Gemma3 text", "Phi", "Phi3", "GPT-NeoX", "Cohere",
            "OLMo2", "StableLM"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("family", FAMILIES)
def test_the_tail_reproduces_what_the_output_layer_receives(family, dtype):
    model = build_family(family, dtype=dtype)
    tail = Tail(model, layout_of(model, PerturbConfig(target="mlp", last_layers=2)))
    error = tail.check()
    assert error <= (1e-5 if dtype == torch.float32 else 0.1)


def test_padded_batches_and_moved_tensors():
    model = build_family("Gemma3 text")  # sliding-window and global layers: per-layer masks
    layout = layout_of(model, PerturbConfig(target="mlp", last_layers=2))
    tail = Tail(model, layout)
    sequences = [([5, 6, 7], [8, 9]), ([10, 11], [12, 13, 14, 15])]
    batches, targets = tail.prepare(sequences, pad_id=0, batch_size=2)
    own = tail.head_input(batches, {})
    expected = torch.cat([head_input(model, input_ids=torch.tensor([p + c]))[0, len(p) - 1 : -1]
                          for p, c in sequences])
    assert torch.allclose(own.float(), expected, atol=1e-5)
    assert targets.targets.tolist() == [8, 9, 12, 13, 14, 15]
    tensors = model_tensors(model, layout)
    moved = {name: value * 2 for name, value in tensors.items() if "mlp" in name}
    with torch.no_grad():
        for name, value in moved.items():
            dict(model.named_parameters())[name].copy_(value)
    doubled = torch.cat([head_input(model, input_ids=torch.tensor([p + c]))[0, len(p) - 1 : -1]
                         for p, c in sequences])
    assert torch.allclose(tail.head_input(batches, moved).float(), doubled, atol=1e-5)
    assert not torch.allclose(doubled, expected, atol=1e-3)


def test_a_tail_that_does_not_end_in_the_output_layer_is_refused():
    model = build_family("Llama")
    tail = Tail(model, layout_of(model, PerturbConfig(target="mlp", last_layers=1)))
    tail.norm = torch.nn.Identity()  # as if the family did something else before the head
    with pytest.raises(ModelError, match="do not end in its final norm"):
        tail.check()
