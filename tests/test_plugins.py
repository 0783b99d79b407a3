"""This repository's packages as LeRobot sees them: import paths, plugin shims, factories, stock scripts."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("robots", "teleop", "trainer")
SHIMS = ("lerobot_robot_flywheel", "lerobot_teleoperator_flywheel")


@pytest.mark.parametrize("name", PACKAGES)
def test_packages_resolve_to_this_repository(name):
    module = importlib.import_module(name)
    assert Path(module.__file__).resolve().is_relative_to(ROOT), module.__file__
    assert Path(module.__file__).resolve().parent == ROOT / name


def test_packages_resolve_to_this_repository_from_elsewhere(tmp_path):
    # Outside the checkout (so the current directory is not on sys.path) and isolated from
    # PYTHONPATH: only the install decides where `robots`, `teleop` and `trainer` come from.
    code = (
        "import importlib.util, json; "
        f"print(json.dumps({{n: importlib.util.find_spec(n).origin for n in {PACKAGES!r}}}))"
    )
    result = subprocess.run(
        [sys.executable, "-I", "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stderr
    origins = json.loads(result.stdout)
    for name in PACKAGES:
        assert Path(origins[name]).resolve() == ROOT / name / "__init__.py", origins


def test_no_installed_distribution_shadows_the_packages():
    # A PyPI project that installs a top-level `robots`/`teleop`/`trainer` would be listed here.
    owners = importlib.metadata.packages_distributions()
    for name in PACKAGES:
        assert set(owners.get(name, [])) <= {"flywheel"}, (name, owners.get(name))


def test_register_third_party_plugins_imports_the_shims():
    from lerobot.utils.import_utils import register_third_party_plugins

    for shim in SHIMS:
        sys.modules.pop(shim, None)
    register_third_party_plugins()
    for shim in SHIMS:
        assert shim in sys.modules, shim
        assert Path(sys.modules[shim].__file__).resolve().is_relative_to(ROOT / "plugins")

    import robots.sim
    import teleop.sim_operator

    assert sys.modules["lerobot_robot_flywheel"].SimArm is robots.sim.SimArm
    assert sys.modules["lerobot_teleoperator_flywheel"].SimOperator is teleop.sim_operator.SimOperator


def test_types_are_registered_with_lerobot():
    from lerobot.robots.config import RobotConfig
    from lerobot.teleoperators.config import TeleoperatorConfig

    from robots.sim import SimArmConfig
    from teleop.sim_operator import SimOperatorConfig

    assert RobotConfig.get_choice_class("sim") is SimArmConfig
    assert TeleoperatorConfig.get_choice_class("sim_operator") is SimOperatorConfig
    # The real arms stay available next to the sim.
    assert {"so100_follower", "koch_follower", "sim"} <= set(RobotConfig.get_known_choices())


def test_make_robot_from_config_builds_a_sim_arm():
    from lerobot.robots.utils import make_robot_from_config

    from robots.sim import SimArm, SimArmConfig

    robot = make_robot_from_config(SimArmConfig(task="reach-v3"))
    assert type(robot) is SimArm
    assert robot.config.task == "reach-v3"
    assert not robot.is_connected


def test_make_teleoperator_from_config_builds_a_sim_operator():
    from lerobot.teleoperators.utils import make_teleoperator_from_config

    from teleop.sim_operator import SimOperator, SimOperatorConfig

    operator = make_teleoperator_from_config(SimOperatorConfig(skill="noisy"))
    assert type(operator) is SimOperator
    assert operator.config.skill == "noisy"


def test_venv_sees_every_base_package():
    # Stock lerobot-teleoperate/-record import rerun; it lives in the base venv under rerun_sdk/,
    # which the base's own rerun_sdk.pth adds to sys.path.
    assert importlib.util.find_spec("lerobot") is not None
    assert importlib.util.find_spec("rerun") is not None, (
        "`import rerun` fails in .venv: scripts/bootstrap.sh writes the base site-packages into "
        "_flywheel_base.pth as a bare path, so the base's own .pth files (rerun_sdk.pth, "
        "distutils-precedence.pth, _cuda_bindings_redirector.pth) are never processed"
    )


LEROBOT_TELEOPERATE = [
    "--robot.type=sim",
    "--teleop.type=sim_operator",
    "--teleop.observation_source=local",
    "--teleop_time_s=1",
    "--fps=30",
    "--display_data=false",
]


@pytest.mark.slow  # about 12 s once it runs: the script imports every LeRobot robot and teleoperator
def test_stock_lerobot_teleoperate_drives_the_sim(tmp_path):
    script = Path(sys.executable).parent / "lerobot-teleoperate"
    assert script.exists()
    env = {**os.environ, "MUJOCO_GL": "egl"}
    result = subprocess.run(
        [str(script), *LEROBOT_TELEOPERATE],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "SimArm connected" in output
    assert "Teleop loop time" in output
