"""Entity paths and colours shared by the live logger, the replay and the blueprint."""

from __future__ import annotations

FRAME = "frame"  # timeline: global tick counter (live) or the dataset's `index` (replay)
WALL_TIME = "wall_time"  # timeline: wall-clock time of the tick (live only)
DATASET_INDEX = "dataset_index"  # timeline of episodes the trainer logs into a live recording

STATE = "observation/state"
CAMERA = "camera"  # camera/<name>
ACTION = "action"  # action/<source>/<name>, source: policy | operator | hold
SOURCES = ("policy", "operator", "hold")
CONTROL = "control"
INTERVENTION = "control/intervention"
PEDAL = "control/pedal"
POLICY_VERSION = "control/policy_version"
EPISODE = "control/episode"
EVENTS = "events"
VALUE = "value"
VALUE_INTERVENTION = "value/intervention"  # markers on the value curve where the operator acted
ADVANTAGE = "advantage"
THRESHOLD = "advantage/threshold"
POSITIVE = "advantage/positive"
NEGATIVE = "advantage/negative"
LABELS = "labels"  # the trainer's relabeled episodes: labels/value, labels/advantage, ...

COLORS: dict[str, tuple[int, int, int]] = {
    "policy": (31, 119, 180),
    "operator": (255, 127, 14),
    "hold": (150, 150, 150),
    "value": (44, 160, 44),
    "advantage": (148, 103, 189),
    "threshold": (127, 127, 127),
    "positive": (44, 160, 44),
    "negative": (214, 39, 40),
    "pedal": (188, 189, 34),
    "version": (23, 190, 207),
}
