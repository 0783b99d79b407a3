"""Fixtures of the hardware tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from robots.emulators.base import relaxed_sdk_timeouts


@pytest.fixture(autouse=True)
def emulated_bus_latency() -> Iterator[None]:
    """The emulators answer from another process: on a loaded machine allow them 0.5 s per reply."""
    with relaxed_sdk_timeouts(500.0):
        yield
