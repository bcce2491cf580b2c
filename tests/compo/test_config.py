import pytest

from compo.config import TrainConfig, load_config
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
