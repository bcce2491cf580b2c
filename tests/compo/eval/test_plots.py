"""Plots of a run: files are real PNGs and show what the metrics say."""

import json

import pytest
import yaml

from compo.eval.plots import plot_compo_run, plot_pipeline, plot_split

pytest.importorskip("matplotlib")  # the `train` extra

GREEN = (0x2C, 0xA0, 0x2C)  # matplotlib's tab:green: accepted iterations


def write_run(folder, accepted: list[bool]):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"compo": {"accept_ratio": 0.2}}))
    rows = [{"iteration": i, "ratio": 0.3 if ok else 0.1, "accepted": ok,
             "step": 0.5 if ok else None, "kept_fraction": 0.02 if ok else None,
             "logp_chosen_before": [-3.0], "logp_chosen_after": [-2.0 if ok else -3.0],
             "logp_rejected_before": [-4.0], "logp_rejected_after": [-5.0 if ok else -4.0]}
            for i, ok in enumerate(accepted)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def count_colour(path, rgb) -> int:
    from matplotlib.image import imread

    pixels = (imread(path)[..., :3] * 255).round().astype(int)
    return int(((abs(pixels - rgb)).sum(-1) <= 6).sum())


def test_run_plots_are_pngs_and_show_accepted_iterations(tmp_path):
    paths = plot_compo_run(write_run(tmp_path / "a", [True, False, True]), tmp_path / "a/p")
    assert [p.name for p in paths] == ["votes.png", "updates.png", "logprobs.png"]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    skipped = plot_compo_run(write_run(tmp_path / "b", [False, False]), tmp_path / "b/p")
    # green marks accepted iterations; with none only the legend's "accepted (0)" is green
    assert count_colour(paths[0], GREEN) > 2 * count_colour(skipped[0], GREEN)
    assert count_colour(paths[1], GREEN) > 0 == count_colour(skipped[1], GREEN)  # step bars


def test_split_plot_and_pipeline_folder(tmp_path):
    split = tmp_path / "out" / "split"
    split.mkdir(parents=True)
    report = {"delta": 1.0, "noisy": 1, "clean": 1, "criterion": "margin",
              "histogram": {"edges": [-1.0, 0.0, 1.0, 2.0], "counts": [0, 1, 1]}}
    (split / "report.json").write_text(json.dumps(report))
    for name, margin, ches in (("noisy", 0.5, 0.1), ("clean", 1.5, 2.0)):
        row = {"margin": margin, "ches": ches, "margin_noisy": name == "noisy",
               "ches_noisy": name == "clean"}
        (split / f"{name}.jsonl").write_text(json.dumps(row) + "\n")
    assert plot_split(split, tmp_path / "s.png").is_file()
    write_run(tmp_path / "out" / "compo" / "run", [True])
    names = [p.name for p in plot_pipeline(tmp_path / "out")]
    assert names == ["split.png", "votes.png", "updates.png", "logprobs.png"]
    assert plot_pipeline(tmp_path / "empty") == []


def test_a_run_without_iterations_has_no_plots(tmp_path):
    assert plot_compo_run(write_run(tmp_path / "r", []), tmp_path / "p") == []


BROWN = (0x8C, 0x56, 0x4B)  # tab:brown: the identical-response share


def test_service_oracle_runs_get_the_diagnostics_plot(tmp_path):
    from compo.eval.plots import length_points, share_points

    folder = write_run(tmp_path / "s", [True, False])
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    for row, identical in zip(rows, (2, 9), strict=True):
        row["oracle"] = {"comparisons": 10, "identical": identical, "ties": 1,
                         "position_inconsistent": 1, "abstained": 0, "base_chars": 30.0,
                         "perturbed_chars": 33.5}
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    paths = plot_compo_run(folder, tmp_path / "s/p")
    assert [p.name for p in paths] == ["votes.png", "updates.png", "logprobs.png", "oracle.png"]
    assert share_points(rows, "identical") == [(0, 0.2), (1, 0.9)]
    assert length_points(rows, "perturbed") == [(0, 33.5), (1, 33.5)]
    assert count_colour(paths[3], BROWN) > 0
