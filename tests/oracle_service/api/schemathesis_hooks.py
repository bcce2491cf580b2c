"""Schemathesis hooks (SCHEMATHESIS_HOOKS=tests.oracle_service.api.schemathesis_hooks).

An iteration summary's n_minus may not exceed its m: the one rule of this API that JSON
Schema cannot state (the schema says it in words; the service answers 422). Generated
summaries are made to follow it (m and n_minus swapped), so that a 422 for them is not
read as a schema mismatch. `map_case` runs in every phase, coverage included.
"""

import schemathesis

SUMMARY_PATH = "/v1/runs/{run_id}/iterations"


def is_count(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if case.operation.path != SUMMARY_PATH or not isinstance(body, dict):
        return case
    m, n_minus = body.get("m"), body.get("n_minus")
    if is_count(m) and is_count(n_minus) and n_minus > m:
        case.body = {**body, "m": n_minus, "n_minus": m}
    return case
