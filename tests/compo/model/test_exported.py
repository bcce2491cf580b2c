"""bf16 end to end: export_report.json says what final/ keeps of the run's change, measured
on final/ as users load it; a float32 export keeps it."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from compo.config import ComPOConfig, DataConfig, ExportConfig, ModelConfig, TrainConfig
from compo.data.encoding import load_tokenized
from compo.demo.tiny import build_llama, save_model
from compo.model.conformance import own_logprobs
from compo.model.loading import load_tokenizer
from compo.train import ComPOTrainer, export_run, start_run
from tests.conftest import PAIRS, write_jsonl

VOCAB, HIDDEN = 4096, 64  # a bf16 head whose paper-scale steps fall below bf16's spacing
PAPER = ComPOConfig(num_perturbations=64, radius=5e-4, step_scale=0.035, accept_ratio=0.0)


@pytest.fixture(scope="module")
def bf16_model(tmp_path_factory, tokenizer):
    model = build_llama(VOCAB, hidden=HIDDEN, layers=1, seed=5).to(torch.bfloat16)
    return save_model(model, tokenizer, tmp_path_factory.mktemp("bf16") / "model")


def run(model_dir, tmp_path, export: str) -> tuple[dict, list]:
    data = DataConfig(path=str(write_jsonl(tmp_path / "pair.jsonl", PAIRS[:1])))
    config = TrainConfig(model=ModelConfig(path=str(model_dir), dtype="bfloat16"), data=data,
                         compo=PAPER, epochs=2, shuffle=False, seed=1, run_id=export,
                         output_dir=str(tmp_path / "runs"), export=ExportConfig(dtype=export))
    trainer = ComPOTrainer(config, start_run(config))
    summary = export_run(trainer, trainer.run(progress=False))
    assert all(row["accepted"] for row in trainer.run_dir.metrics())
    report = json.loads((trainer.run_dir.path / "export_report.json").read_text())
    assert report == summary["export"]
    return report, load_tokenized(data, load_tokenizer(model_dir))[0]


def user_change(model_dir, final, pairs) -> torch.Tensor:
    """What a user measures: final/ as README says to load it, against the base loaded in
    the same dtype, with the model's own logits."""
    tuned = AutoModelForCausalLM.from_pretrained(final, dtype="auto")
    base = AutoModelForCausalLM.from_pretrained(model_dir, dtype=tuned.dtype)
    if tuned.dtype == torch.float32:  # what it loaded, measured without float32 roundoff
        tuned, base = tuned.double(), base.double()
    change = own_logprobs(tuned, pairs) - own_logprobs(base, pairs)
    return torch.stack([change[0::2].sum(), change[1::2].sum()])


def test_a_bf16_export_loses_paper_scale_steps_and_says_so(bf16_model, tmp_path, caplog):
    report, pairs = run(bf16_model, tmp_path, "model")
    assert report["final_dtype"] == "bfloat16"
    master = torch.tensor(report["master_change"])
    assert (master.abs() > 1e-6).all()  # the float32 master moved both log-probs
    assert any(f is None or f < 0.9 for f in report["kept_fraction"])
    assert "set export.dtype: float32" in caplog.text
    # the report is what a user gets (bf16 logits: agreement to bf16's rounding)
    measured = user_change(bf16_model, tmp_path / "runs" / "model" / "final", pairs)
    assert torch.allclose(torch.tensor(report["exported_change"]), measured.float(),
                          atol=0.05)


def test_a_float32_export_keeps_the_change(bf16_model, tmp_path):
    report, pairs = run(bf16_model, tmp_path, "float32")
    assert report["final_dtype"] == "float32"
    assert all(f >= 0.9 for f in report["kept_fraction"]), report
    measured = user_change(bf16_model, tmp_path / "runs" / "float32" / "final", pairs)
    exported = torch.tensor(report["exported_change"], dtype=torch.float64)
    assert torch.allclose(exported, measured, rtol=1e-3, atol=1e-7)
