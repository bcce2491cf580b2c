"""PNG plots of a pipeline or ComPO run (matplotlib, Agg, no pyplot state).

votes.png: vote ratio n-/m per iteration, the skip threshold, accepted/skipped iterations;
updates.png: step size and kept fraction; logprobs.png: how the trained pairs' log-probs
moved; split.png: margins (and CHES) of the split; first_stage.png: TRL's loss curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from compo import fileio
from compo.data.ches import OVERLAP_GROUPS

DPI = 110
WIDE = (10, 4)
HEADROOM = 1.25  # y-axis room above the highest vote ratio for the legend
COLORS = {"accepted": "tab:green", "skipped": "tab:red", "chosen": "tab:blue",
          "rejected": "tab:orange", "threshold": "black"}
OVERLAP_COLORS = {(True, True): "tab:purple", (True, False): "tab:blue",
                  (False, True): "tab:orange", (False, False): "lightgrey"}


def new_figure(columns: int = 1):
    """A figure with `columns` side-by-side axes on the Agg canvas."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=WIDE, layout="constrained")
    axes = figure.subplots(1, columns)
    return figure, list(axes) if columns > 1 else [axes]


def save(figure, path: Path) -> Path:
    """Write the PNG atomically."""
    return fileio.atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=DPI))


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def iteration_axis(*axes) -> None:
    """Whole-number ticks on the iteration axis."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def plot_votes(rows: list[dict], threshold: float, path: Path) -> Path:
    """Vote ratio per iteration, the accept threshold, accepted and skipped iterations."""
    figure, (ax,) = new_figure()
    its = [row["iteration"] for row in rows]
    ax.plot(its, [row["ratio"] for row in rows], color="grey", linewidth=0.8)
    for state, accepted in (("accepted", True), ("skipped", False)):
        chosen = [row for row in rows if row["accepted"] == accepted]
        ax.scatter([r["iteration"] for r in chosen], [r["ratio"] for r in chosen],
                   color=COLORS[state], label=f"{state} ({len(chosen)})", zorder=3)
    ax.axhline(threshold, color=COLORS["threshold"], linestyle="--",
               label=f"skip threshold lambda = {threshold}")
    ax.set(xlabel="iteration", ylabel="vote ratio n- / m",
           title="ComPO: share of improving directions per iteration",
           ylim=(0, HEADROOM * max([threshold] + [row["ratio"] for row in rows])))
    iteration_axis(ax)
    ax.legend()
    return save(figure, path)


def plot_updates(rows: list[dict], path: Path) -> Path:
    """Step size (0 when skipped) and the kept fraction of the sparse update."""
    figure, (left, right) = new_figure(2)
    its = [row["iteration"] for row in rows]
    left.bar(its, [row["step"] or 0.0 for row in rows],
             color=[COLORS["accepted" if row["accepted"] else "skipped"] for row in rows])
    left.set(xlabel="iteration", ylabel="step size gamma * n-/m",
             title="Step size (skipped iterations: no step)")
    applied = [row for row in rows if row["accepted"]]
    right.plot([row["iteration"] for row in applied],
               [row["kept_fraction"] for row in applied], marker=".", linestyle="")
    right.set(xlabel="iteration", ylabel="fraction of entries kept",
              title="Sparsity of each applied update", ylim=(0, None))
    iteration_axis(left, right)
    return save(figure, path)


def plot_logprobs(rows: list[dict], path: Path) -> Path:
    """Change of log pi(y+) and log pi(y-) of each iteration's pair, and its running sum."""
    figure, (left, right) = new_figure(2)
    its = [row["iteration"] for row in rows]
    for side, marker in (("chosen", "o"), ("rejected", "v")):
        change = [mean(row[f"logp_{side}_after"]) - mean(row[f"logp_{side}_before"])
                  for row in rows]
        total, running = [], 0.0
        for value in change:
            running += value
            total.append(running)
        label = "log pi(y+)" if side == "chosen" else "log pi(y-)"
        shown = [(i, c) for i, c, row in zip(its, change, rows, strict=True) if row["accepted"]]
        left.scatter([i for i, _ in shown], [c for _, c in shown], color=COLORS[side],
                     marker=marker, label=label)
        right.plot(its, total, color=COLORS[side], label=label)
    left.axhline(0.0, color="grey", linewidth=0.8)
    right.axhline(0.0, color="grey", linewidth=0.8)
    left.set(xlabel="iteration", ylabel="change (nats)",
             title="Trained pair, accepted iterations")
    right.set(xlabel="iteration", ylabel="running sum of the changes (nats)",
              title="Running sum over iterations (goal: y+ up, y- down)")
    iteration_axis(left, right)
    left.legend()
    right.legend()
    return save(figure, path)


def plot_split(split_dir: Path, path: Path) -> Path:
    """Margin histogram with the delta band; margin vs CHES coloured by criterion."""
    report = json.loads((split_dir / "report.json").read_text(encoding="utf-8"))
    rows = [row for name in ("noisy", "clean")
            for row in fileio.read_jsonl(split_dir / f"{name}.jsonl")]
    has_ches = bool(rows) and "ches" in rows[0]
    figure, axes = new_figure(2 if has_ches else 1)
    edges, counts = report["histogram"]["edges"], report["histogram"]["counts"]
    axes[0].stairs(counts, edges, fill=True, alpha=0.6)
    for bound in (-report["delta"], report["delta"]):
        axes[0].axvline(bound, color=COLORS["threshold"], linestyle="--")
    axes[0].set(xlabel="margin log pi(y+) - log pi(y-) (reference model)", ylabel="pairs",
                title=f"Margins: {report['noisy']} noisy / {report['clean']} clean")
    if has_ches:
        for key, label in OVERLAP_GROUPS.items():
            group = [r for r in rows if (r["margin_noisy"], r["ches_noisy"]) == key]
            axes[1].scatter([r["margin"] for r in group], [r["ches"] for r in group], s=12,
                            color=OVERLAP_COLORS[key], label=f"{label} ({len(group)})")
        axes[1].set(xlabel="margin", ylabel="CHES score",
                    title=f"Margin vs CHES (used: {report.get('criterion', 'margin')})")
        axes[1].legend(fontsize="small")
    return save(figure, path)


def plot_first_stage(log_path: Path, path: Path) -> Path | None:
    """TRL's training loss (and reward margin when logged) per step."""
    history = [row for row in json.loads(log_path.read_text(encoding="utf-8"))
               if "loss" in row]
    if not history:
        return None
    figure, (left, right) = new_figure(2)
    steps = [row["step"] for row in history]
    left.plot(steps, [row["loss"] for row in history], marker=".")
    left.set(xlabel="step", ylabel="loss", title="First stage: training loss")
    margin_key = "rewards/margins"
    if margin_key in history[0]:
        right.plot(steps, [row[margin_key] for row in history], marker=".")
    right.set(xlabel="step", ylabel=margin_key, title="First stage: reward margin")
    return save(figure, path)


def compo_run_dir(folder: Path) -> Path | None:
    """The ComPO run directory in a pipeline output (or the folder itself)."""
    for candidate in (folder, folder / "compo" / "run"):
        if (candidate / "metrics.jsonl").is_file():
            return candidate
    return None


def plot_compo_run(run_dir: Path, out_dir: Path) -> list[Path]:
    """votes.png, updates.png and logprobs.png of a ComPO run (none if it has no rows)."""
    rows = fileio.read_jsonl(run_dir / "metrics.jsonl")
    if not rows:
        return []
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    threshold = config["compo"]["accept_ratio"]
    return [plot_votes(rows, threshold, out_dir / "votes.png"),
            plot_updates(rows, out_dir / "updates.png"),
            plot_logprobs(rows, out_dir / "logprobs.png")]


def plot_pipeline(folder: str | Path) -> list[Path]:
    """Every plot the folder has data for, written to <folder>/plots."""
    folder = Path(folder)
    out = folder / "plots"
    paths = []
    if (folder / "split" / "report.json").is_file():
        paths.append(plot_split(folder / "split", out / "split.png"))
    if (folder / "first_stage" / "log_history.json").is_file():
        paths.append(plot_first_stage(folder / "first_stage" / "log_history.json",
                                      out / "first_stage.png"))
    run_dir = compo_run_dir(folder)
    if run_dir is not None:
        paths += plot_compo_run(run_dir, out)
    return [path for path in paths if path is not None]
