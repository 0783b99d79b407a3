"""Presets: `--robot so100` expands to the flags written in configs/robots/so100.yaml.

The preset's flags come first, so flags given after it on the command line override them. Only the
preset's keys that the command has are used (`flywheel teleop --robot sim` takes its teleop and
pedal, not its robot), and a section given another type on the command line drops the preset's
fields for it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"


def available(kind: str = "robots") -> list[str]:
    return sorted(p.stem for p in (CONFIGS_DIR / kind).glob("*.yaml"))


def load_preset(name_or_path: str, kind: str = "robots") -> dict[str, Any]:
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIGS_DIR / kind / f"{name_or_path}.yaml"
    if not path.exists():
        raise ValueError(
            f"--robot: no preset {name_or_path!r}; presets: {available(kind)}, or a path to a .yaml"
        )
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a preset must be a mapping of fields, got {type(data).__name__}")
    return data


def flatten(data: dict[str, Any], prefix: str = "") -> list[str]:
    """{'robot': {'type': 'sim'}} -> ['--robot.type=sim'] (type first: draccus needs it to pick the class)."""
    args = []
    for key in sorted(data, key=lambda k: (k != "type", k)):
        value, name = data[key], f"{prefix}{key}"
        if isinstance(value, dict):
            args += flatten(value, f"{name}.")
        elif isinstance(value, bool):
            args.append(f"--{name}={'true' if value else 'false'}")
        elif value is None:
            args.append(f"--{name}=null")
        else:
            args.append(f"--{name}={value}")
    return args


def expand(argv: list[str], config_class: type) -> list[str]:
    """Replace `--robot NAME` / `--robot=NAME` (no dot after --robot) with the preset's flags."""
    fields = {f.name for f in dataclasses.fields(config_class)}
    out: list[str] = []
    preset_args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--robot" and i + 1 < len(argv):
            name, i = argv[i + 1], i + 2
        elif arg.startswith("--robot=") and "." not in arg.split("=", 1)[0]:
            name, i = arg.split("=", 1)[1], i + 1
        else:
            out.append(arg)
            i += 1
            continue
        preset = {k: v for k, v in load_preset(name).items() if k in fields}
        preset_args += flatten(preset)
    # A section whose type the command line changes (--pedal.type=keyboard) takes none of the
    # preset's fields for it: they belong to the preset's type.
    retyped = {a.split("=", 1)[0].removesuffix(".type") for a in out if a.split("=", 1)[0].endswith(".type")}
    preset_args = [a for a in preset_args if a.split("=", 1)[0].rsplit(".", 1)[0] not in retyped]
    return preset_args + out
