"""What workers/ and the service plug into compo resolves, and the CLI uses it: the Ray
placement of `compo train` and the service's commands."""

import pytest

from compo import plugins
from compo.cli.main import build_parser


def test_the_ray_placement_is_the_coordinators_trainer():
    pytest.importorskip("ray")
    from workers.coordinator import ray_trainer

    assert plugins.resolve(plugins.PLACEMENTS["ray"]) is ray_trainer


def test_the_service_commands_are_commands_of_compo():
    from oracle_service.reward_cli import cmd_fit
    from oracle_service.serve_cli import cmd_serve

    parser = build_parser()
    assert parser.parse_args(["serve", "--port", "8123"]).func is cmd_serve
    fit = ["reward-model", "fit", "--data", "d", "--base", "b", "--out", "o"]
    assert parser.parse_args(fit).func is cmd_fit


def test_a_name_that_is_not_there_is_refused():
    with pytest.raises(AttributeError, match="no_such_name"):
        plugins.resolve("compo.plugins:no_such_name")
    with pytest.raises(ModuleNotFoundError, match="no_such_module"):
        plugins.resolve("compo.no_such_module:name")
