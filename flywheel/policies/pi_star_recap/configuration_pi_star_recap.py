"""Configuration of the pi_star_recap policy (pi0.5 architecture + RECAP advantage conditioning).

Field names of the seed's integration document are kept verbatim (vlm_model_name, iql_*, *_weight,
balance_data_types, freeze_vlm, train_expert_only, q_lr, v_lr, policy_lr, gradient_checkpointing).
Architecture fields left at None are filled from `preset` (see presets.py), so a CLI user can pick a
preset and still override any single size.
"""

from dataclasses import dataclass

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode, PolicyFeature
from lerobot.optim.optimizers import AdamWConfig
from lerobot.optim.schedulers import CosineDecayWithWarmupSchedulerConfig
from lerobot.policies.rtc.configuration_rtc import RTCConfig
from lerobot.utils.constants import ACTION, OBS_STATE

from flywheel.policies.pi_star_recap.config_checks import check_config
from flywheel.policies.pi_star_recap.presets import PRESETS

# Batch keys that carry RECAP labels, not observations: they must never be normalized or fed as inputs.
LABEL_KEYS: tuple[str, ...] = (
    "advantage_positive",
    "observation.advantage_positive",
    "data_type_id",
    "observation.data_type_id",
)
ESTIMATORS: tuple[str, ...] = ("recap", "iql")
INDICATOR_CONDITIONING: tuple[str, ...] = ("prompt", "modulation", "time", "tokens")


@PreTrainedConfig.register_subclass("pi_star_recap")
@dataclass
class PiStarRECAPConfig(PreTrainedConfig):
    preset: str = "pi05"  # "pi05" | "tiny"

    # Where weights and the tokenizer come from (all local: no hub downloads at run time).
    vlm_model_name: str = "google/paligemma-3b-pt-224"  # name, or local dir of HF PaliGemma weights
    base_model_path: str | None = None  # local dir or file of LeRobot's pi05_base model.safetensors
    tokenizer_path: str | None = None  # local SentencePiece tokenizer dir; None -> byte tokenizer

    # Architecture (None -> preset value).
    vlm_width: int | None = None
    vlm_depth: int | None = None
    vlm_mlp_dim: int | None = None
    expert_width: int | None = None
    expert_depth: int | None = None
    expert_mlp_dim: int | None = None
    num_heads: int | None = None
    num_kv_heads: int | None = None
    head_dim: int | None = None
    vocab_size: int | None = None
    vision_width: int | None = None
    vision_depth: int | None = None
    vision_heads: int | None = None
    vision_mlp_dim: int | None = None
    vision_patch_size: int | None = None
    image_size: int | None = None
    dtype: str | None = None  # "bfloat16" | "float32"
    gradient_checkpointing: bool | None = None
    continuous_state_token: bool | None = None
    normalization: str | None = None  # NormalizationMode name for state and action
    normalization_mapping: dict[str, NormalizationMode] | None = None

    # Flow matching over action chunks (pi0.5 / openpi values).
    n_obs_steps: int = 1
    chunk_size: int = 50
    n_action_steps: int = 50
    num_inference_steps: int = 10
    cuda_graphs: bool = True  # on a GPU, sampling (prefix + denoising) is a replayed CUDA graph
    max_state_dim: int = 32
    max_action_dim: int = 32
    tokenizer_max_length: int = 200
    time_sampling_beta_alpha: float = 1.5
    time_sampling_beta_beta: float = 1.0
    time_sampling_scale: float = 0.999
    time_sampling_offset: float = 0.001
    min_period: float = 4e-3
    max_period: float = 4.0

    # RECAP advantage conditioning.
    advantage_estimator: str = "recap"  # "recap" (labels from the value stage) | "iql" (heads in here)
    advantage_dropout: float = 0.3  # P(indicator dropped) per training sample -> unconditioned prompt
    cfg_scale: float = 1.0  # beta; > 1 turns on classifier-free guidance at inference
    # Real-time chunking at inference (arXiv 2506.07339, LeRobot's RTCProcessor): predict_action_chunk
    # given prev_chunk_left_over and inference_delay guides the new chunk toward the previous one's
    # remaining actions. None: off (lerobot-rollout --inference.type=rtc and the flywheel daemon with
    # policy.rtc=true set one). Works with CFG: the guidance applies to the CFG-mixed velocity.
    rtc_config: RTCConfig | None = None
    # How the indicator reaches the action expert (None -> preset): "prompt", only as prompt text (pi0.5,
    # the paper); "modulation", a learned embedding (dropped / negative / positive) added to every
    # adaptive norm's scale, shift and gate of the expert, zero-initialised (with indicator_in_prompt
    # a model starts as with "prompt"); "time", that embedding added to the time conditioning;
    # "tokens", to the action tokens.
    indicator_conditioning: str | None = None
    # What the prompt text carries. state_in_prompt (None -> preset): pi0.5's discretized state tokens;
    # the tiny preset reads the state from its continuous state token instead, and the 39 tokens it
    # saves are 40% of a training step. indicator_in_prompt (None -> indicator_conditioning == "prompt"):
    # the words "Advantage: positive"; the learned paths do not need them. Checkpoints saved before
    # these fields existed carry both (PiStarRECAPPolicy.from_pretrained restores that).
    state_in_prompt: bool | None = None
    indicator_in_prompt: bool | None = None

    # IQL variant (advantage_estimator="iql"). None -> 0.7, 0.5, 0.99, 0.005, 256, 100 under iql; under
    # recap a given value is warned about and cleared (config_checks.py: the seed passes the defaults).
    iql_expectile: float | None = None
    iql_temperature: float | None = None
    iql_discount: float | None = None
    iql_target_tau: float | None = None  # Polyak rate of the target Q heads, applied in update()
    iql_hidden_dim: int | None = None
    iql_max_weight: float | None = None

    # Per-sample loss weights by data type (batch key data_type_id: 0 demo, 1 auto, 2 intervention).
    demo_weight: float = 1.0
    auto_weight: float = 1.0
    intervention_weight: float = 2.0
    balance_data_types: bool = True

    # What trains.
    freeze_vlm: bool = False
    train_expert_only: bool = False

    # Optimizer: one AdamW, parameter groups with these learning rates.
    q_lr: float | None = None  # None -> 3e-4 under iql (the critics); recap has no critics
    v_lr: float | None = None
    policy_lr: float | None = None  # None -> preset (3e-5 for pi05, as in the seed)
    optimizer_betas: tuple[float, float] = (0.9, 0.95)
    optimizer_eps: float = 1e-8
    optimizer_weight_decay: float = 0.01
    optimizer_grad_clip_norm: float = 1.0
    scheduler_warmup_steps: int | None = None
    scheduler_decay_steps: int | None = None
    scheduler_decay_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in PRESETS:
            raise ValueError(f"Unknown preset {self.preset!r}; choose one of {sorted(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        if self.indicator_in_prompt is None:
            self.indicator_in_prompt = self.indicator_conditioning == "prompt"
        if self.normalization_mapping is None:
            mode = NormalizationMode(self.normalization)
            self.normalization_mapping = {
                "VISUAL": NormalizationMode.IDENTITY,
                "STATE": mode,
                "ACTION": mode,
            }
        self._validate()
        check_config(self)  # IQL-only fields under recap (and the reverse) say they do nothing

    def _validate(self) -> None:
        if self.advantage_estimator not in ESTIMATORS:
            raise ValueError(f"advantage_estimator must be one of {ESTIMATORS}")
        if self.n_action_steps > self.chunk_size:
            raise ValueError("n_action_steps cannot exceed chunk_size")
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be bfloat16 or float32, got {self.dtype}")
        if not 0.0 <= self.advantage_dropout <= 1.0:
            raise ValueError("advantage_dropout must lie in [0, 1]")
        if self.indicator_conditioning not in INDICATOR_CONDITIONING:
            raise ValueError(f"indicator_conditioning must be one of {INDICATOR_CONDITIONING}")
        if not self.state_in_prompt and not self.continuous_state_token:
            raise ValueError(
                "state_in_prompt: False needs continuous_state_token=True, or the policy never sees the state"
            )
        if self.indicator_conditioning == "prompt" and not self.indicator_in_prompt:
            raise ValueError(
                "indicator_in_prompt: False with indicator_conditioning='prompt' leaves the indicator no "
                "path into the policy"
            )
        if self.cfg_scale < 1.0:
            raise ValueError("cfg_scale below 1 would guide away from the positive policy")
        if self.num_heads % self.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads")

    def validate_features(self) -> None:
        # Labels arrive as observation.* columns (the only custom columns LeRobot's collate keeps); they
        # are targets of the loss, not inputs, so they must not be normalized or treated as state.
        for key in LABEL_KEYS:
            self.input_features.pop(key, None)
        if OBS_STATE not in self.input_features:
            self.input_features[OBS_STATE] = PolicyFeature(FeatureType.STATE, (self.max_state_dim,))
        if ACTION not in self.output_features:
            self.output_features[ACTION] = PolicyFeature(FeatureType.ACTION, (self.max_action_dim,))
        action_dim = self.output_features[ACTION].shape[0]
        if action_dim > self.max_action_dim:
            raise ValueError(f"action dim {action_dim} exceeds max_action_dim {self.max_action_dim}")

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(
            lr=self.policy_lr,
            betas=self.optimizer_betas,
            eps=self.optimizer_eps,
            weight_decay=self.optimizer_weight_decay,
            grad_clip_norm=self.optimizer_grad_clip_norm,
        )

    def get_scheduler_preset(self) -> CosineDecayWithWarmupSchedulerConfig:
        return CosineDecayWithWarmupSchedulerConfig(
            peak_lr=self.policy_lr,
            decay_lr=self.policy_lr * self.scheduler_decay_lr_ratio,
            num_warmup_steps=self.scheduler_warmup_steps,
            num_decay_steps=self.scheduler_decay_steps,
        )

    @property
    def observation_delta_indices(self) -> list[int] | None:
        # IQL needs V(s'): load the next frame beside the current one (the policy splits them).
        return [0, 1] if self.advantage_estimator == "iql" else None

    @property
    def action_delta_indices(self) -> list[int]:
        return list(range(self.chunk_size))

    @property
    def reward_delta_indices(self) -> None:
        return None

    @property
    def state_dim(self) -> int:
        return self.input_features[OBS_STATE].shape[0]

    @property
    def action_dim(self) -> int:
        return self.output_features[ACTION].shape[0]

    @property
    def data_type_weights(self) -> tuple[float, float, float]:
        return (self.demo_weight, self.auto_weight, self.intervention_weight)
