"""PiStarRECAPPolicy: LeRobot's PreTrainedPolicy around the pi_star_recap network.

Training: the flow-matching loss on prompts that carry the advantage indicator (dropped with
probability advantage_dropout), weighted per sample by data type and, with the IQL estimator, by
exp(A / temperature). Inference: positive-conditioned prompts; cfg_scale > 1 adds the unconditioned
prompts to the same batch and mixes the two velocities at every denoising step. Real-time chunking
(config.rtc_config, predict_action_chunk's inference_delay and prev_chunk_left_over): LeRobot's
RTCProcessor guides every step's velocity, the CFG-mixed one under CFG, toward the previous chunk.
"""

import builtins
import contextlib
import json
import logging
from collections import deque
from pathlib import Path
from typing import Any, TypeVar

import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.policies.pretrained import PreTrainedPolicy
from lerobot.policies.rtc.modeling_rtc import RTCProcessor
from lerobot.utils.constants import ACTION, OBS_STATE
from torch import Tensor, nn

from flywheel.policies.pi_star_recap import batch_inputs as bi
from flywheel.policies.pi_star_recap import build_checks
from flywheel.policies.pi_star_recap.configuration_pi_star_recap import PiStarRECAPConfig
from flywheel.policies.pi_star_recap.flow_matching import rtc_guide
from flywheel.policies.pi_star_recap.iql import advantage_weights
from flywheel.policies.pi_star_recap.network import PiStarRECAPNetwork, PrefixInputs
from flywheel.policies.pi_star_recap.prompt import (
    POSITIVE,
    discretize_state,
    indicator_ids,
    indicators_from_labels,
    tokenize_contexts,
    tokenize_suffixes,
)
from flywheel.policies.pi_star_recap.tokenizer import make_tokenizer
from flywheel.policies.pi_star_recap.weights import covers, load_pretrained, uninitialized

log = logging.getLogger(__name__)
T = TypeVar("T", bound="PiStarRECAPPolicy")
# from_pretrained kwargs meant for reading the config; the rest (dataset_stats, ...) go to __init__.
HUB_KWARGS = (
    "force_download",
    "resume_download",
    "proxies",
    "token",
    "cache_dir",
    "local_files_only",
    "revision",
)


class PiStarRECAPPolicy(PreTrainedPolicy):
    config_class = PiStarRECAPConfig
    name = "pi_star_recap"

    def __init__(
        self,
        config: PiStarRECAPConfig,
        load_base_weights: bool = True,
        init_weights: bool = True,
        **kwargs: Any,
    ) -> None:
        """init_weights=False: parameters left uninitialised for a checkpoint that sets every one
        (from_pretrained, which loads strictly). A base checkpoint (base_model_path, or a local
        vlm_model_name) that sets every one skips the random init too."""
        # kwargs: make_policy passes dataset_stats / dataset_meta; normalization lives in the processors.
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.tokenizer = make_tokenizer(config.tokenizer_path)
        base = self._base_weights_path() if load_base_weights else None
        build_checks.check_build(config, base, new_model=load_base_weights)  # before any allocation
        if base is not None and init_weights:
            init_weights = not covers(base, _network_keys(config))
        self.model = _build_network(config) if init_weights else uninitialized(lambda: _build_network(config))
        self.model.paligemma_with_expert.gradient_checkpointing = bool(config.gradient_checkpointing)
        self.generator: torch.Generator | None = None  # tests pin the indicator dropout with this
        self.base_load_report: tuple[list[str], list[str]] | None = None  # (missing, unexpected)
        if base is not None:
            self.base_load_report = load_pretrained(self, base)
        self._apply_freezing()
        self.model.to(config.device)
        self.init_rtc_processor()
        self.reset()

    # ----------------------------------------------------------------------------- construction
    @classmethod
    def from_pretrained(
        cls: builtins.type[T],
        pretrained_name_or_path: str | Path,
        *,
        config: PreTrainedConfig | None = None,
        **kwargs: Any,
    ) -> T:
        """A fine-tuned checkpoint holds every weight: base_model_path is not re-read, the random
        init is skipped (pi05: ~48 s of CPU), and the load is strict, so a checkpoint that lacks a
        weight is an error naming it rather than a policy acting with uninitialised memory."""
        if config is None:
            hub_args = {k: v for k, v in kwargs.items() if k in HUB_KWARGS}
            config = PreTrainedConfig.from_pretrained(pretrained_name_or_path, **hub_args)
        _keep_older_prompt(config, pretrained_name_or_path)
        strict = kwargs.pop("strict", True)  # a caller asking for a lenient load gets initialised weights
        return super().from_pretrained(
            pretrained_name_or_path,
            config=config,
            strict=strict,
            load_base_weights=False,
            init_weights=not strict,
            **kwargs,
        )

    def _base_weights_path(self) -> str | None:
        """pi05_base via base_model_path; else a local HF PaliGemma dir named by vlm_model_name."""
        if self.config.base_model_path is not None:
            return self.config.base_model_path
        return self.config.vlm_model_name if Path(self.config.vlm_model_name).is_dir() else None

    def _apply_freezing(self) -> None:
        frozen: list[nn.Module] = []
        if self.config.freeze_vlm or self.config.train_expert_only:
            frozen.append(self.model.paligemma_with_expert.paligemma)
        if self.config.train_expert_only and hasattr(self.model, "state_token_proj"):
            # The state token is part of the prefix; the IQL critics are not the policy and keep training.
            frozen.append(self.model.state_token_proj)
        for module in frozen:
            module.requires_grad_(False)
        self._frozen = frozen

    def train(self, mode: bool = True) -> "PiStarRECAPPolicy":
        super().train(mode)
        for module in getattr(self, "_frozen", []):
            module.eval()
        return self

    def get_optim_params(self) -> list[dict[str, Any]]:
        """Three AdamW groups: policy (policy_lr), Q heads (q_lr), V head (v_lr); empty groups left out."""
        cfg = self.config
        iql = getattr(self.model, "iql", None)
        q_ids = {id(p) for p in iql.q_heads.parameters()} if iql is not None else set()
        v_ids = {id(p) for p in iql.v_head.parameters()} if iql is not None else set()
        groups: dict[str, list[nn.Parameter]] = {"policy": [], "q": [], "v": []}
        for p in self.parameters():
            if p.requires_grad:
                groups["q" if id(p) in q_ids else "v" if id(p) in v_ids else "policy"].append(p)
        lrs = {"policy": cfg.policy_lr, "q": cfg.q_lr, "v": cfg.v_lr}
        return [{"params": ps, "lr": lrs[name], "name": name} for name, ps in groups.items() if ps]

    def update(self) -> None:
        """After each optimizer step: Polyak-average the IQL target Qs (no-op for the recap estimator)."""
        if hasattr(self.model, "iql"):
            self.model.iql.update_target(self.config.iql_target_tau)

    def reset(self) -> None:
        self._action_queue: deque[Tensor] = deque(maxlen=self.config.n_action_steps)

    # ----------------------------------------------------------------------------- real-time chunking
    def supports_rtc(self) -> bool:
        """LeRobot's RTC engine (lerobot-rollout --inference.type=rtc) drives policies that say so."""
        return True

    def init_rtc_processor(self) -> None:
        """(Re)build the RTC processor from config.rtc_config, as LeRobot's rollout calls it after
        setting that field (pi05's protocol)."""
        self.rtc_processor = RTCProcessor(self.config.rtc_config) if self.config.rtc_config else None
        self._warned_rtc_off = False

    def _rtc_enabled(self) -> bool:
        return self.config.rtc_config is not None and self.config.rtc_config.enabled

    # ----------------------------------------------------------------------------- inputs
    def _prefix_inputs(self, batch: dict, indicators: list[str | None], branches: int = 1) -> PrefixInputs:
        """Prefix inputs for the batch; `indicators` has branches * B entries, branch-major (CFG: the
        positive branch, then the unconditioned one)."""
        timed = bi.has_time_axis(batch)
        device = next(self.model.parameters()).device
        state = bi.frame(batch[OBS_STATE], 0, timed).to(device)
        bsize = state.shape[0]
        if len(indicators) != branches * bsize:
            raise ValueError(f"indicators: {len(indicators)} for {branches} x {bsize} rows")
        images, masks = bi.camera_images(
            batch, list(self.config.image_features), self.config.image_size, timed, device
        )
        bins = discretize_state(state, self.config.max_state_dim) if self.config.state_in_prompt else None
        tasks = bi.tasks_of(batch, bsize)
        max_length = self.config.tokenizer_max_length
        context, context_mask = tokenize_contexts(self.tokenizer, tasks, bins, max_length, device)
        # One tensor per branch, each padded only to its own longest suffix: under CFG the
        # unconditioned "Action: " is far shorter than the positive suffix.
        per_branch = [indicators[i * bsize : (i + 1) * bsize] for i in range(branches)]
        in_text = per_branch if self.config.indicator_in_prompt else [[None] * bsize] * branches
        suffixes = [tokenize_suffixes(self.tokenizer, branch, device) for branch in in_text]
        return PrefixInputs(
            images,
            masks,
            context,
            context_mask,
            [tokens for tokens, _ in suffixes],
            [mask for _, mask in suffixes],
            state,
            # Only for a learned indicator embedding (indicator_conditioning): pi05 reads the prompt.
            [indicator_ids(b, device) for b in per_branch] if self._embeds_indicator else [],
        )

    @property
    def _embeds_indicator(self) -> bool:
        return hasattr(self.model, "indicator_embedding")

    def _training_indicators(self, batch: dict, bsize: int) -> list[str | None]:
        if self.config.advantage_estimator == "iql":
            # IQL improves the policy through loss weights, not through the prompt.
            return [None] * bsize
        labels = bi.advantage_labels(batch, bsize, bi.has_time_axis(batch))
        dropout = self.config.advantage_dropout if self.training else 0.0
        return indicators_from_labels(labels, dropout, self.generator)

    def _actions(self, batch: dict) -> Tensor:
        """The batch's actions, (batch, chunk, action_dim). LeRobot 0.6 stores a shape-(1,) feature as
        scalars, so a one-joint robot's action chunks arrive as (batch, chunk): the joint axis is put
        back."""
        actions = batch[ACTION].float()
        if self.config.action_dim == 1 and actions.ndim == 2:
            actions = actions.unsqueeze(-1)
        return actions

    def _padded_actions(self, batch: dict) -> Tensor:
        actions = self._actions(batch)
        pad = self.config.max_action_dim - actions.shape[-1]
        return torch.nn.functional.pad(actions, (0, pad))

    # ----------------------------------------------------------------------------- training
    def forward(self, batch: dict, reduction: str = "mean") -> tuple[Tensor, dict[str, float]]:
        """(loss, {policy_loss, v_loss, q_loss, ...}); v_loss and q_loss are 0 for the recap estimator."""
        cfg = self.config
        actions = self._padded_actions(batch)
        device = actions.device
        bsize = actions.shape[0]
        build_checks.check_training_batch(self, batch)  # once: labels the seed's weights need
        indicators = self._training_indicators(batch, bsize)
        errors = self.model.flow_loss(self._prefix_inputs(batch, indicators), actions)
        per_sample = self._masked_mean(errors[..., : cfg.action_dim], batch)
        timed = bi.has_time_axis(batch)
        weights = bi.data_type_weights(batch, bsize, cfg.data_type_weights, cfg.balance_data_types, timed)
        weights = weights.to(device)
        v_loss = q_loss = torch.zeros((), device=device)
        if cfg.advantage_estimator == "iql":
            v_loss, q_loss, advantage = self._iql_losses(batch)
            weights = weights * advantage_weights(advantage, cfg.iql_temperature, cfg.iql_max_weight)
        weighted = per_sample * weights
        policy_loss = weighted.mean()
        info = {
            "policy_loss": policy_loss.item(),
            "v_loss": v_loss.item(),
            "q_loss": q_loss.item(),
            "indicator_dropped": sum(i is None for i in indicators) / bsize,
            "positive_fraction": sum(i == POSITIVE for i in indicators) / bsize,
        }
        if reduction == "none":
            per_sample_total = weighted + (v_loss + q_loss)
            info["loss"] = per_sample_total.mean().item()
            return per_sample_total, info
        loss = policy_loss + v_loss + q_loss
        info["loss"] = loss.item()
        return loss, info

    @staticmethod
    def _masked_mean(errors: Tensor, batch: dict) -> Tensor:
        """Mean error per sample over real (not end-of-episode padded) action steps."""
        pad = batch.get(f"{ACTION}_is_pad")
        if pad is None:
            return errors.mean(dim=(1, 2))
        valid = (~pad.bool()).float().to(errors.device)[..., None]
        return (errors * valid).sum(dim=(1, 2)) / (valid.sum(dim=(1, 2)) * errors.shape[-1]).clamp(min=1)

    def _iql_losses(self, batch: dict) -> tuple[Tensor, Tensor, Tensor]:
        """IQL on (s, a_0, r, done, s'); s' is the next frame when loaded, else s (stop-gradient)."""
        cfg = self.config
        if "next.reward" not in batch:
            raise KeyError("advantage_estimator='iql' needs rewards in the batch key 'next.reward'")
        states = batch[OBS_STATE].float()
        timed = bi.has_time_axis(batch)
        state = bi.frame(states, 0, timed)
        next_state = bi.frame(states, 1, timed) if timed else state
        reward = (
            torch.as_tensor(batch["next.reward"], device=state.device)
            .float()
            .reshape(state.shape[0], -1)[:, 0]
        )
        done = torch.as_tensor(batch.get("next.done", torch.zeros_like(reward)), device=state.device)
        done = done.float().reshape(state.shape[0], -1)[:, 0]
        pad = batch.get(f"{OBS_STATE}_is_pad")
        if timed and pad is not None:
            # The episode ended before s': nothing to bootstrap from.
            done = torch.maximum(done, pad[:, 1].float().to(done.device))
        action0 = self._actions(batch)[:, 0, : cfg.action_dim]
        return self.model.iql.losses(
            state, action0, reward, done, next_state, cfg.iql_expectile, cfg.iql_discount
        )

    # ----------------------------------------------------------------------------- inference
    @torch.no_grad()
    def predict_action_chunk(
        self,
        batch: dict,
        noise: Tensor | None = None,
        inference_delay: int | None = None,
        prev_chunk_left_over: Tensor | None = None,
        execution_horizon: int | None = None,
        **kwargs: Any,
    ) -> Tensor:
        """[B, chunk_size, action_dim] normalized actions, conditioned on 'Advantage: positive'.

        Real-time chunking (with config.rtc_config enabled): prev_chunk_left_over, [B or 1, n,
        action_dim] normalized, are the previous chunk's actions still to run, aligned so that its
        row i is the new chunk's row i; the first `inference_delay` of them run while this chunk is
        computed. Guidance weights (LeRobot's RTCProcessor.get_prefix_weights): 1 on the first
        min(delay, horizon) rows, then the schedule (linear: decaying) down to 0 at row `horizon`,
        0 after; horizon = execution_horizon (None: rtc_config's), at most n. Where every weight is
        0 (no prev_chunk_left_over; or delay 0 and horizon 0 or n = 0; or delay 0 under the ZEROS
        schedule) the result is the unguided chunk for the same noise, bit for bit."""
        self.eval()
        cfg = self.config
        bsize = bi.frame(batch[OBS_STATE], 0, bi.has_time_axis(batch)).shape[0]
        device = next(self.model.parameters()).device
        if noise is None:
            # Drawn on the CPU: while another thread captures a CUDA graph (the daemon's worker, its
            # first chunk), drawing from the CUDA generator is an error (cuda_graphs.py).
            noise = torch.randn(bsize, cfg.chunk_size, cfg.max_action_dim)
        positive = None if cfg.advantage_estimator == "iql" else POSITIVE
        guided = cfg.cfg_scale != 1.0 and positive is not None
        indicators = [positive] * bsize + ([None] * bsize if guided else [])
        inputs = self._prefix_inputs(batch, indicators, branches=2 if guided else 1)
        guide = self._rtc_guide(prev_chunk_left_over, inference_delay, execution_horizon, device)
        # RTC's guidance takes a gradient (of x_t - t v w.r.t. x_t): not under inference_mode, which
        # the caller may have turned on.
        eager = torch.inference_mode(False) if guide is not None else contextlib.nullcontext()
        with eager:
            actions = self.model.sample(inputs, noise.to(device), cfg.cfg_scale if guided else 1.0, guide)
        return actions[:, :, : cfg.action_dim]

    def _rtc_guide(self, prev: Tensor | None, delay: int | None, horizon: int | None, device: torch.device):
        if prev is None:
            return None
        if not self._rtc_enabled() or self.rtc_processor is None:
            if not self._warned_rtc_off:
                log.warning("prev_chunk_left_over given but rtc_config is off: sampling without RTC")
                self._warned_rtc_off = True
            return None
        prev = torch.as_tensor(prev).to(device=device, dtype=torch.float32)
        if prev.ndim == 2:
            prev = prev.unsqueeze(0)
        if prev.shape[-1] > self.config.action_dim:
            raise ValueError(
                f"prev_chunk_left_over: {prev.shape[-1]} action dims, policy has {self.config.action_dim}"
            )
        prev = prev[:, : self.config.chunk_size]
        return rtc_guide(self.rtc_processor, prev, max(0, int(delay or 0)), horizon)

    @torch.no_grad()
    def select_action(self, batch: dict, noise: Tensor | None = None, **kwargs: Any) -> Tensor:
        """One action per call, from a queue refilled with n_action_steps of a new chunk when empty."""
        self.eval()
        if not self._action_queue:
            chunk = self.predict_action_chunk(batch, noise=noise)[:, : self.config.n_action_steps]
            self._action_queue.extend(chunk.transpose(0, 1))
        return self._action_queue.popleft()


def _build_network(config: PiStarRECAPConfig) -> PiStarRECAPNetwork:
    network = PiStarRECAPNetwork(config)
    if config.dtype == "bfloat16":  # the backbone; the small projections stay in float32
        network.paligemma_with_expert.to(torch.bfloat16)
    return network


# Prompt fields added after checkpoints were saved: such a checkpoint was trained with both set.
PROMPT_FIELDS = ("state_in_prompt", "indicator_in_prompt")


def _keep_older_prompt(config: PreTrainedConfig, path: str | Path) -> None:
    """A checkpoint whose config.json predates PROMPT_FIELDS gets the prompt it was trained on, not
    the preset's newer, shorter one (which would feed its weights inputs they never saw)."""
    saved = Path(path) / "config.json"
    if not isinstance(config, PiStarRECAPConfig) or not saved.is_file():
        return
    fields = json.loads(saved.read_text())
    for name in PROMPT_FIELDS:
        if name not in fields:
            setattr(config, name, True)


def _network_keys(config: PiStarRECAPConfig) -> list[str]:
    """The policy's state-dict keys, from a network built on the meta device (no memory, no init)."""
    with torch.device("meta"):
        return [f"model.{key}" for key in _build_network(config).state_dict()]
