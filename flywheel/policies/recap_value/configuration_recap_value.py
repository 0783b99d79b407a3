"""Configuration of the RECAP value function V(observation, task) (LeRobot policy type `recap_value`)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, NormalizationMode
from lerobot.optim.optimizers import AdamWConfig

STATE_KEY = "observation.state"
# Labels written by `flywheel label` are observation.* features so that they survive LeRobot's
# collate; they are outputs of this model, never its inputs.
LABEL_KEYS = ("observation.advantage_positive", "observation.value", "observation.advantage")


@dataclass
class VLMSettings:
    """The `vlm` preset: SigLIP vision tower + a small Gemma LM (stock transformers 5).

    With `vision_path` / `language_path` the pre-trained weights are loaded from local
    directories (`save_pretrained` layout, e.g. google/siglip-base-patch16-224 and a Gemma
    checkpoint); without them the sizes below build a randomly initialized model (tests).
    """

    vision_path: str | None = None
    language_path: str | None = None
    tokenizer_path: str | None = None  # defaults to language_path; a byte-level fallback without it
    image_size: int = 224
    vision_hidden: int = 64
    vision_layers: int = 2
    vision_heads: int = 2
    patch_size: int = 16
    lm_hidden: int = 64
    lm_layers: int = 2
    lm_heads: int = 2
    lm_head_dim: int = 32
    lm_vocab: int = 512
    max_text_tokens: int = 32
    dtype: str = "float32"  # `torch_dtype` before transformers 5 renamed it


@PreTrainedConfig.register_subclass("recap_value")
@dataclass
class RecapValueConfig(PreTrainedConfig):
    """Distributional value: logits over `num_bins` bins of the normalized return in [-1, 0]."""

    preset: str = "tiny"  # tiny | vlm
    num_bins: int = 201
    # tiny preset
    hidden_dim: int = 256
    num_layers: int = 3
    task_buckets: int = 64  # tasks are hashed into this many learned embeddings
    task_dim: int = 32
    cnn_channels: int = 16  # small CNN per camera, used only when the dataset has images
    dropout: float = 0.0
    vlm: VLMSettings = field(default_factory=VLMSettings)

    push_to_hub: bool = False  # LeRobot's default (True) needs a repo id; value models stay local
    optimizer_lr: float = 3e-4
    optimizer_weight_decay: float = 1e-4

    normalization_mapping: dict[str, NormalizationMode] = field(
        default_factory=lambda: {
            "STATE": NormalizationMode.MEAN_STD,
            "VISUAL": NormalizationMode.IDENTITY,
            "ACTION": NormalizationMode.IDENTITY,
        }
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.preset not in ("tiny", "vlm"):
            raise ValueError(f"recap_value.preset: {self.preset!r} is not tiny or vlm")
        if self.num_bins < 2:
            raise ValueError("recap_value.num_bins: needs at least 2 bins")

    @property
    def observation_delta_indices(self) -> None:
        return None

    @property
    def action_delta_indices(self) -> None:
        return None

    @property
    def reward_delta_indices(self) -> None:
        return None

    def get_optimizer_preset(self) -> AdamWConfig:
        return AdamWConfig(lr=self.optimizer_lr, weight_decay=self.optimizer_weight_decay)

    def get_scheduler_preset(self) -> None:
        return None

    def validate_features(self) -> None:
        # Keep the state and cameras only: label columns and other observation.* extras are not inputs.
        self.input_features = {
            key: ft
            for key, ft in self.input_features.items()
            if key == STATE_KEY or ft.type is FeatureType.VISUAL
        }
        if STATE_KEY not in self.input_features:
            raise ValueError(f"recap_value: input feature {STATE_KEY} is required")
