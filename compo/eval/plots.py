"""PNG plots of a pipeline or ComPO run (matplotlib, Agg, no pyplot state).

votes.png: vote ratio n-/m per iteration, the skip threshold, accepted/skipped iterations;
updates.png: step size and kept fraction; logprobs.png: how the trained pairs' log-probs
moved; oracle.png (service oracle): identical responses, ties, position-inconsistent
verdicts and abstentions per iteration, mean response length base vs perturbed;
split.png: margins (and CHES) of the split; first_stage.png: TRL's loss curve.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from compo import fileio
from compo.data.ches import OVERLAP_GROUPS
from compo.rundir import mean_change

DPI = 110
WIDE = (10, 4)
HEADROOM = 1.25  # y-axis room above the highest vote ratio for the legend
COLORS = {"accepted": "tab:green", "skipped": "tab:red", "chosen": "tab:blue",
          "rejected": "tab:orange", "threshold": "black", "identical": "tab:brown",
          "ties": "tab:grey", "position_inconsistent": "tab:pink", "abstained": "tab:red",
          "base": "tab:blue", "perturbed": "tab:orange"}
SHARES = {"identical": "identical to the base", "ties": "judge ties",
          "position_inconsistent": "position-inconsistent", "abstained": "abstained"}
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


def iteration_axis(*axes) -> None:
    """Whole-number ticks on the iteration axis."""
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


# -- the series drawn (the dashboard, oracle_service/dashboard/, draws the same numbers) --

def vote_points(rows: list[dict]) -> dict[str, list[tuple[int, float]]]:
    """(iteration, vote ratio n-/m) of the accepted and of the skipped iterations."""
    return {state: [(row["iteration"], row["ratio"]) for row in rows
                    if row["accepted"] == accepted]
            for state, accepted in (("accepted", True), ("skipped", False))}


def step_points(rows: list[dict]) -> list[tuple[int, float]]:
    """(iteration, step size); 0 for a skipped iteration."""
    return [(row["iteration"], row["step"] or 0.0) for row in rows]


def kept_points(rows: list[dict]) -> list[tuple[int, float]]:
    """(iteration, fraction of entries kept) of the applied updates."""
    return [(row["iteration"], row["kept_fraction"]) for row in rows if row["accepted"]]


def logp_points(rows: list[dict], side: str) -> tuple[list[tuple[int, float]],
                                                      list[tuple[int, float]]]:
    """Mean change of log pi(y+) (side "chosen") or log pi(y-) ("rejected"): per accepted
    iteration, and its running sum over all iterations (skipped ones add 0)."""
    changes = [(row["iteration"], mean_change(row[f"logp_{side}_before"],
                                              row[f"logp_{side}_after"])) for row in rows]
    total, running = [], 0.0
    for iteration, change in changes:
        running += change
        total.append((iteration, running))
    accepted = [point for point, row in zip(changes, rows, strict=True) if row["accepted"]]
    return accepted, total


def oracle_rows(rows: list[dict]) -> list[dict]:
    """The rows with service-oracle comparisons."""
    return [row for row in rows if (row.get("oracle") or {}).get("comparisons")]


def share_points(rows: list[dict], name: str) -> list[tuple[int, float]]:
    """(iteration, share of the comparisons) of one diagnostic count (SHARES)."""
    return [(row["iteration"], row["oracle"][name] / row["oracle"]["comparisons"])
            for row in oracle_rows(rows)]


def length_points(rows: list[dict], side: str) -> list[tuple[int, float]]:
    """(iteration, mean length in characters) of the base or the perturbed responses."""
    return [(row["iteration"], row["oracle"][f"{side}_chars"]) for row in oracle_rows(rows)
            if row["oracle"].get(f"{side}_chars") is not None]


def xs_ys(points: list[tuple[int, float]]) -> tuple[list[int], list[float]]:
    return [x for x, _ in points], [y for _, y in points]


def plot_votes(rows: list[dict], threshold: float, path: Path) -> Path:
    """Vote ratio per iteration, the accept threshold, accepted and skipped iterations."""
    figure, (ax,) = new_figure()
    ax.plot([row["iteration"] for row in rows], [row["ratio"] for row in rows], color="grey",
            linewidth=0.8)
    for state, points in vote_points(rows).items():
        ax.scatter(*xs_ys(points), color=COLORS[state], label=f"{state} ({len(points)})",
                   zorder=3)
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
    left.bar(*xs_ys(step_points(rows)),
             color=[COLORS["accepted" if row["accepted"] else "skipped"] for row in rows])
    left.set(xlabel="iteration", ylabel="step size gamma * n-/m",
             title="Step size (skipped iterations: no step)")
    right.plot(*xs_ys(kept_points(rows)), marker=".", linestyle="")
    right.set(xlabel="iteration", ylabel="fraction of entries kept",
              title="Sparsity of each applied update", ylim=(0, None))
    iteration_axis(left, right)
    return save(figure, path)


def plot_logprobs(rows: list[dict], path: Path) -> Path:
    """Change of log pi(y+) and log pi(y-) of each iteration's pair, and its running sum."""
    figure, (left, right) = new_figure(2)
    for side, marker in (("chosen", "o"), ("rejected", "v")):
        accepted, total = logp_points(rows, side)
        label = "log pi(y+)" if side == "chosen" else "log pi(y-)"
        left.scatter(*xs_ys(accepted), color=COLORS[side], marker=marker, label=label)
        right.plot(*xs_ys(total), color=COLORS[side], label=label)
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


def plot_oracle(rows: list[dict], path: Path) -> Path:
    """The service oracle's diagnostics: shares of the comparisons, response lengths."""
    figure, (left, right) = new_figure(2)
    for name, label in SHARES.items():
        left.plot(*xs_ys(share_points(rows, name)), marker=".", color=COLORS[name],
                  label=label)
    left.set(xlabel="iteration", ylabel="share of comparisons", ylim=(0, 1.05),
             title="Identical responses (ties, no signal), judge ties, inconsistent, abstained")
    for side in ("base", "perturbed"):
        right.plot(*xs_ys(length_points(rows, side)), marker=".", color=COLORS[side],
                   label=f"{side} response")
    right.set(xlabel="iteration", ylabel="mean length (characters)", ylim=(0, None),
              title="Response length: base vs perturbed")
    iteration_axis(left, right)
    left.legend(fontsize="small")
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
    """votes.png, updates.png, logprobs.png (and oracle.png with the service oracle) of a
    ComPO run (none if it has no rows)."""
    rows = fileio.read_jsonl(run_dir / "metrics.jsonl")
    if not rows:
        return []
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8"))
    threshold = config["compo"]["accept_ratio"]
    paths = [plot_votes(rows, threshold, out_dir / "votes.png"),
             plot_updates(rows, out_dir / "updates.png"),
             plot_logprobs(rows, out_dir / "logprobs.png")]
    if oracle_rows(rows):
        paths.append(plot_oracle(rows, out_dir / "oracle.png"))
    return paths


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
