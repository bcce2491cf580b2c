"""The judge budget's stop rule: once the service refuses comparisons for the budget (the
run's oracle.budget_usd or the service's COMPO_ORACLE_BUDGET_USD), the run stops before the
iteration's update, with the iterations before it saved and resumable (RunStopped).

The refused iteration takes no step and is not logged: `compo train --resume` after raising
the budget redoes it, and the comparisons already paid for come from the service's cache.
"""

from __future__ import annotations

from collections.abc import Iterable

from compo.errors import RunStopped
from oracle_service.schemas import ComparisonResult, ErrorKind


def check_budget(results: Iterable[ComparisonResult], iteration: int) -> None:
    """RunStopped with the service's message when any comparison abstained for the budget."""
    for result in results:
        if result.error is not None and result.error.kind is ErrorKind.BUDGET:
            raise RunStopped(f"judge budget reached at iteration {iteration}: "
                             f"{result.error.message}. The iterations before it are saved; "
                             "continue with: compo train --resume RUN_DIR")
