"""Robot presets (`--robot sim`) and the `flywheel` command line."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import re

import draccus
import pytest
import yaml

from flywheel import presets
from flywheel.cli import COMMANDS, main
from flywheel.configs import RecordConfig, RunConfig
from flywheel.contracts.dataset import DatasetConfig
from flywheel.contracts.endpoints import WireConfig
from flywheel.rollout.config import RolloutConfig
from flywheel.rollout.policy_source import PolicySourceConfig
from flywheel.rollout.safety import SafetyConfig
from robots.sim import SimArmConfig
from teleop.pedals import ConstantPedalConfig, KeyboardPedalConfig, SimPedalConfig
from teleop.process import TeleopProcessConfig
from teleop.sim_operator import SimOperatorConfig

SIM_YAML = presets.CONFIGS_DIR / "robots" / "sim.yaml"


def _leaf_flags(data: dict, prefix: str = "") -> dict[str, object]:
    """{'robot': {'type': 'sim'}} -> {'robot.type': 'sim'} (independent of presets.flatten)."""
    out: dict[str, object] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_leaf_flags(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_dict(args: list[str]) -> dict[str, str]:
    assert all(a.startswith("--") and "=" in a for a in args), args
    return dict(a[2:].split("=", 1) for a in args)


# --------------------------------------------------------------------------------------------------
# presets.expand


def test_sim_preset_is_listed_and_loads():
    assert {"sim", "so100", "koch"} <= set(presets.available())
    data = presets.load_preset("sim")
    assert data["robot"]["type"] == "sim"
    assert data == yaml.safe_load(SIM_YAML.read_text())


@pytest.mark.parametrize("argv", [["--robot", "sim"], ["--robot=sim"]], ids=["space", "equals"])
def test_sim_preset_expands_to_the_yaml_flags(argv):
    args = presets.expand(argv, RolloutConfig)
    leaves = _leaf_flags(yaml.safe_load(SIM_YAML.read_text()))
    expected = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in leaves.items()}
    assert _as_dict(args) == expected  # every key of sim.yaml is a field of RolloutConfig
    assert len(args) == len(expected)
    assert "--robot" not in args
    assert not any(a.startswith("--robot=") for a in args)


def test_type_comes_first_in_each_group():
    args = presets.expand(["--robot", "sim"], RolloutConfig)
    keys = [a[2:].split("=", 1)[0] for a in args]
    for group in ("robot", "teleop", "pedal"):
        members = [k for k in keys if k.startswith(f"{group}.")]
        assert members, group
        assert members[0] == f"{group}.type", members


def test_flags_after_the_preset_override_it():
    args = presets.expand(["--robot", "sim", "--robot.task=pick-place-v3"], RolloutConfig)
    assert presets.expand(["--robot=sim", "--robot.task=pick-place-v3"], RolloutConfig) == args
    assert args[-1] == "--robot.task=pick-place-v3"
    assert args.index("--robot.task=push-v3") < args.index("--robot.task=pick-place-v3")


def test_flags_before_the_preset_come_after_its_flags():
    # The preset's flags always go first, wherever --robot is on the command line.
    args = presets.expand(["--fps=10", "--robot", "sim", "--episodes=2"], RolloutConfig)
    assert args[-2:] == ["--fps=10", "--episodes=2"]
    assert args.index("--fps=30") < args.index("--fps=10")


def test_sim_preset_parses_with_draccus_and_later_flags_win():
    # One parse (draccus takes seconds per parse) checks the preset's values and both overrides.
    argv = ["--fps=10", "--robot", "sim", "--robot.task=pick-place-v3", "--teleop.skill=noisy"]
    cfg = draccus.parse(RolloutConfig, args=presets.expand(argv, RolloutConfig))
    assert isinstance(cfg.robot, SimArmConfig)
    assert cfg.robot.task == "pick-place-v3"  # given after the preset
    assert cfg.fps == 10  # given before the preset, still wins
    assert isinstance(cfg.teleop, SimOperatorConfig)
    assert cfg.teleop.skill == "noisy"
    assert isinstance(cfg.pedal, SimPedalConfig)
    assert cfg.policy.baseline == "random"
    assert cfg.episode_time_s == pytest.approx(6.67)


def test_keys_the_command_lacks_are_dropped():
    args = presets.expand(["--robot", "sim"], TeleopProcessConfig)
    keys = set(_as_dict(args))
    assert not any(k.startswith(("robot.", "policy.")) for k in keys), keys
    assert "episode_time_s" not in keys
    assert {"teleop.type", "teleop.skill", "pedal.type"} <= keys
    cfg = draccus.parse(TeleopProcessConfig, args=args)
    assert not hasattr(cfg, "robot")
    assert isinstance(cfg.teleop, SimOperatorConfig)
    assert isinstance(cfg.pedal, SimPedalConfig)


def test_record_config_gets_robot_and_teleop_but_no_pedal_or_policy():
    keys = set(_as_dict(presets.expand(["--robot", "sim"], RecordConfig)))
    assert {"robot.type", "robot.task", "teleop.type"} <= keys
    assert not any(k.startswith(("pedal.", "policy.")) for k in keys), keys


@pytest.mark.parametrize("argv", [["--robot", "nope"], ["--robot=nope"]])
def test_unknown_preset_names_the_flag_and_lists_presets(argv):
    with pytest.raises(ValueError, match="--robot") as info:
        presets.expand(argv, RolloutConfig)
    message = str(info.value)
    assert "'nope'" in message
    for name in presets.available():
        assert name in message


def test_dotted_robot_flags_are_left_alone():
    argv = ["--robot.type=sim", "--robot.task=reach-v3", "--fps=5"]
    assert presets.expand(argv, RolloutConfig) == argv
    assert presets.expand(["--robot.type", "sim"], RolloutConfig) == ["--robot.type", "sim"]


def test_a_preset_can_be_a_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("robot:\n  type: sim\n  task: reach-v3\n  camera: false\nfps: 15\n")
    args = presets.expand([f"--robot={path}"], RolloutConfig)
    assert args == ["--fps=15", "--robot.type=sim", "--robot.camera=false", "--robot.task=reach-v3"]
    assert presets.expand(["--robot", str(path)], RolloutConfig) == args


def test_a_preset_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ValueError, match="mapping"):
        presets.expand(["--robot", str(path)], RolloutConfig)


def test_flatten_writes_booleans_and_none_as_draccus_reads_them():
    assert presets.flatten({"b": True, "c": False, "n": None, "type": "x"}) == [
        "--type=x",
        "--b=true",
        "--c=false",
        "--n=null",
    ]


# --------------------------------------------------------------------------------------------------
# the flywheel command
#
# draccus re-reads the source of every config class on each parse (about 1.5 s for RolloutConfig
# here), so the tests below parse as few times as they can.


def test_top_level_help_lists_commands_and_presets(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in COMMANDS:
        assert re.search(rf"^  {name}\s", out, re.MULTILINE), name
    assert "robot presets" in out
    for name in presets.available():
        assert name in out


def test_no_arguments_prints_usage(capsys):
    assert main([]) == 0
    assert "commands:" in capsys.readouterr().out


def test_unknown_command_returns_2(capsys):
    assert main(["bogus"]) == 2
    captured = capsys.readouterr()
    assert "unknown command 'bogus'" in captured.err
    assert captured.out == ""


def _help(command: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code in (0, None)
    return out.getvalue()


def _sections(help_text: str) -> dict[str, dict[str, str]]:
    """Help text -> {section title: {option: its help, whitespace-normalised}}."""
    sections: dict[str, dict[str, str]] = {}
    options: dict[str, str] = {}
    option = None
    for line in help_text.splitlines():
        if line and not line[0].isspace():
            options = sections.setdefault(line.rstrip(":"), {})
            option = None
        elif m := re.match(r"^  (--[\w.]+)", line):
            option = m.group(1)
            options[option] = line[m.end() :]
        elif option is not None:
            options[option] += " " + line
    return {
        title: {o: " ".join(text.split()) for o, text in opts.items()} for title, opts in sections.items()
    }


@pytest.fixture(scope="module")
def rollout_help() -> dict[str, dict[str, str]]:
    text = _help("rollout")
    assert text.startswith("usage: flywheel rollout")
    return _sections(text)


# Sections of `flywheel rollout --help` whose fields this repository defines, with their flag prefix.
OWN_SECTIONS = {
    "RolloutConfig": (RolloutConfig, ""),
    "PolicySourceConfig ['policy']": (PolicySourceConfig, "policy."),
    "DatasetConfig ['dataset']": (DatasetConfig, "dataset."),
    "WireConfig ['wire']": (WireConfig, "wire."),
    "SimArmConfig ['robot']": (SimArmConfig, "robot."),
    "SimOperatorConfig ['teleop']": (SimOperatorConfig, "teleop."),
    "ConstantPedalConfig ['pedal']": (ConstantPedalConfig, "pedal."),
    "SimPedalConfig ['pedal']": (SimPedalConfig, "pedal."),
    "KeyboardPedalConfig ['pedal']": (KeyboardPedalConfig, "pedal."),
    "SafetyConfig ['safety']": (SafetyConfig, "safety."),
}
NESTED = {"robot", "policy", "dataset", "wire", "teleop", "pedal", "safety", "rerun"}


def _own_options():
    for title, (cls, prefix) in OWN_SECTIONS.items():
        for f in dataclasses.fields(cls):
            if prefix or f.name not in NESTED:
                yield title, f"--{prefix}{f.name}"


def test_rollout_help_lists_every_option(rollout_help):
    missing = [
        (title, option) for title, option in _own_options() if option not in rollout_help.get(title, {})
    ]
    assert not missing
    assert "sim" in rollout_help["RobotConfig ['robot']"]["--robot.type"]
    assert "sim_operator" in rollout_help["TeleoperatorConfig ['teleop']"]["--teleop.type"]
    assert "sim" in rollout_help["PedalConfig ['pedal']"]["--pedal.type"]


@pytest.mark.parametrize(
    ("title", "option", "default"),
    [
        ("RolloutConfig", "--fps", "30"),
        ("RolloutConfig", "--episode_time_s", "20.0"),
        ("RolloutConfig", "--local_teleop", "False"),
        ("DatasetConfig ['dataset']", "--dataset.root", "outputs/datasets/flywheel"),
        ("WireConfig ['wire']", "--wire.daemon_events", "tcp://127.0.0.1:5555"),
        ("WireConfig ['wire']", "--wire.teleop_state", "tcp://127.0.0.1:5556"),
        ("PolicySourceConfig ['policy']", "--policy.baseline", "hold"),
        ("SimArmConfig ['robot']", "--robot.task", "push-v3"),
        ("SimOperatorConfig ['teleop']", "--teleop.skill", "good"),
        ("SimPedalConfig ['pedal']", "--pedal.rule", "stuck_or_drift"),
    ],
)
def test_rollout_help_shows_defaults(rollout_help, title, option, default):
    assert f"(default: {default})" in rollout_help[title][option]


def test_rollout_help_shows_a_default_for_every_own_option(rollout_help):
    without = [option for title, option in _own_options() if "(default:" not in rollout_help[title][option]]
    assert not without


@pytest.mark.parametrize("command", ["teleop", "deploy"])
def test_other_commands_help(command):
    out = _help(command)
    assert out.startswith(f"usage: flywheel {command}")
    for f in dataclasses.fields(COMMANDS[command].config_class):
        assert f"--{f.name}" in out, f.name


def test_unknown_preset_on_the_command_line_returns_2(capsys):
    assert main(["rollout", "--robot", "nope"]) == 2
    err = capsys.readouterr().err
    assert "--robot" in err
    assert "'nope'" in err


def test_unknown_flag_exits_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["teleop", "--no_such_flag=1"])
    assert info.value.code == 2
    assert "no_such_flag" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["rollout", "--robot", "sim", "--robot.task=nope"], ["robot.task", "'nope'"]),
        (["teleop", "--robot", "sim", "--teleop.skill=clumsy"], ["teleop.skill", "'clumsy'"]),
    ],
    ids=["robot.task", "teleop.skill"],
)
def test_bad_value_returns_2_and_names_field_and_value(capsys, argv, words):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"flywheel {argv[0]}: ")
    for word in words:
        assert word in err
    assert "Traceback" not in err


def test_bare_boolean_flags_mean_true():
    from flywheel.cli import _bare_flags_true

    assert _bare_flags_true(["--rollback"]) == ["--rollback=true"]
    assert _bare_flags_true(["--local_teleop", "--fps=3"]) == ["--local_teleop=true", "--fps=3"]
    # A flag followed by its value, and --help, are left alone.
    assert _bare_flags_true(["--robot", "sim", "--help"]) == ["--robot", "sim", "--help"]


def test_retyping_a_section_drops_the_presets_fields_for_it():
    args = presets.expand(["--robot", "so100", "--pedal.type=keyboard"], RunConfig)
    assert not any(a.startswith("--pedal.") and a != "--pedal.type=keyboard" for a in args)
    cfg = draccus.parse(RunConfig, args=args)
    assert cfg.pedal.type == "keyboard" and cfg.robot.port == "/dev/ttyACM0"
