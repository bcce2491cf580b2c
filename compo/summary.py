"""The final summary of a run, printed by `compo train` in every mode: iterations accepted
(and failed), how the trained pairs moved under the float32 master, and the lines the vote
source adds through an optional `summary() -> list[str]` (e.g. Ray: workers lost)."""

from __future__ import annotations


def source_summary(source) -> list[str]:
    """The lines a vote source adds to the summary (none without a `summary` method)."""
    method = getattr(source, "summary", None)
    return [str(line) for line in method()] if callable(method) else []


def pair_line(export: dict) -> str | None:
    """Mean change of log pi(y+) and log pi(y-) over the trained pairs, and their mean
    margin before -> after (export_report.json's sums; None: no pair was trained)."""
    pairs = export.get("pairs") or 0
    if not pairs:
        return None
    chosen, rejected = (value / pairs for value in export["master_change"])
    line = f"mean change of log pi(y+): {chosen:+.3f}, of log pi(y-): {rejected:+.3f}"
    base = export.get("base_logprobs")
    if base is not None:
        before = (base[0] - base[1]) / pairs
        line += f"; mean margin {before:+.3f} -> {before + chosen - rejected:+.3f}"
    return f"{line} ({pairs} trained pairs)"


def summary_lines(rows: list[dict], export: dict, extra: list[str]) -> list[str]:
    """The summary: accepted (and failed) iterations, the pairs' line, the source's lines."""
    accepted = sum(bool(row["accepted"]) for row in rows)
    failed = sum(bool(row.get("failed")) for row in rows)
    head = f"ComPO: {accepted}/{len(rows)} iterations accepted"
    if failed:
        head += f", {failed} failed (the oracle abstained: see 'failed' in metrics.jsonl)"
    return [head, *filter(None, [pair_line(export)]), *extra]
