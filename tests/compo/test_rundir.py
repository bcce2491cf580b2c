import json

import pytest
import torch

from compo.config import ComPOConfig
from compo.errors import RunError
from compo.perturbation import GENERATOR
from compo.rundir import Checkpoint, RunDirectory


def test_a_checkpoint_of_other_directions_is_refused(tmp_path):
    run_dir = RunDirectory(tmp_path / "run").create(ComPOConfig())
    run_dir.save_checkpoint(Checkpoint(3, torch.ones(4, 2)))
    state = json.loads(run_dir.checkpoint_path.read_text())
    assert state["directions"] == GENERATOR
    assert torch.equal(run_dir.load_checkpoint().weight, torch.ones(4, 2))
    del state["directions"]  # what a checkpoint of the generator before #11 looks like
    run_dir.checkpoint_path.write_text(json.dumps(state))
    with pytest.raises(RunError, match="started with other directions.*start a new run"):
        run_dir.load_checkpoint()
