"""When the trainer trains: every K new episodes (continuous, warm start) and nightly at a set
local time (full retrain from the base checkpoint on all data, as the paper does)."""

from __future__ import annotations

import datetime as dt


def parse_clock(value: str, field: str = "schedule") -> dt.time:
    try:
        hours, minutes = (int(x) for x in value.split(":"))
        return dt.time(hours, minutes)
    except ValueError:
        raise ValueError(f"{field}: {value!r} is not a time of day like 02:00") from None


def next_occurrence(clock: dt.time, now: dt.datetime) -> dt.datetime:
    """The first moment at `clock` strictly after `now` (same timezone as `now`)."""
    candidate = now.replace(hour=clock.hour, minute=clock.minute, second=0, microsecond=0)
    return candidate if candidate > now else candidate + dt.timedelta(days=1)
