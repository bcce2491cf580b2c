"""The oracle registry: every kind's fields in the oracle: section, no two kinds share a
field, an unknown kind is refused naming the registered ones, each kind owns its checks."""

import pytest

from compo.config import (
    ComPOConfig,
    DataConfig,
    ModelConfig,
    OracleCommon,
    OracleConfig,
    PerturbConfig,
    TrainConfig,
)
from compo.oracles import ORACLES, oracle_kind, report_url


def test_the_oracle_section_is_the_common_fields_plus_each_kinds_own():
    own = [set(kind.settings.model_fields) for kind in ORACLES.values()]
    assert all(not (a & b) for i, a in enumerate(own) for b in own[i + 1:])
    assert set(OracleConfig.model_fields) == set(OracleCommon.model_fields).union(*own)
    assert "temperature" in ORACLES["service"].settings.model_fields
    assert not ORACLES["likelihood"].settings.model_fields


def test_an_unknown_kind_names_the_registered_ones():
    with pytest.raises(ValueError, match="use one of likelihood, service"):
        OracleConfig(kind="judge")
    with pytest.raises(ValueError, match="use one of likelihood, service"):
        oracle_kind("judge")


def test_each_kind_owns_its_rules_and_report_url(tmp_path):
    base = {"model": ModelConfig(path=str(tmp_path)), "data": DataConfig(path="d.jsonl")}
    moved = ComPOConfig(perturb=PerturbConfig(target="mlp", last_layers=1))
    assert TrainConfig(**base, compo=moved).oracle.kind == "likelihood"
    with pytest.raises(ValueError, match="Set target: head or oracle.kind: likelihood"):
        TrainConfig(**base, compo=moved, oracle=OracleConfig(kind="service"))
    service = TrainConfig(**base, oracle=OracleConfig(kind="service", service_url="http://a"))
    assert report_url(service) == "http://a"
    assert report_url(TrainConfig(**base)) is None
    assert report_url(TrainConfig(**base, oracle_service_url="http://b")) == "http://b"
