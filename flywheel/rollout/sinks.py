"""The daemon's sinks besides the recorder and the Rerun view: the episode events on the wire.

Every sink implements `flywheel.contracts.ticks.TickSink`. The daemon calls its sinks in one order,
`[EventSink, RerunLogger (when enabled), Recorder]`: a tick reaches the live view before the recorder,
an episode start is announced on the wire before the view shows it. Episode ends and `close` go in
the reverse order (the recorder first), as they did before the sinks had one interface.

The OBSERVATION message is not a sink's business: the daemon publishes it itself, before it polls the
teleop link, because the teleop process answers that very observation (lockstep).
"""

from __future__ import annotations

from pathlib import Path

from flywheel.contracts.messages import EpisodeSaved, EpisodeStarted, PolicySwapped
from flywheel.contracts.protocol import Publisher
from flywheel.contracts.ticks import EpisodeEnd, Tick
from flywheel.rollout.recorder import SavedEpisode


class EventSink:
    """EPISODE_STARTED and POLICY_SWAPPED from the control thread; EPISODE_SAVED from the recorder's
    thread (`episode_saved`, its `on_saved` callback), once the episode is on disk. The publisher is
    the daemon's (it also carries the observations): the daemon closes it, last."""

    def __init__(self, publisher: Publisher, dataset_root: Path):
        self.publisher = publisher
        self.dataset_root = dataset_root

    def start_episode(self, episode: int, task: str) -> None:
        self.publisher.send(EpisodeStarted(episode, task))

    def tick(self, tick: Tick) -> None:
        pass  # the observation went out before the teleop poll (RolloutDaemon._publish_observation)

    def end_episode(self, end: EpisodeEnd) -> None:
        pass  # announced once saved: episode_saved

    def policy_swapped(self, version: int, frame: int) -> None:
        self.publisher.send(PolicySwapped(version, frame))

    def close(self) -> None:
        pass  # the daemon closes its publisher after everything else

    def episode_saved(self, saved: SavedEpisode) -> None:
        self.publisher.send(
            EpisodeSaved(
                episode_index=int(saved.episode_index),
                length=int(saved.length),
                data_type=str(saved.info.data_type),
                success=saved.info.success,
                root=str(Path(self.dataset_root).resolve()),
            )
        )
