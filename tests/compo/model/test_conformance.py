"""Every decoder family: base log-probs equal the model's own forward; perturbed changes
equal a float64 full forward with W + r z; votes agree on every perturbation."""

import pytest

from compo.demo.families import FAMILIES, build_family
from compo.model.conformance import check, markdown

PERTURBATIONS = 24  # per family in CI; `compo conformance` runs more


@pytest.mark.parametrize("family", list(FAMILIES))
def test_family_is_reproduced_exactly(family):
    row = check(build_family(family), family, PERTURBATIONS)
    assert row.refused is None, row.refused
    assert row.base_error < 1e-4  # nats, float32 model vs its own float32 forward
    assert row.perturbed_error < 1e-3
    assert row.vote_agreement == 1.0


def test_table_shows_refusals_with_their_reason():
    rows = [check(build_family("Llama"), "Llama", 2)]
    rows.append(rows[0].__class__("Odd", refused="OddForCausalLM: not supported"))
    table = markdown(rows)
    assert "| Llama | " in table and "100.0% of 2 |" in table
    assert "| Odd | refused: OddForCausalLM: not supported |" in table
