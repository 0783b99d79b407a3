"""Fit the distributional value on Monte-Carlo returns, and run it over every frame in batches.

Cross-fitting: with K > 1 folds of episodes, each episode's values come from the model that did
not train on it, so V(o_t) is not fitted to that episode's own return (which would pull its
advantage towards 0 and blur the labels).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from tqdm import tqdm

from flywheel.policies.recap_value import (
    RecapValueConfig,
    RecapValuePolicy,
    make_recap_value_pre_post_processors,
)
from flywheel.policies.recap_value.modeling_recap_value import TARGET_KEY
from flywheel.recap.source import STATE, Source

log = logging.getLogger(__name__)


@dataclass
class FitSettings:
    steps: int = 1500
    batch_size: int = 256
    lr: float = 1e-3
    seed: int = 0
    infer_batch_size: int = 2048


@dataclass
class FittedValue:
    policy: RecapValuePolicy
    preprocessor: object
    losses: list[float]


def dataset_stats(source: Source) -> dict[str, dict[str, torch.Tensor]]:
    stats = json.loads((source.root / "meta" / "stats.json").read_text())
    return {STATE: {k: torch.tensor(v, dtype=torch.float32) for k, v in stats[STATE].items()}}


def new_value_model(source: Source, config: RecapValueConfig | None = None) -> FittedValue:
    config = config or RecapValueConfig()
    config.input_features = {STATE: PolicyFeature(FeatureType.STATE, (source.frames.state.shape[1],))}
    for key, images in source.frames.images.items():
        config.input_features[key] = PolicyFeature(FeatureType.VISUAL, tuple(images.shape[1:]))
    config.device = config.device or "cpu"
    policy = RecapValuePolicy(config)
    preprocessor, _ = make_recap_value_pre_post_processors(config, dataset_stats(source))
    return FittedValue(policy, preprocessor, [])


def load_value_model(path: Path) -> FittedValue:
    """A value model saved by `save_value_model` (or any `recap_value` checkpoint directory)."""
    from lerobot.processor import PolicyProcessorPipeline

    policy = RecapValuePolicy.from_pretrained(str(path))
    preprocessor = PolicyProcessorPipeline.from_pretrained(str(path), "policy_preprocessor.json")
    return FittedValue(policy, preprocessor, [])


def save_value_model(fitted: FittedValue, path: Path) -> None:
    fitted.policy.save_pretrained(path)
    fitted.preprocessor.save_pretrained(path)


def preprocess_all(fitted: FittedValue, source: Source, chunk: int = 8192) -> torch.Tensor:
    """The preprocessor (normalization) applied once to every frame's state, in chunks: training
    then indexes this tensor instead of running the pipeline on each minibatch."""
    states = torch.from_numpy(source.frames.state)
    parts = [
        fitted.preprocessor({STATE: states[lo : lo + chunk]})[STATE] for lo in range(0, len(states), chunk)
    ]
    return torch.cat(parts)


def _batch(states: torch.Tensor, tasks: np.ndarray, idx: np.ndarray, source: Source) -> dict:
    batch = {STATE: states[idx], "task": list(tasks[idx])}
    # Cameras are kept as uint8 (4x smaller) and scaled to [0, 1] per batch, as LeRobot loads them.
    for key, images in source.frames.images.items():
        batch[key] = torch.from_numpy(images[idx]).float() / 255.0
    return batch


def fit(
    fitted: FittedValue,
    source: Source,
    targets: np.ndarray,
    frames: np.ndarray,
    settings: FitSettings,
    desc: str = "value",
) -> FittedValue:
    """Cross-entropy on the two-hot Monte-Carlo return, minibatches drawn from `frames`."""
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    tasks = source.task_of_frames()
    states = preprocess_all(fitted, source)
    policy = fitted.policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=settings.lr, weight_decay=1e-4)
    for _ in tqdm(range(settings.steps), desc=f"train {desc}", unit="step", leave=False):
        idx = rng.choice(frames, size=min(settings.batch_size, len(frames)))
        batch = _batch(states, tasks, idx, source)
        batch[TARGET_KEY] = torch.from_numpy(targets[idx]).float()
        loss, _ = policy.forward(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        fitted.losses.append(loss.item())
    policy.eval()
    return fitted


def predict(fitted: FittedValue, source: Source, frames: np.ndarray, batch_size: int) -> np.ndarray:
    """V(o) for the given frames, `batch_size` frames per forward pass."""
    tasks = source.task_of_frames()
    states = preprocess_all(fitted, source)
    out = np.empty(len(frames), dtype=np.float32)
    fitted.policy.eval()
    for lo in tqdm(range(0, len(frames), batch_size), desc="value inference", unit="batch", leave=False):
        idx = frames[lo : lo + batch_size]
        out[lo : lo + len(idx)] = fitted.policy.predict_value(_batch(states, tasks, idx, source)).numpy()
    return out


def episode_folds(num_episodes: int, folds: int, seed: int) -> np.ndarray:
    """Fold id per episode, balanced, in a seeded random order."""
    order = np.random.default_rng(seed).permutation(num_episodes)
    fold = np.empty(num_episodes, dtype=np.int64)
    fold[order] = np.arange(num_episodes) % folds
    return fold


def cross_fit_values(
    source: Source,
    targets: np.ndarray,
    folds: int,
    settings: FitSettings,
    config: RecapValueConfig | None = None,
) -> tuple[np.ndarray, FittedValue]:
    """Values for every frame; with folds > 1 each from the model that did not see its episode.

    Also returns the model to save with the labels: the one trained on all episodes, or with
    folds > 1 the first fold's model ((K-1)/K of the episodes; a K+1-th fit would cost as much
    again for a model the labels do not use)."""
    all_frames = np.arange(len(source.frames))
    if folds > len(source.episodes):
        # Every fold needs an episode to hold out and the rest to train on.
        log.warning(
            "value.cross_fit_folds=%d > %d episodes: using %d",
            folds,
            len(source.episodes),
            len(source.episodes),
        )
        folds = len(source.episodes)
    if folds <= 1:
        full = fit(new_value_model(source, config), source, targets, all_frames, settings, "value")
        return predict(full, source, all_frames, settings.infer_batch_size), full
    fold_of_frame = episode_folds(len(source.episodes), folds, settings.seed)[source.frames.episode]
    values = np.empty(len(all_frames), dtype=np.float32)
    models = []
    for k in range(folds):
        held_out = all_frames[fold_of_frame == k]
        model = fit(
            new_value_model(source, config),
            source,
            targets,
            all_frames[fold_of_frame != k],
            settings,
            f"value fold {k + 1}/{folds}",
        )
        values[held_out] = predict(model, source, held_out, settings.infer_batch_size)
        models.append(model)
    return values, models[0]
