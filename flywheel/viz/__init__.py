"""Rerun views of the flywheel: the rollout live, datasets replayed, relabeled episodes (docs/rerun.md)."""

from flywheel.viz.blueprint import make_blueprint
from flywheel.viz.config import RerunConfig, ViewConfig, ViewDatasetConfig
from flywheel.viz.logger import RerunLogger
from flywheel.viz.replay import log_labeled_episode, replay_dataset
from flywheel.viz.sinks import Recording, open_recording
from flywheel.viz.value_monitor import ValueFn, ValueMonitor, load_value_fn
from flywheel.viz.view import view_main

__all__ = [
    "Recording",
    "RerunConfig",
    "RerunLogger",
    "ValueFn",
    "ValueMonitor",
    "ViewConfig",
    "ViewDatasetConfig",
    "load_value_fn",
    "log_labeled_episode",
    "make_blueprint",
    "open_recording",
    "replay_dataset",
    "view_main",
]
