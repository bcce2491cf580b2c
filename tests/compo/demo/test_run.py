"""The embedded default: shipped data is reproducible and the demo does what it says."""

from compo.demo.pairs import ASSET, make_pairs
from compo.demo.run import DemoSettings, run_demo
from compo.fileio import read_jsonl


def test_shipped_pairs_match_the_generator():
    assert read_jsonl(ASSET) == make_pairs()


def test_demo_moves_most_trained_noisy_pairs_the_right_way(tmp_path, capsys):
    summary = run_demo(DemoSettings(workdir=tmp_path / "demo"), progress=False)
    out = capsys.readouterr().out
    assert "both (the ComPO goal)" in out
    assert summary["pairs"] >= 20 and summary["accepted"] > 0
    assert summary["both"] / summary["pairs"] > 0.5
    assert summary["margin_after"] > summary["margin_before"]
    run = tmp_path / "demo" / "runs" / "compo"
    for name in ("config.yaml", "metrics.jsonl", "delta.safetensors", "final/config.json"):
        assert (run / name).exists(), name
