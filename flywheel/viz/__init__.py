"""Rerun views of the flywheel: the rollout live, datasets replayed, relabeled episodes (docs/rerun.md).

Names are imported lazily: the rollout config imports `flywheel.viz.config` for every command, and
that must not pull in rerun (and its ~0.3 s import) unless a recording is asked for.
"""

from __future__ import annotations

import importlib
from typing import Any

_WHERE = {
    "make_blueprint": "blueprint",
    "RerunConfig": "config",
    "ViewConfig": "config",
    "ViewDatasetConfig": "config",
    "RerunLogger": "logger",
    "log_labeled_episode": "replay",
    "replay_dataset": "replay",
    "Recording": "sinks",
    "open_recording": "sinks",
    "ValueFn": "value_monitor",
    "ValueMonitor": "value_monitor",
    "load_value_fn": "value_monitor",
    "view_main": "view",
}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'flywheel.viz' has no attribute {name!r}")
    return getattr(importlib.import_module(f"flywheel.viz.{_WHERE[name]}"), name)
