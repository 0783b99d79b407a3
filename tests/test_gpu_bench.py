"""benchmarks/gpu.py's phases on the CPU at the tiny preset (the same code the pi05 run takes on a GPU)."""

import json
from pathlib import Path

import pytest

from benchmarks.gpu import GpuBenchConfig, main


def test_every_phase_reports_and_checks_what_it_loads(tmp_path: Path):
    output = tmp_path / "gpu.json"
    cfg = GpuBenchConfig(preset="tiny", device="cpu", calls=3, batch_sizes=[2], output=output)
    data = main(cfg)
    assert json.loads(output.read_text()) == data
    assert data["construct"]["parameters_m"] > 0
    latency = data["latency"]
    assert latency["steps5"]["median_ms"] < latency["steps10"]["median_ms"]
    assert latency["cfg2_over_unguided"] > 0
    assert data["train"]["batch2"]["step_ms"] > 0
    # The reloaded checkpoint acts exactly like the policy that was saved.
    assert data["checkpoint"]["reloaded_max_abs_action_diff"] == 0.0
    # pi05_base has no continuous state token (the tiny preset's only extra module); all else loads.
    base = data["base"]
    assert base["unexpected_keys"] == 0
    assert base["missing_keys"] == 4 and all("state_token_proj" in k for k in base["missing_sample"])


def test_unknown_phase_is_named():
    with pytest.raises(ValueError, match="phases: unknown \\['speed'\\]"):
        GpuBenchConfig(phases=["latency", "speed"])
