"""The head is verified, not assumed: reproduced where the family does something after the
output layer, refused with its class and config fields where ComPO cannot follow; a family
whose logits depend on right padding or on later tokens is refused at load time."""

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from compo.config import ModelConfig
from compo.demo.families import build_family, build_type, tiny_config
from compo.errors import ModelError
from compo.model import head as head_module
from compo.model.conformance import own_logprobs, probe_pairs
from compo.model.head import (
    PLAIN,
    Head,
    head_error,
    head_input,
    head_of,
    probe_ids,
    verified_head,
)
from compo.model.loading import load_model
from compo.model.scoring import score_pairs


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
                       r"reproduce .*logit_scale, lm_head_multiplier, logits_scaling, "
                       r"final_logit_softcapping.* \(here: none set\)"):
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


class OneAtATime(LlamaForCausalLM):
    """A family whose forward raises on a batch of several sequences."""

    def forward(self, input_ids=None, **kwargs):
        if input_ids.shape[0] > 1:
            raise RuntimeError("fused kernel: batch of 3 not supported")
        return super().forward(input_ids=input_ids, **kwargs)


@pytest.mark.parametrize("model_type, field, multiplies", [
    ("hyperclovax", "logits_scaling", True),  # muP: multiplies, where Granite divides
    ("granite", "logits_scaling", False),
    ("falcon_h1", "lm_head_multiplier", True),
    ("cohere2", "logit_scale", True),
])
def test_scalings_after_the_output_layer_are_reproduced(model_type, field, multiplies):
    model = build_type(model_type)  # the field set at random, away from 1
    value = getattr(model.config, field)
    head = verified_head(model, model_type)
    assert head.scale == pytest.approx(value if multiplies else 1 / value)
    assert head_error(model, Head(head.bias, 1 / head.scale, None), probe_ids(model))[0] > 0.1


def test_a_scaling_before_the_output_layer_is_not_applied_twice():
    model = build_type("minicpm3")  # divides h by logits_scaling: inside the captured input
    assert model.config.logits_scaling != 1.0
    assert verified_head(model, "minicpm3").scale == 1.0


@pytest.mark.parametrize("model_type, field", [
    ("recurrent_gemma", "logits_soft_cap"),
    ("xlstm", "output_logit_soft_cap"),
    ("gemma4", "final_logit_softcapping"),  # a composite model: the field is in text_config
])
def test_soft_caps_of_every_spelling_are_reproduced(model_type, field):
    model = build_type(model_type)
    head = verified_head(model, model_type)
    assert head.cap == getattr(model.config.get_text_config(), field)


def test_a_family_that_ignores_the_attention_mask_under_padding_is_refused():
    """CpmAnt takes its mask from the token ids and assumes left padding: in ComPO's
    right-padded batches its log-probs are silently wrong, so it is refused at load."""
    model = build_type("cpmant")
    pairs = probe_pairs(output_layer_rows(model))
    chosen, rejected = score_pairs(model, pairs, pad_id=0, batch_size=6)
    batched = torch.stack([chosen, rejected], 1).flatten()
    assert (batched - own_logprobs(model, pairs)).abs().max() > 1.0  # nats
    with pytest.raises(ModelError, match=r"cpmant: CpmAntForCausalLM gives a sequence other "
                       r"logits in a right-padded batch than alone .* attention_mask"):
        verified_head(model, "cpmant")


def test_loading_refuses_a_family_that_ignores_the_attention_mask(tmp_path):
    build_type("cpmant").save_pretrained(tmp_path / "cpmant")
    with pytest.raises(ModelError, match=r"model.path=.*cpmant: CpmAntForCausalLM gives a "
                       r"sequence other logits in a right-padded batch"):
        load_model(ModelConfig(path=str(tmp_path / "cpmant")))


def test_logits_cut_to_an_unpadded_vocabulary_are_refused_naming_the_field():
    model = build_type("inkling_text")  # lm_head of 128 rows, logits cut to the first 120
    with pytest.raises(ModelError, match=r"InklingForCausalLM returns 120 logits per position "
                       r"but its output layer has 128 rows.*unpadded_vocab_size=120"):
        verified_head(model, "inkling")


def test_a_model_that_sees_later_tokens_is_refused_naming_the_flag():
    config = tiny_config("bert")
    config.is_decoder = False  # BERT's LM head without the decoder flag: bidirectional
    model = AutoModelForCausalLM.from_config(config).eval()
    with pytest.raises(ModelError, match=r"logits at a position change with later tokens.*"
                       r"is_decoder=False"):
        verified_head(model, "bert")


def test_a_raw_error_of_the_forward_is_a_refusal():
    model = build_family("Llama")
    odd = OneAtATime(model.config).eval()
    with pytest.raises(ModelError, match=r"odd: OneAtATime's forward fails on the load-time "
                       r"probe .*RuntimeError: fused kernel: batch of 3 not supported"):
        verified_head(odd, "odd")


def output_layer_rows(model) -> int:
    return model.get_output_embeddings().weight.shape[0]
