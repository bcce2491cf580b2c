import pytest

from compo.config import TrainConfig
from compo.config_files import load_config
from compo.errors import ConfigError


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BASE = "model: {path: m}\ndata: {path: d.jsonl}\n"


def test_valid_config_gets_documented_defaults(tmp_path):
    config = load_config(TrainConfig, write(tmp_path, BASE))
    assert config.compo.num_perturbations == 1600 and config.compo.radius == 5e-4
    assert config.compo.accept_ratio == 0.2 and config.compo.step_scale == 0.035
    assert config.batch_size == 1


def test_unknown_key_names_file_and_field(tmp_path):
    path = write(tmp_path, BASE + "compo: {radiuss: 0.1}\n")
    with pytest.raises(ConfigError, match=r"run.yaml.*\n  compo.radiuss: unknown key"):
        load_config(TrainConfig, path)


def test_out_of_range_value_names_field(tmp_path):
    path = write(tmp_path, BASE + "compo: {radius: -1, accept_ratio: 1.5}\n")
    with pytest.raises(ConfigError) as error:
        load_config(TrainConfig, path)
    assert "compo.radius: Input should be greater than 0 (got -1)" in str(error.value)
    assert "compo.accept_ratio" in str(error.value)


def test_missing_section_and_bad_fraction(tmp_path):
    with pytest.raises(ConfigError, match="data: required"):
        load_config(TrainConfig, write(tmp_path, "model: {path: m}\n"))
    path = write(tmp_path, BASE + "compo: {clip: {mode: fraction, value: 2}}\n")
    with pytest.raises(ConfigError, match="fraction in"):
        load_config(TrainConfig, path)


def test_not_yaml(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(TrainConfig, write(tmp_path, "model: [unclosed\n"))


@pytest.mark.parametrize("extra, message", [
    ("compo: {accept_rule: at_least}\n", "accept_count .got None. goes with accept_rule"),
    ("compo: {accept_count: 330}\n", "goes with accept_rule: at_least only"),
    ("compo: {accept_rule: at_least, accept_count: 2000, num_perturbations: 1800}\n",
     "at most num_perturbations .1800."),
    ("data: {path: d.jsonl, reselect: {delta: 3}}\n", "set shuffle: false"),
    ("shuffle: false\ndata: {path: d.jsonl, reselect: {}}\nray: {}\n",
     "data.reselect: not supported on Ray"),
    ("compo: {accept_check: trial_step}\nray: {}\n",
     "compo.accept_check: trial_step: not supported on Ray"),
])
def test_reference_rules_are_checked_up_front(tmp_path, extra, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, write(tmp_path, "model: {path: m}\ndata: {path: d.jsonl}\n"
                                       + extra))


def test_reference_rules_are_off_by_default_and_parse(tmp_path):
    default = load_config(TrainConfig, write(tmp_path, BASE))
    assert default.compo.accept_rule == "strict" and default.compo.accept_check == "none"
    assert default.data.reselect is None
    text = ("model: {path: m}\ndata: {path: d.jsonl, reselect: {delta: 2}}\nshuffle: false\n"
            "compo: {accept_rule: at_least, accept_count: 330, num_perturbations: 1800, "
            "accept_check: trial_step}\n")
    config = load_config(TrainConfig, write(tmp_path, text))
    assert config.data.reselect.rule == "reference" and config.compo.trial_step_scale == 5.0


OLD = "compo: {{perturb: {{mlp_last_layers: {}}}}}\n"  # configs and saved runs before targets


def test_the_old_moved_layers_spelling_loads_as_the_mlp_target(tmp_path):
    old = load_config(TrainConfig, write(tmp_path, BASE + OLD.format(2)))
    assert (old.compo.perturb.target, old.compo.perturb.last_layers) == ("mlp", 2)
    zero = load_config(TrainConfig, write(tmp_path, BASE + OLD.format(0)))
    assert (zero.compo.perturb.target, zero.compo.perturb.last_layers) == ("head", 0)
    saved = TrainConfig.model_validate(old.model_dump())  # a run's saved config loads back
    assert saved.compo.perturb == old.compo.perturb


@pytest.mark.parametrize("perturb, message", [
    ("{target: mlp}", "set last_layers: k >= 1, or target: head"),
    ("{target: head, last_layers: 2}", "moves the output layer only; set last_layers: 0"),
    ("{target: heads}", "'heads' is not a target; use one of head, mlp"),
    ("{mlp_last_layers: 2, target: mlp}", "old spelling of target: mlp"),
    ("{mlp_last_layers: -1}", "last_layers"),
])
def test_a_target_that_cannot_be_is_refused_with_the_fix(tmp_path, perturb, message):
    with pytest.raises(ConfigError, match=message):
        load_config(TrainConfig, write(tmp_path, BASE + f"compo: {{perturb: {perturb}}}\n"))


def test_moving_layers_needs_the_likelihood_oracle(tmp_path):
    text = BASE + "compo: {perturb: {target: mlp, last_layers: 1}}\noracle: {kind: service}\n"
    with pytest.raises(ConfigError, match="Set target: head or oracle.kind: likelihood"):
        load_config(TrainConfig, write(tmp_path, text))
