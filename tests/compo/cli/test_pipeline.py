"""The commands as a user runs them: `compo pipeline` on the embedded default (real TRL,
real ComPO), `compo compare`, `compo eval`, `compo plot`, and config errors at the CLI."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from compo.cli.main import build_parser, main
from compo.demo.compare import NOISY_ROWS, run_compare
from compo.demo.embedded import EmbeddedData, prepare_embedded

pytest.importorskip("trl")  # the `train` extra

NEW_SUBCOMMANDS = ["pipeline", "eval", "compare", "plot"]


def compo(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "compo.cli", *args], capture_output=True,
                          text=True, timeout=900)


def test_every_new_subcommand_has_help():
    for name in NEW_SUBCOMMANDS:
        with pytest.raises(SystemExit) as done:
            build_parser().parse_args([name, "--help"])
        assert done.value.code == 0


def test_cli_reports_a_config_error_and_exits_2(tmp_path, model_dir, pairs_file, capsys):
    config = tmp_path / "pipeline.yaml"
    config.write_text(yaml.safe_dump({
        "output_dir": str(tmp_path / "out"), "model": {"path": str(model_dir)},
        "data": {"path": str(pairs_file)}, "first_stage": {"trainer": "ppo"}}))
    assert main(["pipeline", "--config", str(config)]) == 2
    error = capsys.readouterr().err
    assert "first_stage.trainer" in error and "'dpo'" in error and "Traceback" not in error
    assert main(["pipeline", "--config", str(config), "--set", "nokey"]) == 2
    assert "expected KEY=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def embedded_model(tmp_path_factory):
    """The embedded default's start model, built once for this module."""
    return prepare_embedded(tmp_path_factory.mktemp("embedded")).model_dir


def workdir_with_model(tmp_path, model_dir):
    shutil.copytree(model_dir, EmbeddedData.at(tmp_path / "work").model_dir)
    return tmp_path / "work"


@pytest.mark.slow
def test_pipeline_on_the_embedded_default(tmp_path, embedded_model):
    workdir = workdir_with_model(tmp_path, embedded_model)
    result = compo("pipeline", "--workdir", str(workdir), "--no-progress")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((workdir / "run/summary.json").read_text())
    split, first, compo_stage = summary["split"], summary["first_stage"], summary["compo"]
    assert split["noisy"] > 0 and split["clean"] > 0 and "overlap" in split
    assert first["trainer"] == "dpo" and first["pairs"] == split["clean"]
    assert compo_stage["pairs"] == split["noisy"] == compo_stage["iterations"]
    assert compo_stage["accepted"] > 0 and compo_stage["delta_entries"] > 0
    assert len(summary["plots"]) == 5
    report = (workdir / "run/eval/report.md").read_text()
    assert "## Likelihood displacement against the base model" in report
    assert "![votes](../plots/votes.png)" in report
    again = compo("pipeline", "--workdir", str(workdir), "--no-progress")
    assert again.returncode == 0 and again.stdout.count("finished earlier") == 3


@pytest.mark.slow
def test_compare_prints_the_three_way_table(tmp_path, embedded_model, capsys):
    workdir = workdir_with_model(tmp_path, embedded_model)
    small = {"first_stage": {"max_steps": 3},
             "compo": {"train": {"max_iterations": 3, "compo": {"num_perturbations": 64}}}}
    result = run_compare(workdir, small, progress=False)
    rows = result["rows"]
    assert list(rows) == ["SFT (start)", "DPO (all pairs)", "DPO_clean", "DPO_clean + ComPO"]
    assert all(rows["SFT (start)"][key] == 0 for key in NOISY_ROWS)  # the baseline itself
    assert rows["DPO_clean"]["model"] != rows["DPO (all pairs)"]["model"]
    assert rows["DPO_clean + ComPO"]["noisy_pairs"] == result["split"]["noisy"]
    groups = result["criteria"]
    assert sum(group["pairs"] for group in groups.values()) == result["split"]["pairs"]
    assert sum(groups[name]["pairs"] for name in ("both noisy", "margin only")) == (
        result["split"]["noisy"])
    table = capsys.readouterr().out
    assert all(f"| {name} |" in table for name in rows)
    assert (workdir / "compare.md").read_text() in table


def test_eval_and_plot_commands(tmp_path, model_dir, pairs_file, capsys):
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(model_dir), "--data", str(pairs_file), "--base",
                 str(model_dir), "--out", str(out), "--max-new-tokens", "4"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["preference_accuracy"] == report["base_accuracy"]  # same model twice
    assert report["displacement"]["counts"]["log pi(y+) fell"] == 0
    assert "report:" in capsys.readouterr().out
    assert main(["plot", str(tmp_path / "nothing")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
