"""`compo plan`'s printed lines: one row per role, the bytes, the seconds (an estimate)."""

from __future__ import annotations

from compo.plan.hardware import EFFICIENCY


def size(count: float) -> str:
    """Bytes as B, kB, MB or GB (decimal)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.2f} {unit}"
    return f"{count:.0f} B"


def role_rows(plan: dict) -> list[str]:
    """One line per role: where it runs, GiB per GPU (per host for the coordinator)."""
    rows = [f"{'role':<18} {'GPUs x count':<13} {'GiB each':>9} {'of':>6}  fits  largest parts"]
    for name, role in plan["roles"].items():
        where = f"{role['gpus']} x {role['instances']}" if role["gpus"] else "CPU x 1"
        limit = plan["gpu_memory_gib"] if role["gpus"] else plan["host_memory_gib"]
        parts = sorted(role["parts_gib"].items(), key=lambda item: -item[1])[:3]
        largest = ", ".join(f"{part} {gib:.2f}" for part, gib in parts)
        if "gpus_from" in role:
            largest += f"; GPUs: {role['gpus_from']}"
        rows.append(f"{name:<18} {where:<13} {role['gib']:>9.2f} {limit:>6.1f}  "
                    f"{'yes' if role['fits'] else 'NO ':<4}  {largest} (+{role['overhead_gib']}"
                    " fixed)")
    return rows


def plan_lines(plan: dict) -> list[str]:
    """Everything `compo plan` prints before its JSON line."""
    seconds = plan["seconds_per_iteration_estimate"]
    sent = ", ".join(f"{kind} {size(count)}" for kind, count in plan["bytes_by_kind"].items())
    batch = (f", generation batch {plan['generation_batch']}"
             if plan["generation_batch"] else "")
    return [
        f"compo plan: {plan['model']} ({plan['params'] / 1e9:.2f}B parameters, V {plan['vocab']}"
        f", d {plan['hidden']}, {plan['dtype']}), {plan['oracle']} oracle, m = "
        f"{plan['perturbations']}, N = {plan['tokens']} completion tokens per iteration{batch}",
        *role_rows(plan),
        f"GPUs in all: {plan['gpus_total']} ({plan['gpu']}, {plan['gpu_memory_gib']} GiB each)",
        f"bytes per (accepted) iteration: {size(plan['bytes_per_iteration'])} ({sent}; the "
        f"step keeps {plan['kept_fraction']:.2%} of {plan['moved_elements']:,} moved entries)",
        f"seconds per iteration, an ESTIMATE (datasheet peaks x {EFFICIENCY}, "
        f"{plan['network_gbit_s']:g} Gbit/s network): "
        + ", ".join(f"{phase} {value:.2f}" for phase, value in seconds.items()),
        f"fits: {'yes' if plan['fits'] else 'NO: a role needs more memory than its GPU has'}",
    ]
