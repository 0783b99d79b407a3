"""The `remote_policy` bench case runs end to end in its quick mode (figures reported, never judged)."""

from __future__ import annotations

import math

import pytest

from benchmarks.remote import remote_policy


@pytest.mark.slow  # about 100 s on the 2-core machine: servers, namespaces and 8 daemon runs
@pytest.mark.timeout(600)
def test_remote_policy_quick_reports_every_setting(tmp_path):
    figures = remote_policy(tmp_path, quick=True)

    settings = ["inprocess", "loopback"]
    daemons = ["inprocess", "inprocess_rtc", "loopback", "loopback_rtc"]
    if not str(figures["netns"]).startswith("unavailable"):
        settings += ["netns0", "netns20", "netns100"]
        daemons += ["netns20", "netns20_rtc", "netns100", "netns100_rtc"]
        assert figures["netns_delay_mechanism"] in ("netem", "relay")
    for setting in settings:
        for stat in ("p50", "p95", "p99", "max"):
            assert math.isfinite(figures[f"latency_{setting}_{stat}_ms"]), setting
        if setting != "inprocess":
            assert math.isfinite(figures[f"added_p50_ms_{setting}"])
    for daemon in daemons:
        prefix = f"daemon_{daemon}"
        assert figures[f"{prefix}_ticks"] >= 1, prefix
        assert figures[f"{prefix}_chunks"] >= 1 and figures[f"{prefix}_errors"] == 0, prefix
        for stat in ("p50", "p99", "max"):
            assert math.isfinite(figures[f"{prefix}_lateness_{stat}_ms"]), prefix
        if not daemon.startswith("inprocess"):
            assert figures[f"{prefix}_rtt_n"] >= 1, prefix
    assert figures["cpus"] >= 1 and "load_1m_start" in figures
