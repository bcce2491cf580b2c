"""What trackers record: one metrics.jsonl row as named scalars, the config as flat
hyper-parameters. Pure functions of the row and the config."""

from __future__ import annotations

import json
from collections.abc import Mapping

from compo.rundir import mean_change

# metrics-row figures logged as compo/<name> (vote_ratio is the row's `ratio`)
ROW_FIELDS = {"ratio": "vote_ratio", "n_minus": "n_minus", "m": "m", "abstained": "abstained",
              "accepted": "accepted", "step": "step", "kept_fraction": "kept_fraction",
              "update_norm": "update_norm", "seconds": "seconds",
              "perturbations_per_s": "perturbations_per_s"}
NESTED = ("oracle", "ray")  # sections flattened to <section>/<name>[/<name>...]
SEP = "/"


def is_number(value) -> bool:
    return isinstance(value, int | float) and value == value  # bools count; NaN does not


def flat_numbers(prefix: str, value) -> dict[str, float]:
    """Numeric leaves of nested mappings as {prefix/a/b: value} (lists and None skipped)."""
    if isinstance(value, Mapping):
        out = {}
        for key, inner in value.items():
            out |= flat_numbers(f"{prefix}{SEP}{key}", inner)
        return out
    return {prefix: float(value)} if is_number(value) else {}


def mean_margin(row: dict, when: str) -> float | None:
    """Mean of log pi(y+) - log pi(y-) over the row's pairs, before or after the step."""
    chosen, rejected = row[f"logp_chosen_{when}"], row[f"logp_rejected_{when}"]
    return sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(chosen)


def iteration_scalars(row: dict) -> dict[str, float]:
    """The figures the dashboard shows, by tracker tag: vote ratio, accepted, step, kept
    fraction, mean log-prob changes and margins, the service oracle's verdicts, abstentions
    by kind, identical share and cost (oracle/...), Ray's counts (ray/...), throughput."""
    out = {f"compo{SEP}{name}": float(row[key]) for key, name in ROW_FIELDS.items()
           if is_number(row.get(key))}
    for side in ("chosen", "rejected"):
        change = mean_change(row[f"logp_{side}_before"], row[f"logp_{side}_after"])
        if change is not None:
            out[f"compo{SEP}logp_{side}_change"] = change
    if row["logp_chosen_before"]:
        for when in ("before", "after"):
            out[f"compo{SEP}margin_{when}"] = mean_margin(row, when)
    for section in NESTED:
        out |= flat_numbers(section, row.get(section) or {})
    return out


def hyperparameters(config: Mapping, prefix: str = "") -> dict[str, str | int | float | bool]:
    """The resolved config flattened to dotted names; lists and None as JSON text."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= hyperparameters(value, f"{name}.")
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = json.dumps(value)
    return out
