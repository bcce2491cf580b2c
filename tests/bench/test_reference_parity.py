"""bench/reference_parity.py: the four pipelines differ only where the tables compare them."""

import importlib.util
from pathlib import Path

from compo.demo.embedded import EmbeddedData

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "reference_parity.py"


def load_script():
    spec = importlib.util.spec_from_file_location("reference_parity", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_pipelines_share_the_split_and_change_one_thing_each(tmp_path):
    configs = load_script().pipelines(EmbeddedData.at(tmp_path), tmp_path)
    base, trial, ropo = configs["dpo_clean"], configs["dpo_clean_trial"], configs["ropo_clean"]
    assert base.first_stage.trainer == "dpo" and not base.split.skip
    for other in (trial, ropo):
        assert other.split.skip and other.split.from_dir == str(tmp_path / "dpo_clean/split")
    assert trial.first_stage.skip and trial.first_stage.checkpoint == str(
        tmp_path / "dpo_clean/first_stage/model")
    assert trial.compo.train["compo"] == {**base.compo.train["compo"],
                                          "accept_check": "trial_step"}
    assert ropo.first_stage.model_dump() == {**base.first_stage.model_dump(), "trainer": "ropo"}
    assert ropo.compo == base.compo
    moved = configs["dpo_clean_moved"]
    assert moved.split.from_dir == trial.split.from_dir
    assert moved.first_stage.checkpoint == trial.first_stage.checkpoint
    moved_compo, base_compo = dict(moved.compo.train["compo"]), dict(base.compo.train["compo"])
    assert moved_compo.pop("perturb")["mlp_last_layers"] == 2
    assert base_compo.pop("perturb", {}).get("mlp_last_layers", 0) == 0
    assert moved_compo == {**base_compo, "accept_check": "none"}


def test_tables_render_every_row():
    counts = {"iterations": 4, "accepted": 3, "trial_refused": 1, "pairs": 4, "chosen_up": 2,
              "rejected_down": 3, "both": 1, "mean_chosen_change": 0.5,
              "mean_rejected_change": -0.25, "seconds_per_iteration": 1.5}
    first = {"pairs": 4, "log pi(y+) fell": 3, "log pi(y-) rose": 1}
    table = load_script().markdown({
        "compo": {name: counts for name in ("dpo_clean", "dpo_clean_trial", "dpo_clean_moved",
                                               "ropo_clean")},
        "first_stage": {"dpo_clean": first, "ropo_clean": first}})
    assert "| accept_check: trial_step (scale 5) | 3 / 4 | 1 | 2 / 4 | 3 / 4 | 1 / 4 |" in table
    assert ("| output layer + MLPs of the last 2 layers | 3 / 4 | 2 / 4 | 3 / 4 | 1 / 4 | "
            "+0.500 | -0.250 | 1.50 |") in table
    assert "| ROPO_clean | 3 / 4 | 1 / 4 | 3 / 4 | 2 / 4 | 3 / 4 | 1 / 4 |" in table
