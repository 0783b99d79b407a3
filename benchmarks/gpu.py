"""The `pi05` preset on an accelerator, in phases that each write their figures as soon as they end:

- construct: random init of the full-size network (what a fresh `lerobot-train` pays before step 1;
  runs whenever one of the next four phases does), its parameters and (on a GPU) weights' memory;
- latency: predict_action_chunk (what select_action runs when its queue is empty) for one observation
  at 10 and 5 denoising steps and with CFG beta=2, median and p90 of `calls` timed calls and the peak
  memory, with the sampling as a CUDA graph (the default) and eager;
- train: one full fine-tuning step in bf16 (the policy's own AdamW parameter groups, gradient
  checkpointing as the preset sets it) per batch size, with the peak memory of each;
- checkpoint: save_pretrained and from_pretrained of the fine-tuned policy (what a hot-swap reads),
  with the reloaded policy's actions compared to the original's for the same noise;
- served: the same policy saved with its processors (10 denoising steps, no CFG) and served by
  `flywheel serve` in a process of its own on this machine (`--policy.device` as `--device`): the
  round trip of `calls` requests of one observation (state and one camera frame, over loopback) from
  a RemoteChunkPolicy, against the same checkpoint loaded in this process (LeRobotChunkPolicy, the
  server's own inference path: processors, batch of 1, numpy out); p50/p95 of each, the server's own
  inference time, and (nvidia-smi, when it shows them) the server process's GPU memory;
- lerobot_pi05: LeRobot 0.6's own PI05Policy (lerobot/policies/pi05), random weights (nothing
  downloaded), at the preset's device, dtype, chunk (50), image size, one camera, state and action
  dims: its predict_action_chunk on a batch of 1 made by LeRobot's own pi05 preprocessor (dataset
  stats made here; a byte-level stand-in for PaliGemma's tokenizer unless --lerobot.tokenizer_path,
  prompts padded to 200 tokens either way), timed as `latency` times the preset (also with the
  processors around it), peak memory and parameters; with --lerobot.compile=true also LeRobot's
  compile_model (torch.compile of sample_actions) as a separate figure `compiled`;
- base: a full-size state dict in LeRobot's pi05_base key layout, made here from transformers' own
  SigLIP and Gemma modules (nothing is downloaded), saved and loaded through `base_model_path`, with
  the missing and unexpected key counts. `--base_model_path=DIR` times a real local pi05_base instead.

All phases run by default at the pi05 preset; `--phases=[served,lerobot_pi05]` runs only those
(construct is implied). A failing `served` or `lerobot_pi05` records its error beside the figures it had
and lets the other phases run; the command then exits 1.

Run through benchmarks/gpu.sh (its header has the command for a GPU); writes outputs/bench/gpu.json
(beside an earlier one, never over it). On the CPU, `--preset=tiny --device=cpu` runs the other phases
as a smoke test (tests/test_gpu_bench.py); tests/test_gpu_bench_phases.py runs `served` and
`lerobot_pi05` at a small size (LeRobot's pi05 is 4.1B parameters whatever the `--lerobot.*` fields:
only its image size, prompt length, dtype and step counts shrink).
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from unittest import mock

import draccus
import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from safetensors.torch import save_file

from benchmarks.fixtures import pi05_base_state_dict
from flywheel.contracts.files import unused_path
from flywheel.policies.pi_star_recap import (
    PiStarRECAPConfig,
    PiStarRECAPPolicy,
    make_pi_star_recap_pre_post_processors,
)
from flywheel.policies.pi_star_recap.presets import PRESETS

STATE_DIM = ACTION_DIM = 14  # a bimanual arm, as in pi05's ALOHA tasks
CHUNK = 50  # actions per chunk, the preset's and LeRobot pi05's default
PHASES = ("construct", "latency", "train", "checkpoint", "served", "lerobot_pi05", "base")
POLICY_PHASES = ("construct", "latency", "train", "checkpoint", "served")  # those need the preset built
# The two comparisons (another process, another implementation): they mean something at the pi05 size,
# so another preset runs them only when --phases names them (tests/test_gpu_bench_phases.py does).
COMPARISONS = ("served", "lerobot_pi05")
TASK = "fold the towel"
WARMUP = 3  # untimed calls before the timed ones (CUDA graph capture, allocator, caches)
CAMERA = "front"
STATE_NAMES = tuple(f"joint_{i}" for i in range(STATE_DIM))
ACTION_NAMES = tuple(f"joint_{i}.target" for i in range(ACTION_DIM))
LEROBOT_VLM = "gemma_2b"  # LeRobot pi05's only working paligemma_variant (LeRobotPi05Bench)


@dataclass
class LeRobotPi05Bench:
    """LeRobot's own PI05Policy (phase lerobot_pi05): what to build, and how to time it."""

    # (No paligemma_variant: LeRobot 0.6 projects SigLIP's features to 2048, gemma_2b's width, whatever
    # the variant, so a gemma_300m VLM fails in embed_prefix. gemma_2b is pi05_base's, and the smallest.)
    # PI05Config.action_expert_variant: gemma_300m is pi05_base's action expert (and the smallest).
    action_expert_variant: str = "gemma_300m"
    # Square image side (PI05Config.image_resolution; SigLIP's 14-pixel patches, 224: 256 image tokens);
    # the camera frames are made at this size (no resize). None: the preset's image_size (pi05: 224).
    image_size: int | None = None
    # PI05Config.dtype, bfloat16 or float32. None: the preset's (pi05: bfloat16, as the pi05 phases run;
    # PI05Config's own default is float32).
    dtype: str | None = None
    # Denoising step counts timed (PI05Config.num_inference_steps), each its figure `steps<N>`.
    steps: list[int] = field(default_factory=lambda: [10, 5])
    # PI05Config.tokenizer_max_length: LeRobot's preprocessor pads every prompt to this many tokens
    # (200), so the prefix costs the same whatever the tokenizer or the words.
    tokenizer_max_length: int = 200
    # A local PaliGemma tokenizer folder (transformers' AutoTokenizer, no download). None: a byte-level
    # stand-in, the same padded length (pi05's prompt with 14 state values fits 200 tokens either way).
    tokenizer_path: Path | None = None
    # Also build it with PI05Config.compile_model=True (torch.compile of sample_actions) and time that,
    # as the separate figure `compiled` (first call = compile time; max-autotune takes many minutes).
    compile: bool = False
    # PI05Config.compile_mode (LeRobot's default).
    compile_mode: str = "max-autotune"

    def __post_init__(self) -> None:
        if not self.steps or min(self.steps) < 1:
            raise ValueError(f"lerobot.steps: {self.steps} must be denoising step counts >= 1")


@dataclass
class GpuBenchConfig:
    preset: str = "pi05"
    device: str = "cuda"
    base_model_path: Path | None = None  # a local pi05_base to time; None -> one made here
    batch_sizes: list[int] = field(default_factory=lambda: [8, 32])
    # Timed calls (or requests) per figure, after 3 untimed ones.
    calls: int = 20
    # Which of construct, latency, train, checkpoint, served, lerobot_pi05, base to run (module doc).
    # None: all of them at the pi05 preset; at another (a CPU smoke test) all but served and lerobot_pi05.
    phases: list[str] | None = None
    # served: how long one request is waited for (the server's first inference captures CUDA graphs).
    served_timeout_s: float = 300.0
    # served: how long `flywheel serve` may take to load the checkpoint and bind.
    served_start_timeout_s: float = 900.0
    lerobot: LeRobotPi05Bench = field(default_factory=LeRobotPi05Bench)
    output: Path = Path("outputs/bench/gpu.json")

    def __post_init__(self) -> None:
        if self.phases is None:
            self.phases = [p for p in PHASES if self.preset == "pi05" or p not in COMPARISONS]
        unknown = sorted(set(self.phases) - set(PHASES))
        if unknown:
            raise ValueError(f"phases: unknown {unknown}; choose from {list(PHASES)}")
        if self.calls < 2:
            raise ValueError(f"calls: {self.calls} must be >= 2 (a p90 needs two)")


def _config(cfg: GpuBenchConfig, **overrides) -> PiStarRECAPConfig:
    size = PRESETS[cfg.preset]["image_size"]
    return PiStarRECAPConfig(
        preset=cfg.preset,
        device=cfg.device,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
            f"observation.images.{CAMERA}": PolicyFeature(FeatureType.VISUAL, (3, size, size)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
        **overrides,
    )


def _batch(b: int, cfg: GpuBenchConfig, chunk: int, size: int | None = None) -> dict:
    size = size or PRESETS[cfg.preset]["image_size"]
    return {
        "observation.state": torch.randn(b, STATE_DIM, device=cfg.device),
        f"observation.images.{CAMERA}": torch.rand(b, 3, size, size, device=cfg.device),
        "action": torch.randn(b, chunk, ACTION_DIM, device=cfg.device),
        "action_is_pad": torch.zeros(b, chunk, dtype=torch.bool, device=cfg.device),
        "task": [TASK] * b,
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


def _allocated_gib(device: str) -> float | None:
    return torch.cuda.memory_allocated() / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    """Free what the last phase left (cycles too: a policy's CUDA graphs refer back to it) and start
    the next peak from here."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def time_calls(device: str, calls: int, fn: Callable[[], object], warmup: int = WARMUP) -> dict:
    """`warmup` untimed calls, then `calls` timed ones (synchronized): median and p90 in ms, and the
    peak memory over all of them (what is held before, the weights, included)."""
    _reset_peak(device)
    for _ in range(warmup):
        fn()
    ms = [_timed(device, fn) * 1000 for _ in range(calls)]
    return {
        "median_ms": statistics.median(ms),
        "p90_ms": statistics.quantiles(ms, n=10)[-1],
        "peak_gib": _peak_gib(device),
    }


def time_chunks(
    policy: PiStarRECAPPolicy, cfg: GpuBenchConfig, steps: int, beta: float, graphs: bool
) -> dict:
    policy.config.num_inference_steps, policy.config.cfg_scale = steps, beta
    policy.config.cuda_graphs = graphs
    obs = {k: v for k, v in _batch(1, cfg, policy.config.chunk_size).items() if k != "action"}
    with torch.inference_mode():
        return time_calls(cfg.device, cfg.calls, lambda: policy.predict_action_chunk(obs))


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
        self.data["phases"] = list(cfg.phases)
        with contextlib.suppress(Exception):
            import lerobot

            self.data["lerobot"] = lerobot.__version__
        # The machine, for docs/benchmarks.md.
        self.data["platform"], self.data["cpus"] = platform.platform(), os.cpu_count()
        if cfg.device.startswith("cuda"):
            self.data["gpu"] = torch.cuda.get_device_name(cfg.device)
            self.data["gpu_memory_gib"] = torch.cuda.get_device_properties(cfg.device).total_memory / 2**30
            self.data["gpu_driver"] = next(iter(_nvidia_smi("--query-gpu=driver_version")), [None])[0]
        self.failed: list[str] = []

    def add(self, phase: str, figures: dict) -> None:
        self.data[phase] = figures
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(json.dumps(self.data, indent=1))
        print(f"{phase}: {json.dumps(figures)}", flush=True)

    def guarded(self, phase: str, device: str, run: Callable[[], None]) -> None:
        """Run a phase; if it fails, its error joins the figures it had reported (the traceback goes to
        stderr) and what it held is freed for the next phase."""
        try:
            run()
            return
        except Exception as e:
            traceback.print_exc()
            self.failed.append(phase)
            self.add(phase, self.data.get(phase, {}) | {"error": f"{type(e).__name__}: {e}"[-2000:]})
        _reset_peak(device)  # out of the except block: the traceback no longer holds the phase's frames


def run_construct(cfg: GpuBenchConfig, report: Report) -> PiStarRECAPPolicy:
    _reset_peak(cfg.device)
    holder: list[PiStarRECAPPolicy] = []
    seconds = _timed(cfg.device, lambda: holder.append(PiStarRECAPPolicy(_config(cfg)).eval()))
    policy = holder[0]
    params = sum(p.numel() for p in policy.parameters())
    figures = {"seconds": seconds, "parameters_m": params / 1e6, "weights_gib": _allocated_gib(cfg.device)}
    report.add("construct", figures)
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


# --- served: the preset through `flywheel serve` ---------------------------------------------------------


def _unit_stats(n: int) -> dict[str, torch.Tensor]:
    """Stats that make every normalization (mean/std, min/max, quantiles) close to the identity."""
    ones = torch.ones(n)
    return {"mean": 0 * ones, "std": ones, "min": -ones, "max": ones, "q01": -ones, "q99": ones}


def _dataset_stats() -> dict[str, dict[str, torch.Tensor]]:
    return {"observation.state": _unit_stats(STATE_DIM), "action": _unit_stats(ACTION_DIM)}


def save_served_checkpoint(policy: PiStarRECAPPolicy, path: Path) -> None:
    """The policy as a LeRobot pretrained folder with its processors (what `flywheel serve` loads), at
    the serving defaults: 10 denoising steps, no CFG, CUDA graphs (the latency phase changes them)."""
    policy.config.num_inference_steps, policy.config.cfg_scale, policy.config.cuda_graphs = 10, 1.0, True
    pre, post = make_pi_star_recap_pre_post_processors(policy.config, dataset_stats=_dataset_stats())
    for part in (policy, pre, post):
        part.save_pretrained(path)


def served_observation(size: int) -> dict[str, Any]:
    """One robot observation as a daemon sends it: joint positions by name, the camera's HxWx3 frame."""
    rng = np.random.default_rng(0)
    observation: dict[str, Any] = dict(zip(STATE_NAMES, rng.uniform(-1, 1, STATE_DIM).tolist(), strict=True))
    observation[CAMERA] = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    return observation


def _time_requests(
    predict: Callable[[dict, str], np.ndarray], observation: dict, calls: int, warmup: int = WARMUP
) -> list[float]:
    """Wall ms of `calls` predict(observation, task) after `warmup` untimed ones (each returns numpy on
    the CPU: the device's work is done)."""
    times = []
    for i in range(warmup + calls):
        start = time.perf_counter()
        chunk = predict(observation, TASK)
        elapsed = (time.perf_counter() - start) * 1000
        if chunk.shape != (CHUNK, ACTION_DIM) or not np.isfinite(chunk).all():
            raise RuntimeError(f"served: a chunk of shape {chunk.shape}, finite={np.isfinite(chunk).all()}")
        if i >= warmup:
            times.append(elapsed)
    return times


def _percentiles(values_ms: list[float], prefix: str) -> dict[str, float]:
    v = np.asarray(values_ms, dtype=float)
    return {f"{prefix}_p50_ms": float(np.percentile(v, 50)), f"{prefix}_p95_ms": float(np.percentile(v, 95))}


def _nvidia_smi(*query: str) -> list[list[str]]:
    """nvidia-smi's CSV rows for a query (empty when it is absent or fails)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", *query, "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=20,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [[cell.strip() for cell in line.split(",")] for line in out.splitlines() if line.strip()]


def _gpu_used_mib() -> float | None:
    rows = _nvidia_smi("--query-gpu=memory.used")
    return sum(float(row[0]) for row in rows) if rows else None


def _process_gpu_mib(pid: int) -> float | None:
    """The process's GPU memory as nvidia-smi lists it (None when it does not: another PID namespace)."""
    for row in _nvidia_smi("--query-compute-apps=pid,used_memory"):
        if len(row) == 2 and row[0] == str(pid):
            return float(row[1])
    return None


def run_served(checkpoint: Path, cfg: GpuBenchConfig, report: Report) -> None:
    """The checkpoint in this process (the server's inference path), then through `flywheel serve`."""
    from flywheel.contracts.dataset import dataset_features
    from flywheel.rollout.policy_source import LeRobotChunkPolicy

    size = PRESETS[cfg.preset]["image_size"]
    observation = served_observation(size)
    observed: dict[str, Any] = {name: float for name in STATE_NAMES} | {CAMERA: (size, size, 3)}
    features = dataset_features(observed, {name: float for name in ACTION_NAMES}, use_videos=False)
    figures: dict[str, Any] = {"requests": cfg.calls, "steps": 10, "image_size": size}

    _reset_peak(cfg.device)
    start = time.perf_counter()
    local = LeRobotChunkPolicy(checkpoint, features, list(ACTION_NAMES), version=1, device=cfg.device)
    figures["inprocess_load_s"] = time.perf_counter() - start
    figures |= _percentiles(_time_requests(local.predict_chunk, observation, cfg.calls), "inprocess")
    figures["inprocess_peak_gib"] = _peak_gib(cfg.device)
    report.add("served", figures)  # kept if the server then fails
    del local
    _reset_peak(cfg.device)  # the server gets the device as the in-process policy had it

    figures |= _through_server(checkpoint, observation, cfg)
    figures["added_p50_ms"] = figures["served_p50_ms"] - figures["inprocess_p50_ms"]
    figures["served_over_inprocess_p50"] = figures["served_p50_ms"] / figures["inprocess_p50_ms"]
    report.add("served", figures)


def _through_server(checkpoint: Path, observation: dict, cfg: GpuBenchConfig) -> dict[str, Any]:
    """`flywheel serve` in a process of its own on two free loopback ports, stopped however this ends."""
    from benchmarks.remote import ServeProcess, free_loopback, serve_argv

    figures: dict[str, Any] = {}
    gpu = cfg.device.startswith("cuda")
    used_before = _gpu_used_mib() if gpu else None
    address, deploy = free_loopback(), free_loopback()
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "serve.log"
        start = time.perf_counter()
        server = ServeProcess(serve_argv(checkpoint, address, deploy, cfg.device, torch_threads=0), log)
        try:
            server.wait_ready(cfg.served_start_timeout_s)  # on failure it stops it, the log's tail raised
            figures["server_start_s"] = time.perf_counter() - start
            try:
                figures |= _served_requests(address, observation, cfg)
            except Exception as e:
                server.stop()  # its log is complete once it has exited
                raise RuntimeError(f"{type(e).__name__}: {e}; server log:\n{log.read_text()[-1500:]}") from e
            if gpu:  # while it still holds its weights and graphs
                figures["server_process_gpu_mib"] = _process_gpu_mib(server.proc.pid)
                used = _gpu_used_mib()
                if used is not None and used_before is not None:
                    figures["gpu_used_mib_serving_minus_before"] = used - used_before
        finally:
            server.stop()
    return figures


def _served_requests(address: str, observation: dict, cfg: GpuBenchConfig) -> dict[str, Any]:
    """WARMUP requests from one client (the server's first inference captures its CUDA graphs), then
    `calls` timed ones from a second: its round-trip and server-time statistics are the timed ones."""
    from flywheel.rollout.remote_policy import RemoteChunkPolicy

    for label, calls, warmup in (("warmup", 0, WARMUP), ("timed", cfg.calls, 0)):
        arm, timeout_s = f"bench-gpu-{label}", cfg.served_timeout_s
        remote = RemoteChunkPolicy(address, list(ACTION_NAMES), fps=0, arm=arm, lockstep_timeout_s=timeout_s)
        try:
            remote.connect(wait_s=10.0)  # the handshakes done before the first request is timed
            times = _time_requests(remote.predict_chunk, observation, calls, warmup)
            stats = remote.rtt_stats()
        finally:
            remote.close()
    return _percentiles(times, "served") | {
        "rtt_p50_ms": stats["p50_ms"],  # the client's own: from sent to decoded (its encoding excluded)
        "rtt_p95_ms": stats["p95_ms"],
        "server_inference_p50_ms": stats["server_p50_ms"],  # the server's own share of the trip
    }


# --- lerobot_pi05: LeRobot's own pi05 ---------------------------------------------------------------------


class ByteTokenizer:
    """A stand-in for PaliGemma's SentencePiece tokenizer (which would be downloaded), called as
    LeRobot's TokenizerProcessorStep calls a transformers tokenizer: UTF-8 bytes (+1, 0 is padding),
    truncated and padded to max_length, with the attention mask. pi05's preprocessor pads to
    tokenizer_max_length, so the policy's work does not depend on which ids these are."""

    def __call__(
        self,
        text: list[str],
        max_length: int,
        truncation: bool = True,
        padding: str = "max_length",
        padding_side: str = "right",
        return_tensors: str = "pt",
    ) -> dict[str, torch.Tensor]:
        if padding != "max_length" or return_tensors != "pt":
            raise ValueError(f"ByteTokenizer: padding={padding!r}, return_tensors={return_tensors!r}")
        ids = torch.zeros(len(text), max_length, dtype=torch.long)
        mask = torch.zeros(len(text), max_length, dtype=torch.bool)
        for i, prompt in enumerate(text):
            row = [b + 1 for b in prompt.encode("utf-8")][:max_length]
            span = slice(0, len(row)) if padding_side == "right" else slice(max_length - len(row), max_length)
            ids[i, span], mask[i, span] = torch.tensor(row, dtype=torch.long), True
        return {"input_ids": ids, "attention_mask": mask}


def lerobot_pi05_config(cfg: GpuBenchConfig, steps: int, compile_model: bool = False):
    """LeRobot's PI05Config at the preset's device, dtype, chunk, image size, camera and dims."""
    from lerobot.policies.pi05.configuration_pi05 import PI05Config

    opts = cfg.lerobot
    size = opts.image_size or PRESETS[cfg.preset]["image_size"]
    return PI05Config(
        paligemma_variant=LEROBOT_VLM,
        action_expert_variant=opts.action_expert_variant,
        dtype=opts.dtype or PRESETS[cfg.preset]["dtype"],
        device=cfg.device,
        chunk_size=CHUNK,
        n_action_steps=CHUNK,
        num_inference_steps=steps,
        image_resolution=(size, size),
        tokenizer_max_length=opts.tokenizer_max_length,
        compile_model=compile_model,
        compile_mode=opts.compile_mode,
        input_features={
            "observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,)),
            f"observation.images.{CAMERA}": PolicyFeature(FeatureType.VISUAL, (3, size, size)),
        },
        output_features={"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
    )


def lerobot_pi05_processors(config, tokenizer_path: Path | None):
    """LeRobot's own pi05 pre/post-processors (make_pi05_pre_post_processors: normalize, the state
    into the prompt, tokenize padded to tokenizer_max_length, to the device), with the tokenizer
    given instead of downloaded."""
    from lerobot.policies.pi05 import processor_pi05
    from lerobot.processor import TokenizerProcessorStep

    if tokenizer_path is None:
        tokenizer: Any = ByteTokenizer()
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path), local_files_only=True)
    step = functools.partial(TokenizerProcessorStep, tokenizer=tokenizer)  # tokenizer_name is then unused
    with mock.patch.object(processor_pi05, "TokenizerProcessorStep", step):
        return processor_pi05.make_pi05_pre_post_processors(config, dataset_stats=_dataset_stats())


def lerobot_raw_observation(size: int) -> dict[str, Any]:
    """One observation as LeRobot's rollout hands it to the preprocessor (prepare_observation_for_
    inference: a batch of 1, images float in [0, 1] channels first, on the CPU)."""
    gen = torch.Generator().manual_seed(0)
    return {
        "observation.state": torch.rand(1, STATE_DIM, generator=gen) * 2 - 1,
        f"observation.images.{CAMERA}": torch.rand(1, 3, size, size, generator=gen),
        "task": TASK,
        "robot_type": "",
    }


def _time_lerobot_policy(policy, pre, post, cfg: GpuBenchConfig, size: int) -> dict:
    """predict_action_chunk on the preprocessed batch of 1, and the same with the processors around
    it (raw observation in, unnormalized actions on the CPU out)."""
    raw = lerobot_raw_observation(size)
    with torch.inference_mode():
        batch = pre(dict(raw))
        figures = time_calls(cfg.device, cfg.calls, lambda: policy.predict_action_chunk(batch))

        def end_to_end_call() -> torch.Tensor:
            return post(policy.predict_action_chunk(pre(dict(raw))))

        chunk = end_to_end_call()
        end_to_end = time_calls(cfg.device, cfg.calls, end_to_end_call)
    if tuple(chunk.shape) != (1, CHUNK, ACTION_DIM) or not torch.isfinite(chunk).all():
        raise RuntimeError(f"lerobot_pi05: a chunk of shape {tuple(chunk.shape)}")
    figures["with_processors_median_ms"] = end_to_end["median_ms"]
    figures["with_processors_p90_ms"] = end_to_end["p90_ms"]
    figures["prompt_tokens"] = int(batch["observation.language.tokens"].shape[1])
    figures["prompt_tokens_used"] = int(batch["observation.language.attention_mask"].sum())
    return figures


def run_lerobot_pi05(cfg: GpuBenchConfig, report: Report) -> None:
    """LeRobot's PI05Policy: construct, then each step count timed; optionally compiled (module doc)."""
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy

    opts = cfg.lerobot
    config = lerobot_pi05_config(cfg, opts.steps[0])
    size = config.image_resolution[0]
    figures: dict[str, Any] = {
        "paligemma_variant": config.paligemma_variant,
        "action_expert_variant": config.action_expert_variant,
        "dtype": config.dtype,
        "image_size": size,
        "cameras": 1,
        "chunk_size": config.chunk_size,
        "state_dim": STATE_DIM,
        "action_dim": ACTION_DIM,
        "tokenizer": "byte stand-in" if opts.tokenizer_path is None else str(opts.tokenizer_path),
    }
    _reset_peak(cfg.device)
    before = _allocated_gib(cfg.device)  # what this process still holds is not LeRobot's
    holder: list = []
    figures["construct_s"] = _timed(cfg.device, lambda: holder.append(PI05Policy(config).eval()))
    policy = holder.pop()
    figures["parameters_m"] = sum(p.numel() for p in policy.parameters()) / 1e6
    # Of those, its PaliGemma's and expert's text heads (790M at pi05's size), held but never used to
    # act; the preset has none (pi_star_recap/weights.py drops them from pi05_base).
    heads = sum(p.numel() for name, p in policy.named_parameters() if "lm_head" in name)
    figures["lm_heads_parameters_m"] = heads / 1e6
    figures["weights_gib"] = None if before is None else _allocated_gib(cfg.device) - before
    report.add("lerobot_pi05", figures)
    pre, post = lerobot_pi05_processors(config, opts.tokenizer_path)
    for steps in opts.steps:
        policy.config.num_inference_steps = steps  # sample_actions reads it on every call
        figures[f"steps{steps}"] = _time_lerobot_policy(policy, pre, post, cfg, size)
        report.add("lerobot_pi05", figures)  # each step count on disk as soon as it is timed
    del policy, pre, post
    _reset_peak(cfg.device)
    if opts.compile:
        figures["compiled"] = _time_compiled(cfg)
        report.add("lerobot_pi05", figures)


def _time_compiled(cfg: GpuBenchConfig) -> dict:
    """LeRobot's compile_model=True at the first step count: the first call (compiling) timed alone."""
    from lerobot.policies.pi05.modeling_pi05 import PI05Policy

    precision = torch.get_float32_matmul_precision()  # compile_model sets "high" for the whole process
    try:
        config = lerobot_pi05_config(cfg, cfg.lerobot.steps[0], compile_model=True)
        size = config.image_resolution[0]
        policy = PI05Policy(config).eval()
        pre, post = lerobot_pi05_processors(config, cfg.lerobot.tokenizer_path)
        with torch.inference_mode():
            batch = pre(lerobot_raw_observation(size))
            first_s = _timed(cfg.device, lambda: policy.predict_action_chunk(batch))
        figures = {"mode": config.compile_mode, "steps": config.num_inference_steps, "first_call_s": first_s}
        return figures | _time_lerobot_policy(policy, pre, post, cfg, size)
    finally:
        torch.set_float32_matmul_precision(precision)
        _reset_peak(cfg.device)


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
    """The phases asked for, in PHASES order; the report's data (the phases that failed listed under
    "failed")."""
    report = Report(cfg)
    with tempfile.TemporaryDirectory() as tmp:
        served = Path(tmp) / "served"
        if set(POLICY_PHASES) & set(cfg.phases):  # all need the preset built
            policy = run_construct(cfg, report)
            if "latency" in cfg.phases:
                run_latency(policy, cfg, report)
            if "train" in cfg.phases:
                report.add("train", {f"batch{b}": time_train_steps(policy, cfg, b) for b in cfg.batch_sizes})
            if "checkpoint" in cfg.phases:
                run_checkpoint(policy, cfg, report)
            if "served" in cfg.phases:  # saved now, timed once this policy is gone
                save = functools.partial(save_served_checkpoint, policy, served)
                report.guarded("served", cfg.device, save)
            del policy
            _reset_peak(cfg.device)  # what follows has the device to itself
        if "served" in cfg.phases and "served" not in report.failed:
            report.guarded("served", cfg.device, lambda: run_served(served, cfg, report))
    if "lerobot_pi05" in cfg.phases:
        report.guarded("lerobot_pi05", cfg.device, lambda: run_lerobot_pi05(cfg, report))
    if "base" in cfg.phases:
        run_base(cfg, report)
    if report.failed:
        report.add("failed", report.failed)
    return report.data


if __name__ == "__main__":
    data = main(draccus.parse(GpuBenchConfig))
    sys.exit(1 if data.get("failed") else 0)
