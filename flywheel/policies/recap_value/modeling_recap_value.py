"""RECAP value function V(observation, task) as a LeRobot policy (`recap_value`).

It predicts a categorical distribution over the normalized return (bins in [-1, 0]) and is
trained with cross-entropy against the Monte-Carlo return of each frame (π*0.6). It selects no
actions: it is a policy type only so that LeRobot can save, load and process it like one.

Inputs (already normalized by the preprocessor): `observation.state`, optional cameras
`observation.images.*` (floats in [0, 1]), and `task` (list of strings).
Training target: batch key `value_target` (normalized return), given by `flywheel label`'s loop;
stock `lerobot-train` does not carry it (see docs/recap.md).
"""

from __future__ import annotations

import zlib

import torch
from lerobot.policies.pretrained import PreTrainedPolicy
from torch import Tensor, nn

from flywheel.policies.recap_value.configuration_recap_value import STATE_KEY, RecapValueConfig
from flywheel.policies.recap_value.distributional import cross_entropy, expected_value

TARGET_KEY = "value_target"


class SmallCNN(nn.Module):
    """A per-camera image encoder for the tiny preset (images are small, e.g. 96x96)."""

    def __init__(self, channels: int, out_dim: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, channels, 5, stride=2, padding=2),
            nn.GELU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(2 * channels, 2 * channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(2 * channels, out_dim),
        )

    def forward(self, image: Tensor) -> Tensor:
        return self.net(image.float())


class TinyTrunk(nn.Module):
    """MLP over [state, hashed task embedding, CNN features per camera]."""

    def __init__(self, config: RecapValueConfig, state_dim: int, num_cameras: int):
        super().__init__()
        self.task_embedding = nn.Embedding(config.task_buckets, config.task_dim)
        self.cnns = nn.ModuleList(SmallCNN(config.cnn_channels, 64) for _ in range(num_cameras))
        layers: list[nn.Module] = []
        width = state_dim + config.task_dim + 64 * num_cameras
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_dim), nn.LayerNorm(config.hidden_dim), nn.GELU()]
            if config.dropout:
                layers.append(nn.Dropout(config.dropout))
            width = config.hidden_dim
        self.mlp = nn.Sequential(*layers)
        self.out_dim = width
        self.buckets = config.task_buckets

    def forward(self, state: Tensor, images: list[Tensor], tasks: list[str]) -> Tensor:
        # A stable hash (not Python's salted hash()) so a saved model maps tasks the same way.
        ids = torch.tensor([zlib.crc32(t.encode()) % self.buckets for t in tasks], device=state.device)
        features = [state, self.task_embedding(ids)] + [
            cnn(img) for cnn, img in zip(self.cnns, images, strict=True)
        ]
        return self.mlp(torch.cat(features, dim=-1))


class RecapValuePolicy(PreTrainedPolicy):
    config_class = RecapValueConfig
    name = "recap_value"

    def __init__(self, config: RecapValueConfig, **kwargs):
        super().__init__(config)
        config.validate_features()
        self.config = config
        self.camera_keys = sorted(k for k in config.input_features if k != STATE_KEY)
        state_dim = config.input_features[STATE_KEY].shape[0]
        if config.preset == "vlm":
            from flywheel.policies.recap_value.vlm_backbone import VLMTrunk  # transformers only when asked

            self.trunk: nn.Module = VLMTrunk(config.vlm, state_dim, len(self.camera_keys))
        else:
            self.trunk = TinyTrunk(config, state_dim, len(self.camera_keys))
        self.head = nn.Linear(self.trunk.out_dim, config.num_bins)

    def logits(self, batch: dict) -> Tensor:
        state = batch[STATE_KEY].float()
        tasks = batch.get("task") or [""] * len(state)
        if isinstance(tasks, str):
            tasks = [tasks] * len(state)
        images = [batch[key] for key in self.camera_keys]
        return self.head(self.trunk(state, images, list(tasks)))

    @torch.no_grad()
    def predict_value(self, batch: dict) -> Tensor:
        """Expected normalized return per sample, shape (B,)."""
        return expected_value(self.logits(batch))

    def forward(self, batch: dict) -> tuple[Tensor, dict]:
        logits = self.logits(batch)
        loss = cross_entropy(logits, batch[TARGET_KEY].float().reshape(-1))
        with torch.no_grad():
            error = (expected_value(logits) - batch[TARGET_KEY].float().reshape(-1)).abs().mean()
        return loss, {"value_ce": loss.item(), "value_mae": error.item()}

    def get_optim_params(self) -> dict:
        return self.parameters()

    def reset(self) -> None:
        pass

    def predict_action_chunk(self, batch: dict, **kwargs) -> Tensor:
        raise NotImplementedError("recap_value is a value function; it does not act")

    def select_action(self, batch: dict, **kwargs) -> Tensor:
        raise NotImplementedError("recap_value is a value function; it does not act")
