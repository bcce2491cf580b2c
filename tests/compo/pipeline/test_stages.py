"""`compo pipeline` on the tiny fixture model: checks before work, stages, skips, resume."""

import json

import pytest
import torch
import yaml

from compo.config_files import deep_merge, parse_config
from compo.errors import ConfigError
from compo.fileio import read_tensors
from compo.model.export import fingerprint, read_delta
from compo.pipeline.config import PipelineConfig
from compo.pipeline.stages import run_pipeline

pytest.importorskip("trl")  # the `train` extra

HEAD = "lm_head.weight"


def small_config(tmp_path, model_dir, pairs_file, **changes) -> PipelineConfig:
    """Split by CHES (2 noisy, 2 clean), 2 DPO steps, 2 ComPO iterations."""
    base = {
        "output_dir": str(tmp_path / "out"), "model": {"path": str(model_dir)},
        "data": {"path": str(pairs_file)},
        "split": {"criterion": "ches", "ches": {"top_fraction": 0.5}},
        "first_stage": {"learning_rate": 1e-2, "max_steps": 2, "batch_size": 2,
                        "max_length": 64, "save_steps": 1, "logging_steps": 1,
                        "trl_args": {"gradient_checkpointing": False}},
        "compo": {"train": {"compo": {"num_perturbations": 64, "radius": 1e-2,
                                      "step_scale": 0.5, "accept_ratio": 0.05},
                            "checkpoint_every": 1, "epochs": 1}},
        "plots": False,
    }
    return parse_config(PipelineConfig, deep_merge(base, changes), "test")


def head(path) -> torch.Tensor:
    return read_tensors(path / "model.safetensors")[HEAD]


def test_two_stages_end_to_end_then_every_stage_is_skipped(tmp_path, model_dir, pairs_file,
                                                          capsys):
    config = small_config(tmp_path, model_dir, pairs_file, plots=True)
    summary = run_pipeline(config, progress=False)
    out = tmp_path / "out"
    assert (summary["split"]["noisy"], summary["split"]["clean"]) == (2, 2)
    assert summary["first_stage"]["steps"] == 2 and summary["first_stage"]["pairs"] == 2
    first = out / "first_stage" / "model"
    assert not torch.equal(head(first), head(model_dir))  # DPO moved the model
    run = yaml.safe_load((out / "compo/run/config.yaml").read_text())
    assert run["model"]["path"] == str(first)  # ComPO starts from the first stage
    assert run["data"]["path"] == str(out / "split/noisy.jsonl")
    _, _, metadata = read_delta(out / "compo/run/delta.safetensors")
    assert metadata["base_sha256"] == fingerprint(head(first))
    assert summary["final_model"] == str(out / "compo/run/final")
    assert summary["compo"]["iterations"] == 2
    assert {p.rsplit("/", 1)[1] for p in summary["plots"]} == {
        "split.png", "first_stage.png", "votes.png", "updates.png", "logprobs.png"}
    saved = parse_config(PipelineConfig, yaml.safe_load((out / "pipeline.yaml").read_text()))
    assert saved == config
    markers = {name: (out / name / "stage.json").read_text()
               for name in ("split", "first_stage", "compo")}
    assert all(json.loads(text)["done"] for text in markers.values())
    capsys.readouterr()
    again = run_pipeline(config, progress=False)
    assert capsys.readouterr().out.count("finished earlier") == 3
    assert again["compo"] == summary["compo"]
    assert markers == {name: (out / name / "stage.json").read_text() for name in markers}


def test_config_errors_are_reported_before_any_work(tmp_path, model_dir, pairs_file):
    cases = [
        ({"first_stage": {"trainer": "dpoo"}}, "first_stage.trainer"),
        ({"first_stage": {"loss_type": ["sigmoidd"]}}, "unknown DPO loss type"),
        ({"first_stage": {"trainer": "orpo", "loss_type": ["ipo"]}}, "dpo and cpo only"),
        ({"first_stage": {"trl_args": {"warmup_ratioo": 0.1}}}, "warmup_ratioo"),
        ({"first_stage": {"trl_args": {"lr_scheduler_type": "bogus"}}}, "rejected"),
        ({"first_stage": {"skip": True, "checkpoint": str(tmp_path / "nope")}},
         "first_stage.checkpoint"),
        ({"model": {"path": str(tmp_path / "missing")}}, "model.path"),
        ({"data": {"path": str(tmp_path / "missing.jsonl")}}, "data.path"),
        ({"compo": {"train": {"compo": {"radius": -1}}}}, "compo.radius"),
        ({"compo": {"train": {"model": {"path": "x"}}}}, "set by the pipeline"),
        ({"split": {"skip": True, "from_dir": str(tmp_path)}}, "split.from_dir"),
    ]
    for changes, expected in cases:
        with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
            run_pipeline(small_config(tmp_path, model_dir, pairs_file, **changes))
        assert not (tmp_path / "out").exists(), changes  # nothing was written or trained


def test_stage_options_are_checked_when_the_config_is_read(tmp_path, model_dir, pairs_file):
    cases = [({"trainerr": "dpo"}, "first_stage.trainerr: unknown key"),
             ({"checkpoint": str(model_dir)}, "checkpoint is used only with skip: true"),
             ({"trl_args": {"output_dir": "x"}}, "trl_args.output_dir is set by the pipeline")]
    for first, expected in cases:
        with pytest.raises(ConfigError, match=expected):
            small_config(tmp_path, model_dir, pairs_file, first_stage=first)


def test_empty_noisy_set_stops_before_the_first_stage(tmp_path, model_dir, pairs_file):
    config = small_config(tmp_path, model_dir, pairs_file,
                          split={"criterion": "margin", "delta": 1e-9})
    with pytest.raises(ConfigError, match=r"no noisy pairs .*raise split\.delta"):
        run_pipeline(config, progress=False)
    assert (tmp_path / "out/split/noisy.jsonl").read_text() == ""
    assert not (tmp_path / "out/first_stage").exists()


def test_a_changed_config_does_not_reuse_a_finished_stage(tmp_path, model_dir, pairs_file):
    only_split = {"first_stage": {"skip": True}, "compo": {"skip": True}}
    run_pipeline(small_config(tmp_path, model_dir, pairs_file, **only_split))
    changed = small_config(tmp_path, model_dir, pairs_file, **only_split,
                           split={"ches": {"top_fraction": 0.25}})
    with pytest.raises(ConfigError, match="stage split was made with a different config "
                                          r"\(changed: split\)"):
        run_pipeline(changed)


def interrupt_after(monkeypatch, iterations: int) -> None:
    """Make ComPO raise Ctrl-C once `iterations` iterations are done."""
    from compo.train import ComPOTrainer

    original, calls = ComPOTrainer._step, []

    def step(self, *args):
        if len(calls) == iterations:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(ComPOTrainer, "_step", step)


def test_compo_from_a_given_checkpoint_resumes_after_ctrl_c(tmp_path, model_dir, pairs_file,
                                                            monkeypatch):
    augment = {"split": {"skip": True}, "plots": False, "compo": {"train": {"epochs": 2}},
               "first_stage": {"skip": True, "checkpoint": str(model_dir)}}
    full = run_pipeline(small_config(tmp_path / "a", model_dir, pairs_file, **augment))
    assert full["compo"]["pairs"] == 4 and full["compo"]["iterations"] == 8
    config = small_config(tmp_path / "b", model_dir, pairs_file, **augment)
    with monkeypatch.context() as patch:
        interrupt_after(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(config)
    out = tmp_path / "b" / "out"
    assert not json.loads((out / "compo/stage.json").read_text())["done"]
    assert json.loads((out / "compo/run/checkpoint.json").read_text())["iterations_done"] == 3
    resumed = run_pipeline(config)
    assert resumed["compo"]["iterations"] == 8
    assert torch.equal(head(out / "compo/run/final"),
                       head(tmp_path / "a/out/compo/run/final"))


def test_a_ray_section_is_refused_not_ignored(tmp_path, model_dir, pairs_file):
    from compo.config import TrainConfig

    if "ray" not in TrainConfig.model_fields:
        pytest.skip("this TrainConfig has no ray section")
    config = small_config(tmp_path, model_dir, pairs_file, compo={"train": {"ray": {}}})
    with pytest.raises(ConfigError, match="compo.train.ray: the pipeline runs ComPO in this"):
        run_pipeline(config)
