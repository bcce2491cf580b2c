import pytest
import torch

from compo.config import ModelConfig
from compo.errors import DeltaError, ModelError
from compo.model.export import apply_delta, apply_delta_to, read_delta, write_delta
from compo.model.head import output_layer
from compo.model.loading import load_model, prepare_model


def test_delta_roundtrip_rebuilds_the_tuned_model(model_dir, tmp_path):
    model = load_model(ModelConfig(path=str(model_dir)))
    base = output_layer(model).weight.detach().float().clone()
    tuned = base.clone()
    tuned.view(-1)[torch.tensor([3, 77, 500])] += torch.tensor([0.5, -0.25, 1e-6])
    summary = write_delta(tmp_path / "delta.safetensors", base, tuned)
    assert summary["entries"] == 3
    indices, values, metadata = read_delta(tmp_path / "delta.safetensors")
    assert indices.tolist() == [3, 77, 500] and values.dtype == torch.float64
    out = apply_delta(model_dir, tmp_path / "delta.safetensors", tmp_path / "tuned")
    rebuilt = output_layer(load_model(ModelConfig(path=str(out)))).weight
    assert torch.equal(rebuilt, tuned)


def test_delta_refuses_a_different_base(model_dir, tmp_path):
    model = load_model(ModelConfig(path=str(model_dir)))
    base = output_layer(model).weight.detach().float().clone()
    write_delta(tmp_path / "d.safetensors", base, base + 1)
    with pytest.raises(DeltaError, match="differ from the ones"):
        apply_delta_to(base + 0.1, tmp_path / "d.safetensors")
    with pytest.raises(DeltaError, match="shape"):
        apply_delta_to(base[:-1], tmp_path / "d.safetensors")


def test_model_path_without_output_layer(tmp_path, tokenizer):
    from transformers import LlamaConfig, LlamaModel

    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1)
    LlamaModel(config).save_pretrained(tmp_path / "bare")
    with pytest.raises(ModelError, match="no output layer"):
        load_model(ModelConfig(path=str(tmp_path / "bare")))
    with pytest.raises(ModelError, match="no config.json"):
        load_model(ModelConfig(path=str(tmp_path / "missing")))
    with pytest.raises(ModelError, match="no linear output layer"):
        prepare_model(LlamaModel(config))


def test_tied_embeddings_are_untied(tokenizer, tmp_path):
    from compo.demo.tiny import build_llama, save_model

    tied = build_llama(len(tokenizer), hidden=32, layers=1, tie_embeddings=True)
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    save_model(tied, tokenizer, tmp_path / "tied")
    model = load_model(ModelConfig(path=str(tmp_path / "tied")))
    head, embed = output_layer(model).weight, model.get_input_embeddings().weight
    assert head.data_ptr() != embed.data_ptr() and torch.equal(head, embed)
    head.data += 1
    assert not torch.equal(head, embed)
    model.save_pretrained(tmp_path / "untied")
    reloaded = load_model(ModelConfig(path=str(tmp_path / "untied")))
    assert torch.equal(output_layer(reloaded).weight, head)
