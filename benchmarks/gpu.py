"""The `pi05` preset on an accelerator: select_action latency (10 and 5 denoising steps, CFG
beta=2), one bf16 training step, and peak memory. Random initialisation (no weights are downloaded;
give --base_model_path to time a local pi05_base). Run through benchmarks/gpu.sh.

On the CPU, `--preset=tiny --device=cpu` runs the same code path as a smoke test.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import draccus
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from flywheel.policies.pi_star_recap import PiStarRECAPConfig, PiStarRECAPPolicy


@dataclass
class GpuBenchConfig:
    preset: str = "pi05"
    device: str = "cuda"
    base_model_path: Path | None = None
    batch_size: int = 8
    calls: int = 20
    output: Path = Path("outputs/bench/gpu.json")


def _policy(cfg: GpuBenchConfig, steps: int, cfg_scale: float) -> PiStarRECAPPolicy:
    config = PiStarRECAPConfig(
        preset=cfg.preset, device=cfg.device, num_inference_steps=steps, cfg_scale=cfg_scale,
        base_model_path=cfg.base_model_path,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (14,)),
            "observation.images.front": PolicyFeature(FeatureType.VISUAL, (3, 224, 224)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (14,))},
    )  # fmt: skip
    return PiStarRECAPPolicy(config).eval()


def _batch(b: int, device: str, chunk: int) -> dict:
    return {
        "observation.state": torch.randn(b, 14, device=device),
        "observation.images.front": torch.rand(b, 3, 224, 224, device=device),
        "action": torch.randn(b, chunk, 14, device=device),
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool, device=device),
        "task": ["fold the towel"] * b,
    }


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_chunk(policy: PiStarRECAPPolicy, device: str, calls: int) -> float:
    batch = {k: v[:1] for k, v in _batch(1, device, policy.config.chunk_size).items()}
    with torch.inference_mode():
        for _ in range(3):
            policy.predict_action_chunk(batch)
        _sync(device)
        start = time.perf_counter()
        for _ in range(calls):
            policy.predict_action_chunk(batch)
        _sync(device)
    return (time.perf_counter() - start) / calls * 1000


def time_train_step(cfg: GpuBenchConfig) -> float:
    policy = _policy(cfg, 10, 1.0).train()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    batch = _batch(cfg.batch_size, cfg.device, policy.config.chunk_size)
    for i in range(4):
        if i == 1:
            _sync(cfg.device)
            start = time.perf_counter()
        with torch.autocast(cfg.device.split(":")[0], dtype=torch.bfloat16, enabled=cfg.device != "cpu"):
            loss, _ = policy(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    _sync(cfg.device)
    return (time.perf_counter() - start) / 3 * 1000


def main(cfg: GpuBenchConfig) -> dict:
    out: dict = {"preset": cfg.preset, "device": cfg.device}
    if cfg.device.startswith("cuda"):
        out["gpu"] = torch.cuda.get_device_name()
        torch.cuda.reset_peak_memory_stats()
    for label, steps, beta in (("steps10", 10, 1.0), ("steps5", 5, 1.0), ("steps10_cfg2", 10, 2.0)):
        policy = _policy(cfg, steps, beta)
        out[f"chunk_ms_{label}"] = time_chunk(policy, cfg.device, cfg.calls)
        del policy
    out["cfg2_over_unguided"] = out["chunk_ms_steps10_cfg2"] / out["chunk_ms_steps10"]
    out[f"train_step_ms_batch{cfg.batch_size}"] = time_train_step(cfg)
    if cfg.device.startswith("cuda"):
        out["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    cfg.output.parent.mkdir(parents=True, exist_ok=True)
    cfg.output.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main(draccus.parse(GpuBenchConfig))
