"""benchmarks/gpu.py's two comparisons, `served` and `lerobot_pi05`, on the CPU at a small size: the
code a GPU run takes at the pi05 size, checked for figures that exist and are finite (no timings are
asserted: this machine's are not the GPU's)."""

import json
import math
from pathlib import Path

import pytest

import benchmarks.gpu as gpu
from benchmarks.gpu import GpuBenchConfig, LeRobotPi05Bench, main


def _finite(figures: dict, keys: tuple[str, ...]) -> None:
    missing = [key for key in keys if key not in figures]
    assert not missing, f"missing {missing} in {figures}"
    bad = {key: figures[key] for key in keys if not math.isfinite(figures[key])}
    assert not bad, f"not finite: {bad}"


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_served_reports_the_round_trip_beside_the_same_checkpoint_in_process(tmp_path: Path):
    output = tmp_path / "gpu.json"
    cfg = GpuBenchConfig(preset="tiny", device="cpu", calls=3, phases=["served"], output=output)
    data = main(cfg)
    assert json.loads(output.read_text()) == data
    assert "failed" not in data, data["served"].get("error")
    served = data["served"]
    _finite(served, ("inprocess_load_s", "inprocess_p50_ms", "inprocess_p95_ms"))  # in this process
    _finite(served, ("server_start_s", "served_p50_ms", "served_p95_ms", "rtt_p50_ms", "rtt_p95_ms"))
    _finite(served, ("server_inference_p50_ms", "added_p50_ms", "served_over_inprocess_p50"))
    assert served["requests"] == 3 and served["steps"] == 10
    assert data["construct"]["parameters_m"] > 0  # the policy it served was built here


def _available_gib() -> float:
    meminfo = Path("/proc/meminfo").read_text()
    return int(meminfo.split("MemAvailable:")[1].split()[0]) / 2**20


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_lerobot_pi05_reports_chunk_latency_and_parameters_at_its_smallest(tmp_path: Path):
    # LeRobot's pi05 builds in float32 on the CPU whatever its dtype: 4.1B parameters, 17.5 GiB at the
    # peak (2.5 minutes on 2 cores, most of it the random init).
    if _available_gib() < 19:
        pytest.skip(f"LeRobot's pi05 needs about 19 GiB of free memory to build; {_available_gib():.1f} free")
    # Its smallest: pi05_base's towers (gemma_2b is the only VLM it runs), one 14-pixel patch, 2 steps.
    lerobot = LeRobotPi05Bench(image_size=14, dtype="float32", steps=[2], tokenizer_max_length=32)
    cfg = GpuBenchConfig(
        preset="tiny", device="cpu", calls=2, phases=["lerobot_pi05"], lerobot=lerobot,
        output=tmp_path / "gpu.json",
    )  # fmt: skip
    data = main(cfg)
    assert "construct" not in data  # LeRobot's policy only
    assert "failed" not in data, data["lerobot_pi05"].get("error")
    figures = data["lerobot_pi05"]
    _finite(figures, ("construct_s", "parameters_m", "lm_heads_parameters_m"))
    _finite(figures["steps2"], ("median_ms", "p90_ms", "with_processors_median_ms", "with_processors_p90_ms"))
    assert (figures["paligemma_variant"], figures["action_expert_variant"]) == ("gemma_2b", "gemma_300m")
    assert figures["steps2"]["prompt_tokens"] == 32
    assert figures["weights_gib"] is None and figures["steps2"]["peak_gib"] is None  # the CPU has no meter


def test_a_failing_comparison_keeps_its_figures_and_the_next_phases_run(tmp_path: Path, monkeypatch):
    def half_done(cfg: GpuBenchConfig, report: gpu.Report) -> None:
        report.add("lerobot_pi05", {"construct_s": 1.0})
        raise MemoryError("out of memory")

    ran: list[str] = []
    monkeypatch.setattr(gpu, "run_lerobot_pi05", half_done)
    monkeypatch.setattr(gpu, "run_base", lambda cfg, report: ran.append("base"))
    phases = ["lerobot_pi05", "base"]
    data = main(GpuBenchConfig(preset="tiny", device="cpu", phases=phases, output=tmp_path / "gpu.json"))
    assert data["lerobot_pi05"] == {"construct_s": 1.0, "error": "MemoryError: out of memory"}
    assert data["failed"] == ["lerobot_pi05"] and ran == ["base"]


def test_the_comparisons_run_by_default_only_at_the_pi05_size():
    assert GpuBenchConfig(preset="pi05").phases == list(gpu.PHASES)
    tiny = GpuBenchConfig(preset="tiny", device="cpu").phases
    assert "served" not in tiny and "lerobot_pi05" not in tiny and "latency" in tiny
