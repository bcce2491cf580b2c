"""The output layer read straight from safetensors, and checkpoints copied with a new one,
checked against what from_pretrained loads."""

import pytest
import torch

from compo.config import ModelConfig
from compo.demo.tiny import build_llama, save_model
from compo.errors import ModelError
from compo.model.checkpoint import copy_with_output_layer, read_output_layer, weight_files
from compo.model.head import output_layer
from compo.model.loading import load_model


def loaded(path, dtype="float32"):
    return load_model(ModelConfig(path=str(path), dtype=dtype))


def test_read_output_layer_is_what_the_loaded_model_holds(model_dir):
    for dtype, torch_dtype in (("float32", torch.float32), ("bfloat16", torch.bfloat16)):
        model = loaded(model_dir, dtype)
        assert torch.equal(read_output_layer(model_dir, torch_dtype),
                           output_layer(model).weight.float())


def test_copy_replaces_the_output_layer_and_nothing_else(model_dir, tmp_path):
    base = loaded(model_dir)
    head = output_layer(base).weight.detach().float() + 0.125
    out = copy_with_output_layer(model_dir, head, tmp_path / "final", torch.float32)
    tuned = loaded(out)
    assert torch.equal(output_layer(tuned).weight, head)
    for (name, a), (_, b) in zip(base.named_parameters(), tuned.named_parameters(), strict=True):
        assert name == "lm_head.weight" or torch.equal(a, b), name
    assert not list(tmp_path.glob(".final*"))  # no partial copy left behind


def test_tied_head_becomes_its_own_tensor(tokenizer, tmp_path):
    tied = save_model(build_llama(len(tokenizer), hidden=32, layers=1, tie_embeddings=True),
                      tokenizer, tmp_path / "tied")
    embedding = loaded(tied).get_input_embeddings().weight.detach().clone()
    assert torch.equal(read_output_layer(tied, torch.float32), embedding)
    out = copy_with_output_layer(tied, embedding * 2, tmp_path / "final", torch.float32)
    tuned = loaded(out)
    assert torch.equal(output_layer(tuned).weight, embedding * 2)
    assert torch.equal(tuned.get_input_embeddings().weight, embedding)


def test_sharded_checkpoints_are_read_and_copied(tokenizer, tmp_path):
    model = build_llama(len(tokenizer), hidden=32, layers=2)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    tokenizer.save_pretrained(tmp_path / "sharded")
    assert len(set(weight_files(tmp_path / "sharded").values())) > 2
    head = model.lm_head.weight.detach().float()
    assert torch.equal(read_output_layer(tmp_path / "sharded", torch.float32), head)
    out = copy_with_output_layer(tmp_path / "sharded", head - 1, tmp_path / "final",
                                 torch.float32)
    assert torch.equal(output_layer(loaded(out)).weight, head - 1)


def test_a_checkpoint_without_safetensors_is_refused(model_dir, tmp_path):
    (tmp_path / "config.json").write_text((model_dir / "config.json").read_text())
    with pytest.raises(ModelError, match="no model.safetensors"):
        read_output_layer(tmp_path, torch.float32)
