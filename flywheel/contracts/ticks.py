"""What the rollout daemon tells its sinks: one `Tick` per control period, and the episode events.

A sink is anything that takes the daemon's stream as it happens: the recorder (the dataset), the live
Rerun view, the event publisher (EPISODE_STARTED, POLICY_SWAPPED, EPISODE_SAVED on the wire). They
all implement `TickSink`, and the daemon calls its list of sinks in order, on the control thread.

The types live in the contracts, not in `flywheel.rollout`, because a sink may sit below the daemon
in the layers (docs/architecture.md): `flywheel.viz`'s RerunLogger implements the protocol and may
import these, but never `flywheel.rollout`. Nothing here imports anything heavy (EpisodeInfo is an
annotation only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

import numpy as np

if TYPE_CHECKING:
    from flywheel.contracts.dataset import EpisodeInfo

Source = Literal["policy", "operator", "hold"]


@dataclass(frozen=True, slots=True)
class Tick:
    """One control period, as the daemon lived it. `observation` and `action` are shared by
    reference with every sink (and the recorder's thread): nobody mutates them."""

    episode: int  # the daemon's attempt number in this run (not the dataset's episode index)
    frame: int  # the tick's index within the episode
    task: str  # the language instruction
    observation: dict[str, Any]  # what the robot reported this tick
    action: np.ndarray  # float32, what the robot reports it was sent (after the safety layer)
    source: Source  # who gave the action: the policy, the operator, or a hold (stale stream, no action)
    intervention: bool  # the operator's command drove this frame (source == "operator")
    policy_version: int  # the version that produced the action; 0: the operator or a hold
    pedal: bool  # the pedal as the teleop link reported it this tick


@dataclass(frozen=True, slots=True)
class EpisodeEnd:
    """How an episode ended. `data_type` and `info` are None for a discarded attempt (re-record,
    stop, emergency stop, or no frame): the recorder drops it, the view says "discarded"."""

    episode: int
    success: bool
    end_reason: str  # success | operator_success | operator_failure | operator_rerecord | timeout | ...
    data_type: str | None = None  # demo | auto | intervention
    info: EpisodeInfo | None = None  # what the recorder saves with the episode; None: drop it


class TickSink(Protocol):
    """Takes the daemon's stream on the control thread. Every method must return at once (hand the
    work to a thread of its own) and never raise."""

    def start_episode(self, episode: int, task: str) -> None: ...

    def tick(self, tick: Tick) -> None: ...

    def end_episode(self, end: EpisodeEnd) -> None: ...

    def policy_swapped(self, version: int, frame: int) -> None: ...

    def close(self) -> None: ...
