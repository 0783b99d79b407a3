"""Policies as the rollout daemon sees them: something that turns an observation into a chunk of
actions. A LeRobot pretrained policy (any type with predict_action_chunk), or a baseline."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import draccus
import numpy as np

log = logging.getLogger(__name__)


@dataclass
class PolicySourceConfig:
    # A LeRobot pretrained policy folder (e.g. outputs/train/.../pretrained_model). Overrides `baseline`.
    path: Path | None = None
    # Without a path: `hold` (keep still) or `random` (a random walk that drifts, to exercise takeovers).
    baseline: str = "hold"
    # Recorded as policy_version on the frames it acts on. Default: the registry version when `path`
    # is a registry folder (models/vNNNN), 1 for another pretrained folder, -1 for a baseline.
    # (0 is reserved for the operator.)
    version: int | None = None
    # Device for a pretrained policy.
    device: str = "cpu"
    # Start computing the next chunk when this many actions are left in the queue.
    refill_at: int = 5
    # Torch threads for inference in the daemon (0: torch's default). One leaves a core to the
    # control loop and the recorder on a small computer; more helps a large model on a big one.
    torch_threads: int = 1
    # Seed of the random baseline.
    seed: int = 0
    # Real-time chunking (arXiv 2506.07339), in real time (fps > 0) only: each chunk is computed
    # guided toward the previous chunk's actions still queued, knowing how many of them run while
    # it is computed (the measured latency), so consecutive chunks join smoothly. For policies that
    # support it (pi_star_recap, pi05, ...: LeRobot's predict_action_chunk(inference_delay=,
    # prev_chunk_left_over=)); others act as without it (a warning says so). The checkpoint's
    # rtc_config is used if it has one, else LeRobot's defaults over the whole chunk.
    rtc: bool = False
    # A policy server's address (`flywheel serve`, e.g. tcp://gpu-host:5570): the policy runs there and
    # this daemon loads no model; it sends observations and acts on the chunks that come back.
    server: str | None = None

    def __post_init__(self):
        if self.path is None and self.baseline not in ("hold", "random"):
            raise ValueError(f"policy.baseline: {self.baseline!r} is not one of 'hold', 'random'")
        if self.refill_at < 0:
            raise ValueError(f"policy.refill_at: {self.refill_at} must be >= 0")
        if self.server is not None and self.path is not None:
            raise ValueError(
                f"policy.server: {self.server} serves the policy; give --policy.path to the server, not here"
            )


@dataclass(frozen=True)
class Prefix:
    """What real-time chunking (RTC, arXiv 2506.07339) needs to continue the previous chunk smoothly:
    that chunk's actions which will still be executed after the new chunk is asked for, and how many
    ticks will pass before the new chunk's first action can be used (the inference delay)."""

    actions: np.ndarray  # (n, action_dim), in the robot's action space and order
    delay: int  # ticks, from the measured inference latency


class ChunkPolicy(Protocol):
    version: int

    def predict_chunk(
        self, observation: dict[str, Any], task: str, prefix: Prefix | None = None
    ) -> np.ndarray:
        """Actions for the next steps, shape (steps, action_dim), in the robot's action order. A policy
        that cannot chunk in real time ignores `prefix`."""
        ...

    def reset(self) -> None: ...


def hold_action(observation: dict[str, Any], action_names: list[str]) -> np.ndarray:
    """The action that keeps the robot where it is: the current joint positions for position-
    controlled arms (action keys that are observation keys), zero for delta-controlled ones."""
    return np.array([float(observation.get(name, 0.0)) for name in action_names], dtype=np.float32)


class HoldPolicy:
    def __init__(self, action_names: list[str], version: int, chunk: int = 10):
        self.action_names, self.version, self.chunk = action_names, version, chunk

    def predict_chunk(
        self, observation: dict[str, Any], task: str, prefix: Prefix | None = None
    ) -> np.ndarray:
        return np.tile(hold_action(observation, self.action_names), (self.chunk, 1))

    def reset(self) -> None:
        pass


class RandomWalkPolicy:
    """A deliberately poor policy: a smooth random walk away from the hold action. It drifts,
    so a simulated operator has something to correct."""

    def __init__(self, action_names: list[str], version: int, seed: int, chunk: int = 10, scale: float = 0.3):
        self.action_names, self.version, self.chunk, self.scale = action_names, version, chunk, scale
        self._rng = np.random.default_rng(seed)
        self._velocity = np.zeros(len(action_names), dtype=np.float32)

    def predict_chunk(
        self, observation: dict[str, Any], task: str, prefix: Prefix | None = None
    ) -> np.ndarray:
        base = hold_action(observation, self.action_names)
        steps = []
        for _ in range(self.chunk):
            self._velocity = 0.9 * self._velocity + self._rng.normal(0, self.scale, len(self.action_names))
            steps.append(base + self._velocity)
        return np.asarray(steps, dtype=np.float32)

    def reset(self) -> None:
        self._velocity[:] = 0.0


class LeRobotChunkPolicy:
    """Any LeRobot pretrained policy folder, with its saved pre/post-processors."""

    def __init__(
        self, path: Path, dataset_features: dict, action_names: list[str], version: int, device: str
    ):
        from lerobot.configs.policies import PreTrainedConfig
        from lerobot.policies.factory import get_policy_class, make_pre_post_processors
        from lerobot.utils.import_utils import register_third_party_plugins

        register_third_party_plugins()  # policy types from plugins (pi_star_recap) register on import

        if not (Path(path) / "config.json").exists():
            raise FileNotFoundError(
                f"policy.path: {path} has no config.json (a LeRobot pretrained_model folder)"
            )
        # Not PreTrainedConfig.from_pretrained: it builds a CLI parser whose help texts come from
        # inspect.getsource, about 1 s that holds the GIL for hundreds of ms at a time, which would
        # stall the control loop while a hot-swap loads. Decoding the JSON gives the same config.
        cfg = draccus.decode(PreTrainedConfig, json.loads((Path(path) / "config.json").read_text()))
        cfg.device = device
        self.policy = get_policy_class(cfg.type).from_pretrained(path, config=cfg)
        self.policy.eval()
        self.preprocess, self.postprocess = make_pre_post_processors(
            cfg, pretrained_path=str(path), preprocessor_overrides={"device_processor": {"device": device}}
        )
        self.features, self.action_names, self.version = dataset_features, action_names, version

    def predict_chunk(
        self, observation: dict[str, Any], task: str, prefix: Prefix | None = None
    ) -> np.ndarray:
        """With a prefix, and a policy that supports RTC: the prefix's actions are mapped into the
        policy's action space (the saved preprocessor's normalization of `action`, the inverse of
        the postprocessor), padded with zeros or cropped to the chunk size, and passed as
        prev_chunk_left_over with inference_delay = prefix.delay and execution_horizon at most the
        real rows (the padding gets no guidance weight)."""
        return self.predict_chunks([observation], [task], None if prefix is None else [prefix])[0]

    def predict_chunks(
        self, observations: list[dict[str, Any]], tasks: list[str], prefixes: list[Prefix] | None = None
    ) -> np.ndarray:
        """One policy call for many observations (one row each, with its task): shape (rows, steps,
        action_dim). Each row is built exactly as a single observation is (LeRobot's
        prepare_observation_for_inference), so a batch of one is what the daemon always ran.
        `prefixes`, one per row, must share their delay and length: LeRobot's RTC guides a whole call
        with one inference delay, and its execution horizon is cut to the prefix's length."""
        if prefixes is None or not self._rtc_ready():
            return self._predict(observations, tasks)
        return self._predict(observations, tasks, **self._rtc_kwargs(prefixes))

    def _predict(self, observations: list[dict[str, Any]], tasks: list[str], **rtc: Any) -> np.ndarray:
        import torch

        if len(observations) != len(tasks) or not observations:
            raise ValueError(
                f"observations: {len(observations)} rows for {len(tasks)} tasks (need as many, >= 1)"
            )
        rows = [self._row(observation) for observation in observations]
        device = torch.device(self.policy.config.device)
        batch: dict[str, Any] = {key: torch.cat([row[key] for row in rows]).to(device) for key in rows[0]}
        # A list even for one row: LeRobot's AddBatchDimensionProcessorStep turns a lone task string
        # into exactly this.
        batch["task"], batch["robot_type"] = list(tasks), ""
        # RTC's guidance takes a gradient w.r.t. the noisy chunk, which inference_mode forbids.
        with torch.no_grad() if rtc else torch.inference_mode():
            chunk = self.policy.predict_action_chunk(self.preprocess(batch), **rtc)
            chunk = self.postprocess(chunk)
        return chunk.float().cpu().numpy()

    def _rtc_ready(self) -> bool:
        """Whether the policy can take a prefix (LeRobot's supports_rtc_inference test, without
        importing lerobot.rollout); on first use, an rtc_config is set if the checkpoint has none."""
        ready = getattr(self, "_rtc", None)
        if ready is None:
            import inspect

            supports = getattr(self.policy, "supports_rtc", None)
            try:
                inspect.signature(self.policy.predict_action_chunk).bind(
                    object(), inference_delay=0, prev_chunk_left_over=None
                )
                ready = callable(supports) and bool(supports())
            except (TypeError, ValueError):
                ready = False
            if not ready:
                log.warning(
                    "policy.rtc: %s does not support real-time chunking; acting without it",
                    type(self.policy).__name__,
                )
            elif getattr(self.policy.config, "rtc_config", None) is None:
                from lerobot.policies.rtc.configuration_rtc import RTCConfig

                self.policy.config.rtc_config = RTCConfig(execution_horizon=self.policy.config.chunk_size)
                self.policy.init_rtc_processor()
            self._rtc = ready
        return ready

    def _rtc_kwargs(self, prefixes: list[Prefix]) -> dict[str, Any]:
        import torch
        from lerobot.processor import NormalizerProcessorStep, TransitionKey, create_transition

        shapes = {(int(p.delay), len(p.actions)) for p in prefixes}
        if len(shapes) != 1:
            raise ValueError(f"prefixes: one call needs one (delay, length), got {sorted(shapes)}")
        chunk_size = int(self.policy.config.chunk_size)
        actions = torch.as_tensor(np.stack([np.asarray(p.actions, dtype=np.float32) for p in prefixes]))
        actions = actions[:, :chunk_size]
        rows = actions.shape[1]
        for step in self.preprocess.steps:
            if isinstance(step, NormalizerProcessorStep):
                actions = step(create_transition(action=actions))[TransitionKey.ACTION]
        padded = torch.zeros(len(prefixes), chunk_size, actions.shape[-1])
        padded[:, :rows] = actions.float().cpu()
        horizon = min(rows, int(self.policy.config.rtc_config.execution_horizon))
        return {
            "inference_delay": int(prefixes[0].delay),
            "prev_chunk_left_over": padded.to(self.policy.config.device),
            "execution_horizon": horizon,
        }

    def _row(self, observation: dict[str, Any]) -> dict[str, Any]:
        """One observation as LeRobot feeds a policy: tensors with a batch dimension of 1, on the CPU."""
        import torch
        from lerobot.policies.utils import prepare_observation_for_inference
        from lerobot.utils.feature_utils import build_dataset_frame

        frame = build_dataset_frame(self.features, observation, prefix="observation")
        row = prepare_observation_for_inference(frame, torch.device("cpu"), None, robot_type=None)
        return {key: value for key, value in row.items() if key not in ("task", "robot_type")}

    def reset(self) -> None:
        self.policy.reset()


BASELINE_VERSION = -1  # policy_version of frames a built-in baseline (hold, random) acted on


def resolved_version(cfg: PolicySourceConfig) -> int:
    if cfg.version is not None:
        return cfg.version
    if cfg.path is None:
        return BASELINE_VERSION
    manifest = Path(cfg.path) / "manifest.json"  # a model registry version knows its number
    return int(json.loads(manifest.read_text())["version"]) if manifest.exists() else 1


def make_chunk_policy(
    cfg: PolicySourceConfig,
    dataset_features: dict,
    action_names: list[str],
    *,
    fps: float = 30.0,
    security: Any = None,
) -> ChunkPolicy:
    """fps (0: lockstep) and security (the daemon's CurveZMQ Security) matter only with `server`."""
    if cfg.server is not None:
        from flywheel.rollout.remote_policy import RemoteChunkPolicy

        return RemoteChunkPolicy(cfg.server, action_names, fps=fps, security=security)
    version = resolved_version(cfg)
    if cfg.path is not None:
        if cfg.torch_threads > 0:
            import torch

            torch.set_num_threads(cfg.torch_threads)
        return LeRobotChunkPolicy(cfg.path, dataset_features, action_names, version, cfg.device)
    if cfg.baseline == "random":
        return RandomWalkPolicy(action_names, version, cfg.seed)
    return HoldPolicy(action_names, version)
