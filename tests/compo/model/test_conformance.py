"""Every decoder family: base log-probs equal the model's own forward; perturbed changes
equal a float64 full forward with W + r z (also with the last 2 layers' MLPs moving);
votes agree on every perturbation."""

import pytest

from compo.demo.families import FAMILIES, build_family
from compo.model.conformance import check, markdown

PERTURBATIONS = 24  # per family in CI; `compo conformance` runs more
NOT_RERUN = {"GPT-2", "OPT", "Falcon"}  # their MLPs cannot move (compo/model/layout.py)


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_is_reproduced_exactly(family):
    row = check(build_family(family), family, PERTURBATIONS)
    assert row.refused is None, row.refused
    assert row.base_error < 1e-4  # nats, float32 model vs its own float32 forward
    assert row.perturbed_error < 1e-3
    assert row.vote_agreement == 1.0
    if family in NOT_RERUN:
        assert "mlp_last_layers: 0" in row.moved_refused
    else:
        assert row.moved_refused is None, row.moved_refused
        assert row.moved_error < 1e-3 and row.moved_agreement == 1.0


def test_table_shows_refusals_with_their_reason():
    rows = [check(build_family("Llama"), "Llama", 2)]
    rows.append(rows[0].__class__("Odd", refused="OddForCausalLM: not supported"))
    table = markdown(rows)
    assert "| Llama | " in table and "100.0% of 2 |" in table
    assert "| Odd | refused: OddForCausalLM: not supported |" in table
