"""The `pi05` preset on an accelerator, in phases that each write their figures as soon as they end:

- construct: random init of the full-size network (what a fresh `lerobot-train` pays before step 1;
  runs whenever one of the next three phases does);
- latency: predict_action_chunk (what select_action runs when its queue is empty) for one observation
  at 10 and 5 denoising steps and with CFG beta=2, median and p90 of `calls` timed calls, with the
  sampling as a CUDA graph (the default) and eager;
- train: one full fine-tuning step in bf16 (the policy's own AdamW parameter groups, gradient
  checkpointing as the preset sets it) per batch size, with the peak memory of each;
- checkpoint: save_pretrained and from_pretrained of the fine-tuned policy (what a hot-swap reads),
  with the reloaded policy's actions compared to the original's for the same noise;
- base: a full-size state dict in LeRobot's pi05_base key layout, made here from transformers' own
  SigLIP and Gemma modules (nothing is downloaded), saved and loaded through `base_model_path`, with
  the missing and unexpected key counts. `--base_model_path=DIR` times a real local pi05_base instead.

Run through benchmarks/gpu.sh; writes outputs/bench/gpu.json. On the CPU, `--preset=tiny --device=cpu`
runs the same phases as a smoke test (tests/test_gpu_bench.py).
"""

from __future__ import annotations

import json
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from safetensors.torch import save_file

from benchmarks.fixtures import pi05_base_state_dict
from flywheel.contracts.files import unused_path
from flywheel.policies.pi_star_recap import PiStarRECAPConfig, PiStarRECAPPolicy
from flywheel.policies.pi_star_recap.presets import PRESETS

STATE_DIM = ACTION_DIM = 14  # a bimanual arm, as in pi05's ALOHA tasks
PHASES = ("construct", "latency", "train", "checkpoint", "base")


@dataclass
class GpuBenchConfig:
    preset: str = "pi05"
    device: str = "cuda"
    base_model_path: Path | None = None  # a local pi05_base to time; None -> one made here
    batch_sizes: list[int] = field(default_factory=lambda: [8, 32])
    calls: int = 20
    phases: list[str] = field(default_factory=lambda: list(PHASES))
    output: Path = Path("outputs/bench/gpu.json")

    def __post_init__(self) -> None:
        unknown = sorted(set(self.phases) - set(PHASES))
        if unknown:
            raise ValueError(f"phases: unknown {unknown}; choose from {list(PHASES)}")


def _config(cfg: GpuBenchConfig, **overrides) -> PiStarRECAPConfig:
    size = PRESETS[cfg.preset]["image_size"]
    return PiStarRECAPConfig(
        preset=cfg.preset,
        device=cfg.device,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
            "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, size, size)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        **overrides,
    )


def _batch(b: int, cfg: GpuBenchConfig, chunk: int) -> dict:
    size = PRESETS[cfg.preset]["image_size"]
    return {
        "observation.state": torch.randn(b, STATE_DIM, device=cfg.device),
        "observation.images.front": torch.rand(b, 3, size, size, device=cfg.device),
        "action": torch.randn(b, chunk, ACTION_DIM, device=cfg.device),
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool, device=cfg.device),
        "task": ["fold the towel"] * b,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _timed(device: str, fn: Callable[[], object]) -> float:
    """Seconds `fn` takes, the accelerator's queue drained before and after."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_chunks(
    policy: PiStarRECAPPolicy, cfg: GpuBenchConfig, steps: int, beta: float, graphs: bool
) -> dict:
    policy.config.num_inference_steps, policy.config.cfg_scale = steps, beta
    policy.config.cuda_graphs = graphs
    obs = {k: v for k, v in _batch(1, cfg, policy.config.chunk_size).items() if k != "action"}
    with torch.inference_mode():
        for _ in range(3):
            policy.predict_action_chunk(obs)
        ms = [_timed(cfg.device, lambda: policy.predict_action_chunk(obs)) * 1000 for _ in range(cfg.calls)]
    return {"median_ms": statistics.median(ms), "p90_ms": statistics.quantiles(ms, n=10)[-1]}


def time_train_steps(policy: PiStarRECAPPolicy, cfg: GpuBenchConfig, batch_size: int) -> dict:
    """Three timed steps after a warm-up, with the optimizer lerobot-train would build."""
    policy.train()
    optimizer = policy.config.get_optimizer_preset().build(policy.get_optim_params())
    batch = _batch(batch_size, cfg, policy.config.chunk_size)
    autocast = torch.autocast(cfg.device.split(":")[0], torch.bfloat16, enabled=cfg.device != "cpu")

    def step() -> None:
        with autocast:
            loss, _ = policy(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    _reset_peak(cfg.device)
    step()
    seconds = [_timed(cfg.device, step) for _ in range(3)]
    policy.eval()
    return {"step_ms": statistics.median(seconds) * 1000, "peak_gib": _peak_gib(cfg.device)}


def compare_actions(a: PiStarRECAPPolicy, b: PiStarRECAPPolicy, cfg: GpuBenchConfig) -> float:
    """Largest absolute difference of the two policies' chunks for one observation and noise."""
    a.config.cfg_scale = b.config.cfg_scale = 1.0
    obs = {k: v for k, v in _batch(1, cfg, a.config.chunk_size).items() if k != "action"}
    noise = torch.randn(1, a.config.chunk_size, a.config.max_action_dim, device=cfg.device)
    with torch.inference_mode():
        diff = a.predict_action_chunk(obs, noise=noise) - b.predict_action_chunk(obs, noise=noise)
    return diff.abs().max().item()


class Report:
    """The figures so far, rewritten to disk after every phase (a phase that fails keeps the rest)."""

    def __init__(self, cfg: GpuBenchConfig) -> None:
        # An earlier run's figures are kept: a new run writes beside them.
        self.path, self.data = unused_path(cfg.output), {"preset": cfg.preset, "device": cfg.device}
        self.data["torch"] = torch.__version__
        self.data["python"] = platform.python_version()
        if cfg.device.startswith("cuda"):
            self.data["gpu"] = torch.cuda.get_device_name()

    def add(self, phase: str, figures: dict) -> None:
        self.data[phase] = figures
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"{phase}: {json.dumps(figures)}", flush=True)


def run_construct(cfg: GpuBenchConfig, report: Report) -> PiStarRECAPPolicy:
    holder: list[PiStarRECAPPolicy] = []
    seconds = _timed(cfg.device, lambda: holder.append(PiStarRECAPPolicy(_config(cfg)).eval()))
    policy = holder[0]
    params = sum(p.numel() for p in policy.parameters())
    report.add("construct", {"seconds": seconds, "parameters_m": params / 1e6})
    return policy


def run_latency(policy: PiStarRECAPPolicy, cfg: GpuBenchConfig, report: Report) -> None:
    runs = (("steps10", 10, 1.0), ("steps5", 5, 1.0), ("steps10_cfg2", 10, 2.0))
    figures = {label: time_chunks(policy, cfg, steps, beta, True) for label, steps, beta in runs}
    figures["cfg2_over_unguided"] = figures["steps10_cfg2"]["median_ms"] / figures["steps10"]["median_ms"]
    if cfg.device.startswith("cuda"):  # the same without CUDA graphs (the CPU has none: no difference)
        eager = {f"{label}_eager": time_chunks(policy, cfg, s, b, False) for label, s, b in runs}
        figures |= eager | {"graph_captures": policy.model.sample_graphs.captures}
    policy.config.cuda_graphs = True
    report.add("latency", figures)


def run_checkpoint(policy: PiStarRECAPPolicy, cfg: GpuBenchConfig, report: Report) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        save_s = _timed(cfg.device, lambda: policy.save_pretrained(tmp))
        holder: list[PiStarRECAPPolicy] = []
        load_s = _timed(cfg.device, lambda: holder.append(PiStarRECAPPolicy.from_pretrained(tmp).eval()))
        size_gb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e9
    report.add(
        "checkpoint",
        {
            "save_s": save_s,
            "load_s": load_s,
            "size_gb": size_gb,
            "reloaded_max_abs_action_diff": compare_actions(policy, holder[0], cfg),
        },
    )


def run_base(cfg: GpuBenchConfig, report: Report) -> None:
    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = cfg.base_model_path
        if path is None:
            sizes = PRESETS[cfg.preset]
            dtype = torch.bfloat16 if sizes["dtype"] == "bfloat16" else torch.float32
            holder: list[dict] = []
            figures["make_s"] = _timed(
                cfg.device, lambda: holder.append(pi05_base_state_dict(sizes, device=cfg.device, dtype=dtype))
            )
            path = Path(tmp) / "model.safetensors"
            figures["save_s"] = _timed(cfg.device, lambda: save_file(holder.pop(), str(path)))
            figures["size_gb"] = path.stat().st_size / 1e9
            _reset_peak(cfg.device)
        loaded: list[PiStarRECAPPolicy] = []
        config = _config(cfg, base_model_path=str(path))
        figures["load_s"] = _timed(cfg.device, lambda: loaded.append(PiStarRECAPPolicy(config)))
    missing, unexpected = loaded[0].base_load_report
    figures |= {"missing_keys": len(missing), "unexpected_keys": len(unexpected)}
    figures["missing_sample"], figures["unexpected_sample"] = missing[:5], unexpected[:5]
    report.add("base", figures)


def main(cfg: GpuBenchConfig) -> dict:
    report = Report(cfg)
    if {"construct", "latency", "train", "checkpoint"} & set(cfg.phases):  # all need a policy
        policy = run_construct(cfg, report)
        if "latency" in cfg.phases:
            run_latency(policy, cfg, report)
        if "train" in cfg.phases:
            report.add("train", {f"batch{b}": time_train_steps(policy, cfg, b) for b in cfg.batch_sizes})
        if "checkpoint" in cfg.phases:
            run_checkpoint(policy, cfg, report)
        del policy
        _reset_peak(cfg.device)
    if "base" in cfg.phases:
        run_base(cfg, report)
    return report.data


if __name__ == "__main__":
    main(draccus.parse(GpuBenchConfig))
