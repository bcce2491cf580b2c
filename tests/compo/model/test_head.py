"""The head is verified, not assumed: reproduced where the family does something after the
output layer, refused with its class and config fields where ComPO cannot follow."""

import pytest
import torch
from transformers import LlamaForCausalLM

from compo.config import ModelConfig
from compo.demo.families import build_family
from compo.errors import ModelError
from compo.model import head as head_module
from compo.model.head import PLAIN, head_error, head_input, head_of, probe_ids, verified_head
from compo.model.loading import load_model


class DoubledLogits(LlamaForCausalLM):
    """A family that does something ComPO does not know after its lm_head."""

    def forward(self, *args, **kwargs):
        out = super().forward(*args, **kwargs)
        out.logits = out.logits * 2 + 1
        return out


@pytest.mark.parametrize("family", ["Phi", "Cohere", "Granite", "Gemma2"])
def test_head_parts_matter_and_are_reproduced(family):
    model = build_family(family)
    ids = probe_ids(model)
    assert head_error(model, PLAIN, ids)[0] > 0.1  # the plain h W^T would be wrong
    assert head_error(model, head_of(model), ids)[0] < 1e-5
    verified_head(model)


def test_an_unknown_head_is_refused_naming_class_and_fields():
    model = build_family("Llama")
    odd = DoubledLogits(model.config).eval()
    odd.load_state_dict(model.state_dict())
    with pytest.raises(ModelError, match=r"DoubledLogits computes logits that ComPO does not "
                       r"reproduce .*logit_scale, logits_scaling, final_logit_softcapping"):
        verified_head(odd, "odd")


def test_loading_verifies_the_head(tmp_path, tokenizer, monkeypatch):
    build_family("Cohere").save_pretrained(tmp_path / "cohere")
    tokenizer.save_pretrained(tmp_path / "cohere")
    config = ModelConfig(path=str(tmp_path / "cohere"))
    assert head_of(load_model(config)).scale == 0.5
    monkeypatch.setattr(head_module, "head_of", lambda model: PLAIN)  # forget logit_scale
    with pytest.raises(ModelError, match="CohereForCausalLM computes logits"):
        load_model(config)


def test_head_input_is_what_the_output_layer_receives():
    model = build_family("OPT")  # OPT projects the body's output before its head
    ids = probe_ids(model)
    hidden = head_input(model, input_ids=ids)
    assert torch.allclose(model.lm_head(hidden), model(input_ids=ids).logits, atol=1e-6)
