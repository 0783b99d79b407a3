"""Conditioning strength: how much a trained pi_star_recap policy uses its advantage indicator.

RECAP only works if "Advantage: positive" changes what the policy does. On labeled frames (held out
from training where possible) this measures, with the SAME noise and flow times for every
indicator (a paired comparison, so the differences are not drowned by the noise of the draws):

- the flow-matching loss with each frame's true indicator, with it flipped, and with it dropped;
  `loss_gap` = flipped - true: above zero when the model predicts the frames' actions better with
  their own label (on negative frames: negative fits better than positive; on positive frames the
  reverse; reported per group too);
- `action_difference`: the RMS difference (normalized action units) between the chunks sampled
  conditioned on positive and on negative, from the same noise.

A model that ignores its indicator has a gap and an action difference of about zero.

    from flywheel.policies.pi_star_recap.conditioning import dataset_conditioning_strength
    strength = dataset_conditioning_strength(checkpoint_dir, labeled_root, episodes=held_out)
    print(strength.line())

`conditioning_strength(policy, batches)` is the same on batches already through the policy's
preprocessor (the trainer's own loader, a test).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from flywheel.policies.pi_star_recap import batch_inputs as bi
from flywheel.policies.pi_star_recap.flow_matching import sample_time
from flywheel.policies.pi_star_recap.prompt import NEGATIVE, POSITIVE


@dataclass
class ConditioningStrength:
    frames: int
    positive_frames: int
    negative_frames: int
    draws: int  # noise / time draws per frame (each shared by every indicator)
    loss_true: float  # mean flow loss with each frame's own indicator
    loss_flipped: float  # ... with it flipped
    loss_dropped: float  # ... with it dropped (the unconditioned prompt)
    loss_gap: float  # loss_flipped - loss_true (> 0: the indicator is used the right way)
    loss_gap_negative: float | None  # on negative frames: loss(positive) - loss(negative)
    loss_gap_positive: float | None  # on positive frames: loss(negative) - loss(positive)
    action_difference: float | None  # RMS(a_positive - a_negative), normalized units, same noise
    action_difference_dropped: float | None  # RMS(a_positive - a_unconditioned)

    @property
    def relative_gap(self) -> float:
        """loss_gap as a fraction of loss_true."""
        return self.loss_gap / self.loss_true if self.loss_true else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "relative_gap": self.relative_gap}

    def line(self) -> str:
        def fmt(x: float | None) -> str:
            return "-" if x is None else f"{x:.4f}"

        return (
            f"conditioning on {self.frames} frames ({self.positive_frames} positive, {self.draws} draws): "
            f"loss true {self.loss_true:.4f}, flipped {self.loss_flipped:.4f}, "
            f"dropped {self.loss_dropped:.4f}, "
            f"gap {self.loss_gap:+.4f} ({100 * self.relative_gap:+.1f}%; negative frames "
            f"{fmt(self.loss_gap_negative)}, positive frames {fmt(self.loss_gap_positive)}); "
            f"action difference positive vs negative {fmt(self.action_difference)}, "
            f"vs unconditioned {fmt(self.action_difference_dropped)}"
        )


def conditioning_strength(
    policy, batches: Iterable[dict], draws: int = 4, seed: int = 0, sample_actions: bool = True
) -> ConditioningStrength:
    """The conditioning strength of `policy` (a PiStarRECAPPolicy) on preprocessed labeled batches.

    Each batch's indicator is read as in training (`advantage_positive`, then
    `observation.advantage_positive`); a batch without labels counts as all positive.
    """
    if policy.config.advantage_estimator != "recap":
        raise ValueError("conditioning_strength: the policy has no advantage indicator (advantage_estimator)")
    was_training = policy.training
    policy.eval()
    losses = {"true": [], "flipped": [], "dropped": [], "positive": [], "negative": []}
    labels, diffs, diffs_dropped = [], [], []
    try:
        with torch.no_grad():
            for index, batch in enumerate(batches):
                positive = bi.advantage_labels(batch, _batch_size(batch), bi.has_time_axis(batch))
                labels.append(positive)
                per_cond = _paired_losses(policy, batch, positive, draws, seed + 1000 * index)
                for name, value in per_cond.items():
                    losses[name].append(value)
                if sample_actions:
                    d, dd = _action_differences(policy, batch, seed + 1000 * index)
                    diffs.append(d)
                    diffs_dropped.append(dd)
    finally:
        policy.train(was_training)
    if not labels:
        raise ValueError("conditioning_strength: no batches")
    pos = torch.cat(labels)
    cat = {name: torch.cat(values) for name, values in losses.items()}
    neg = ~pos

    def group_gap(mask: Tensor, worse: str, better: str) -> float | None:
        return float((cat[worse][mask] - cat[better][mask]).mean()) if mask.any() else None

    return ConditioningStrength(
        frames=len(pos),
        positive_frames=int(pos.sum()),
        negative_frames=int(neg.sum()),
        draws=draws,
        loss_true=float(cat["true"].mean()),
        loss_flipped=float(cat["flipped"].mean()),
        loss_dropped=float(cat["dropped"].mean()),
        loss_gap=float((cat["flipped"] - cat["true"]).mean()),
        loss_gap_negative=group_gap(neg, "positive", "negative"),
        loss_gap_positive=group_gap(pos, "negative", "positive"),
        action_difference=float(torch.cat(diffs).mean()) if diffs else None,
        action_difference_dropped=float(torch.cat(diffs_dropped).mean()) if diffs_dropped else None,
    )


def dataset_conditioning_strength(
    policy_or_path,
    dataset_root: str | Path,
    repo_id: str = "local/flywheel",
    episodes: Sequence[int] | None = None,
    max_frames: int = 512,
    batch_size: int = 64,
    draws: int = 4,
    seed: int = 0,
    sample_actions: bool = True,
    preprocessor=None,
) -> ConditioningStrength:
    """The conditioning strength on a labeled LeRobotDataset (flywheel label's output).

    `policy_or_path`: a pretrained_model folder (policy and processors), or a PiStarRECAPPolicy
    with its `preprocessor`. Frames come from `episodes` (give the held-out ones; None: all),
    at most `max_frames`, half positive and half negative where the labels allow.
    """
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors

    from flywheel.policies.pi_star_recap.modeling_pi_star_recap import PiStarRECAPPolicy

    if isinstance(policy_or_path, (str, Path)):
        policy = PiStarRECAPPolicy.from_pretrained(policy_or_path)
        preprocessor, _ = make_pre_post_processors(policy.config, pretrained_path=str(policy_or_path))
    elif preprocessor is None:
        raise ValueError("dataset_conditioning_strength: a policy object needs its preprocessor")
    else:
        policy = policy_or_path
    meta = LeRobotDatasetMetadata(repo_id, root=dataset_root)
    dataset = LeRobotDataset(
        repo_id,
        root=dataset_root,
        episodes=list(episodes) if episodes is not None else None,
        delta_timestamps=resolve_delta_timestamps(policy.config, meta),
    )
    picked = pick_frames(_dataset_labels(dataset), max_frames, seed)
    batches = (
        preprocessor(torch.utils.data.default_collate([dataset[int(i)] for i in picked[s : s + batch_size]]))
        for s in range(0, len(picked), batch_size)
    )
    return conditioning_strength(policy, batches, draws=draws, seed=seed, sample_actions=sample_actions)


def pick_frames(positive: np.ndarray, max_frames: int, seed: int) -> np.ndarray:
    """Up to max_frames indices, half positive and half negative where there are enough of each."""
    rng = np.random.default_rng(seed)
    pos, neg = np.flatnonzero(positive), np.flatnonzero(~positive)
    n_pos = min(len(pos), max(max_frames // 2, max_frames - len(neg)))
    n_neg = min(len(neg), max_frames - n_pos)
    picked = [rng.choice(pos, n_pos, replace=False), rng.choice(neg, n_neg, replace=False)]
    return np.sort(np.concatenate(picked))


def _dataset_labels(dataset) -> np.ndarray:
    columns = dataset.hf_dataset.column_names
    for key in bi.ADVANTAGE_KEYS:
        if key in columns:
            values = np.asarray(dataset.hf_dataset[key], dtype=np.float64).reshape(len(dataset), -1)[:, 0]
            return values > 0.5
    raise ValueError(f"dataset_conditioning_strength: no advantage labels ({' or '.join(bi.ADVANTAGE_KEYS)})")


def _batch_size(batch: dict) -> int:
    return bi.frame(batch["observation.state"], 0, bi.has_time_axis(batch)).shape[0]


def _paired_losses(policy, batch: dict, positive: Tensor, draws: int, seed: int) -> dict[str, Tensor]:
    """Per-frame flow loss (mean over draws) under each indicator, every indicator with the same
    noise and times."""
    cfg = policy.config
    actions = policy._padded_actions(batch)
    bsize = actions.shape[0]
    true = [POSITIVE if p else NEGATIVE for p in positive.tolist()]
    indicators = {
        "true": true,
        "flipped": [NEGATIVE if w == POSITIVE else POSITIVE for w in true],
        "dropped": [None] * bsize,
        "positive": [POSITIVE] * bsize,
        "negative": [NEGATIVE] * bsize,
    }
    inputs = {name: policy._prefix_inputs(batch, words) for name, words in indicators.items()}
    sums = {name: torch.zeros(bsize) for name in indicators}
    for draw in range(draws):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed * 7919 + draw)
            noise = torch.randn(actions.shape).to(actions.device)
            t = sample_time(
                bsize,
                cfg.time_sampling_beta_alpha,
                cfg.time_sampling_beta_beta,
                cfg.time_sampling_scale,
                cfg.time_sampling_offset,
                actions.device,
            )
        for name, inp in inputs.items():
            errors = policy.model.flow_loss(inp, actions, noise=noise, t=t)
            sums[name] += policy._masked_mean(errors[..., : cfg.action_dim], batch).float().cpu()
    return {name: total / draws for name, total in sums.items()}


def _action_differences(policy, batch: dict, seed: int) -> tuple[Tensor, Tensor]:
    """Per frame: RMS difference between the chunks sampled under positive and negative, and under
    positive and dropped, from the same noise (normalized action units)."""
    cfg = policy.config
    bsize = _batch_size(batch)
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(bsize, cfg.chunk_size, cfg.max_action_dim, generator=generator)
    device = next(policy.model.parameters()).device
    chunks = {
        name: policy.model.sample(policy._prefix_inputs(batch, [word] * bsize), noise.to(device))[
            ..., : cfg.action_dim
        ].float()
        for name, word in (("positive", POSITIVE), ("negative", NEGATIVE), ("dropped", None))
    }

    def rms(a: Tensor, b: Tensor) -> Tensor:
        return (a - b).pow(2).mean(dim=(1, 2)).sqrt().cpu()

    return rms(chunks["positive"], chunks["negative"]), rms(chunks["positive"], chunks["dropped"])


def report_conditioning(
    pretrained: str | Path,
    labeled_root: str | Path,
    episodes: Sequence[int] | None,
    out_json: str | Path | None = None,
    context: dict | None = None,
    **kwargs,
) -> ConditioningStrength | None:
    """For the trainer, `flywheel label`'s report and the demo: the conditioning strength of a trained
    checkpoint on the held-out `episodes` of a labeled dataset, logged and written to `out_json`.
    None (and nothing written) when the checkpoint is not a recap-conditioned pi_star_recap or the
    dataset has no labels; a failure of the measurement is logged, never raised (it is a report)."""
    import json
    import logging

    log = logging.getLogger(__name__)
    try:
        config = json.loads((Path(pretrained) / "config.json").read_text())
        if config.get("type") != "pi_star_recap" or config.get("advantage_estimator", "recap") != "recap":
            return None
        strength = dataset_conditioning_strength(pretrained, labeled_root, episodes=episodes, **kwargs)
    except Exception as exc:  # a diagnostic must not stop the training loop
        log.warning("conditioning strength not measured: %s", exc)
        return None
    log.info("%s", strength.line())
    if out_json is not None:  # `context`: what the caller wants on record beside it (which frames)
        Path(out_json).write_text(json.dumps({**(context or {}), **strength.as_dict()}, indent=1))
    return strength
