"""compo plan from the command line: real checkpoints' shapes, the JSON line, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from compo.cli.main import main
from compo.plan.shapes import MODELS

JOB = """model: {path: unused, dtype: bfloat16}
data: {path: pairs.jsonl}
compo: {num_perturbations: 1800}
"""


@pytest.fixture
def job(tmp_path) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(JOB)
    return path


def plan(job: Path, capsys, *flags: str) -> tuple[int, dict, str]:
    """(exit code, the JSON of the last line, everything printed)."""
    code = main(["plan", "--config", str(job), "--json", *flags])
    out = capsys.readouterr().out
    return code, json.loads(out.splitlines()[-1]), out


def test_llama_3_70b_fits_on_30_gpus_of_80_gib_with_small_head_workers(job, capsys):
    code, result, out = plan(job, capsys, "--model", "llama-3-70b", "--workers", "28",
                             "--gpu-memory-gib", "80", "--tokens", "1000")
    assert code == 0 and result["fits"] and "fits: yes" in out
    assert result["gpus_total"] == 30  # the body's 2 and 28 head workers
    assert result["params"] == 70_553_706_496  # the checkpoint's published size
    head, body = result["roles"]["head_worker"], result["roles"]["body"]
    assert head["gib"] < 10 and head["instances"] == 28 and head["gpus"] == 1
    assert body["gpus"] == 2 and body["gib"] <= 80  # 131 GiB of bf16 weights over 2 GPUs
    assert result["roles"]["coordinator"]["gpus"] == 0
    assert result["bytes_per_iteration"] == sum(result["bytes_by_kind"].values())
    assert result["bytes_by_kind"]["votes"] == 1800 * 5
    assert "ESTIMATE" in out and result["seconds_per_iteration_estimate"]["total"] > 0


def test_a_directory_and_a_known_name_give_the_same_plan(job, capsys, tmp_path):
    shutil.copy(MODELS / "mistral-7b.json", tmp_path / "config.json")
    by_name = plan(job, capsys, "--model", "mistral-7b", "--workers", "4")[1]
    by_directory = plan(job, capsys, "--model", str(tmp_path), "--workers", "4")[1]
    assert by_name["roles"] == by_directory["roles"]
    assert by_name["params"] == 7_241_732_096


def test_moved_mlps_grow_the_head_worker_and_a_body_that_cannot_fit_says_so(job, capsys):
    plain = plan(job, capsys, "--model", "llama-3-8b", "--workers", "8")[1]
    job.write_text(JOB.replace("1800}", "1800, perturb: {mlp_last_layers: 2}}"))
    moved = plan(job, capsys, "--model", "llama-3-8b", "--workers", "8")[1]
    assert moved["roles"]["head_worker"]["gib"] > plain["roles"]["head_worker"]["gib"]
    assert "tail_layers" in moved["roles"]["head_worker"]["parts_gib"]
    code, squeezed, out = plan(job, capsys, "--model", "llama-3-8b", "--workers", "8",
                               "--gpus-per-body", "1", "--gpu-memory-gib", "8")
    assert code == 1 and not squeezed["fits"] and "fits: NO" in out


def test_the_service_oracle_plans_generation_workers(job, capsys):
    job.write_text(JOB + "oracle: {kind: service}\n")
    result = plan(job, capsys, "--model", "gemma-2-9b", "--workers", "4", "--gpu", "A100")[1]
    assert set(result["roles"]) == {"coordinator", "generation_worker"}
    worker = result["roles"]["generation_worker"]
    assert worker["fits"] and result["generation_batch"] >= 1
    assert "judge_requests" in result["bytes_by_kind"]


@pytest.mark.parametrize(("flags", "words"), [
    (["--model", "{tmp}/nowhere"], ["no config.json", "one of gemma-2-9b"]),
    (["--model", "{tmp}/odd"], ["model_type 'no-such-family'", "upgrade transformers"]),
    (["--model", "{tmp}/empty"], ["no model_type"]),
    (["--model", "mistral-7b", "--workers", "0"], ["--workers", "greater than 0"]),
    (["--model", "mistral-7b", "--tokens", "-5"], ["--tokens"]),
])
def test_bad_input_is_one_line_naming_the_fix(job, capsys, tmp_path, flags, words):
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text('{"model_type": "no-such-family"}')
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    flags = [flag.replace("{tmp}", str(tmp_path)) for flag in flags]
    workers = [] if "--workers" in flags else ["--workers", "2"]
    code = main(["plan", "--config", str(job), *workers, *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert all(word in err for word in words), err


def test_gpus_per_worker_set_in_the_config_is_used_and_an_overfull_worker_says_no(job, capsys):
    job.write_text(JOB + "oracle: {kind: service}\nray: {gpus_per_worker: 1.0}\n")
    code, result, _ = plan(job, capsys, "--model", "llama-3-70b", "--workers", "14")
    worker = result["roles"]["generation_worker"]
    assert code == 1 and not result["fits"] and worker["gpus_from"] == "ray.gpus_per_worker"
    code, result, _ = plan(job, capsys, "--model", "llama-3-70b", "--workers", "14",
                           "--gpus-per-worker", "2")
    assert code == 0 and result["roles"]["generation_worker"]["gpus"] == 2
