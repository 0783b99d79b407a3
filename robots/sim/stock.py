"""How the sim learns where stock LeRobot's episodes begin (lerobot-record, lerobot-replay).

The stock loops call nothing on a robot between episodes: lerobot-record runs an episode, then a
"reset" phase in which the operator keeps driving unrecorded (a person puts a real scene back
meanwhile; only a robot named unitree_g1 gets a `reset()` call), then saves; lerobot-replay sends
one episode's actions. What both tell at each boundary is the announcement to that person, through
`lerobot.utils.utils.log_say`, which logs it on the root logger at INFO (and speaks it with
--play_sounds): "Recording episode N" before each recorded episode, N being the dataset's index of
the episode about to be recorded (a re-recorded episode is announced with the same N), and
"Replaying episode" before a replay. The sim acts on the same cue a person would: a handler on the
root logger hears these and tells every connected sim of the process. Stock tools configure
logging (`init_logging`) before they connect the robot, which is when the handler goes in.

Why not the alternatives: a time gap before an episode (the dataset being saved) is not a reliable
signal, and resetting on MetaWorld's 500-step budget alone cuts recorded episodes longer than that
into several scenes while leaving shorter ones to continue the previous episode's scene.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterable
from typing import Protocol

ANNOUNCER = "log_say"
RECORDING = re.compile(r"Recording episode (\d+)")
REPLAYING = "Replaying episode"


class FollowsStockEpisodes(Protocol):
    def follow_stock_episode(self, index: int | None) -> None: ...


class StockEpisodeListener(logging.Handler):
    """Hears the stock tools' episode announcements; passes each to the sims `sims()` returns."""

    def __init__(self, sims: Callable[[], Iterable[FollowsStockEpisodes]]):
        super().__init__(level=logging.INFO)
        self._sims = sims

    def emit(self, record: logging.LogRecord) -> None:
        # Only log_say's records: nothing else that happens to log similar words moves the scene.
        if record.funcName != ANNOUNCER:
            return
        message = record.getMessage()
        if match := RECORDING.fullmatch(message):
            index: int | None = int(match.group(1))
        elif message == REPLAYING:
            index = None
        else:
            return
        # A failure here propagates into the stock tool's loop and stops it, as it should: recording on
        # in a scene that failed to reset would record wrong data.
        for sim in list(self._sims()):
            sim.follow_stock_episode(index)


def listen(listener: StockEpisodeListener) -> None:
    """Put the listener on the root logger (again: a stock tool's init_logging clears its handlers)."""
    root = logging.getLogger()
    if listener not in root.handlers:
        root.addHandler(listener)
