"""Train a LeRobot policy on a (labeled) flywheel dataset, through HuggingFace accelerate.

One loop, readable top to bottom: the same code runs on one CPU, one GPU, or many GPUs and nodes
(`accelerate launch -m trainer.train_policy ...`). Why not stock lerobot-train: the flywheel needs
its own sampler (data-type weights), TensorBoard besides WandB, and an in-process call the trainer
and the demo can make without paying a process start per iteration. Stock lerobot-train works on
the same datasets and policies too (docs/recap.md).

Several processes (`accelerate launch --multi_gpu --num_processes N`, or the trainer's `launch`
option, trainer/launch.py; on CPUs too, with gloo): `batch_size` is the GLOBAL batch of one optimizer
step, split evenly across the N processes (accelerate's split_batches: each takes its batch_size / N
slice of the same sampled batch), so one step sees the same samples under any N, and a batch_size
not divisible by N is refused. The sampler draws from its own generator (seeded by `seed`, the same
in every process), so the global batches do not depend on N either; the policy's own draws (flow
noise and times, indicator dropout) come from torch's generator seeded `seed + process index`, so
no two processes draw the same noise. Gradients are averaged across processes (DDP), which with equal
slices is the gradient of the global batch's mean loss; the logged loss is that mean too. The main
process alone logs, writes step.json and the pretrained_model folder; every process saves its part
of the accelerate state (its RNG state) into the checkpoint.

Checkpoints: <out>/checkpoints/last (accelerate state + step) every `save_every` steps; `resume`
continues from there (the sampler restarts an epoch from a generator seeded by `seed` and the step).
The result is a LeRobot pretrained_model folder: <out>/pretrained_model.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import draccus
import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration, DistributedDataParallelKwargs
from accelerate.utils import set_seed
from lerobot.configs.policies import PreTrainedConfig
from lerobot.datasets.factory import resolve_delta_timestamps
from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
from lerobot.policies.factory import get_policy_class, make_policy, make_pre_post_processors
from lerobot.utils.import_utils import register_third_party_plugins
from tqdm import tqdm

from trainer.frames_in_memory import FramesInMemory, already_batched, supports

log = logging.getLogger(__name__)


@dataclass
class TrainPolicyConfig:
    # The (labeled) dataset to train on.
    dataset_root: Path = Path("outputs/datasets/labeled")
    repo_id: str = "local/flywheel"
    # Start from this pretrained_model folder (warm start, or the base checkpoint) ...
    init_from: Path | None = None
    # ... or build a new policy of this type and preset (e.g. pi_star_recap / tiny).
    policy_type: str = "pi_star_recap"
    policy_preset: str | None = "tiny"
    output_dir: Path = Path("outputs/train/policy")
    steps: int = 1000
    # The global batch of one optimizer step; under N processes each takes batch_size / N of it.
    batch_size: int = 32
    num_workers: int = 0
    seed: int = 0
    device: str | None = None  # None: accelerate picks (cuda when there is one)
    save_every: int = 500
    log_every: int = 50
    resume: bool = False
    # Experiment trackers for accelerate: tensorboard, wandb (WANDB_MODE=offline works without a network).
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    # Per-frame sampling weights (a .npy of length num_frames); None: uniform shuffling.
    sample_weights: Path | None = None
    # Serve state-only datasets from memory (trainer/frames_in_memory.py); False: LeRobotDataset per
    # row, for comparison (the `training` benchmark times both).
    frames_in_memory: bool = True


def train_policy(cfg: TrainPolicyConfig) -> Path:
    check_output_dir(cfg)
    register_third_party_plugins()
    accelerator = Accelerator(
        log_with=cfg.trackers or None,
        project_dir=str(cfg.output_dir),
        cpu=cfg.device == "cpu",
        # batch_size is the global batch: each process takes its slice of the one sampled batch.
        dataloader_config=DataLoaderConfiguration(split_batches=True),
        # Not every parameter gets a gradient every step (e.g. the indicator embedding when a slice's
        # indicators are all dropped, value heads the estimator does not train): DDP must look.
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)],
    )
    check_batch_size(cfg.batch_size, accelerator.num_processes)
    set_seed(cfg.seed)  # the same initial weights in every process (DDP also broadcasts rank 0's)
    policy, dataset, preprocessor, postprocessor = _build(cfg, accelerator.device)
    loader, sampler_rng = _loader(cfg, dataset)
    optimizer = policy.config.get_optimizer_preset().build(policy.get_optim_params())
    scheduler_preset = policy.config.get_scheduler_preset()
    scheduler = scheduler_preset.build(optimizer, cfg.steps) if scheduler_preset else None
    grad_clip = getattr(policy.config.get_optimizer_preset(), "grad_clip_norm", 10.0)
    policy, optimizer, loader = accelerator.prepare(policy, optimizer, loader)
    if scheduler is not None:
        accelerator.register_for_checkpointing(scheduler)
    if accelerator.num_processes > 1:
        # The policy's draws (noise, flow times, indicator dropout): a stream of each process's own.
        set_seed(cfg.seed, device_specific=True)
    if accelerator.is_main_process:
        accelerator.init_trackers(
            "flywheel",
            config={
                "steps": cfg.steps,
                "batch_size": cfg.batch_size,
                "num_processes": accelerator.num_processes,
            },
        )

    step = _resume(cfg, accelerator) if cfg.resume else 0
    if step:
        sampler_rng.manual_seed(_sampler_seed(cfg.seed, step))
    batches = _forever(loader)
    progress = tqdm(
        total=cfg.steps, initial=step, desc="train policy", disable=not accelerator.is_main_process
    )
    while step < cfg.steps:
        batch = preprocessor(next(batches))
        policy.train()
        with accelerator.autocast():
            loss, info = policy(batch)
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(policy.parameters(), grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        unwrapped = accelerator.unwrap_model(policy)
        if hasattr(unwrapped, "update"):  # the seed's policy API: called after each optimizer step
            unwrapped.update()
        step += 1
        progress.update(1)
        if step % cfg.log_every == 0 or step == cfg.steps:
            metrics = _mean_over_processes(accelerator, {"loss": loss.detach(), **(info or {})})
            accelerator.log(metrics, step=step)
            progress.set_postfix(loss=f"{metrics['loss']:.4f}")
        if step % cfg.save_every == 0 or step == cfg.steps:
            _checkpoint(cfg, accelerator, step)
    progress.close()
    out = cfg.output_dir / "pretrained_model"
    if accelerator.is_main_process:
        accelerator.unwrap_model(policy).save_pretrained(out)
        preprocessor.save_pretrained(out)
        postprocessor.save_pretrained(out)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return out


def check_batch_size(batch_size: int, num_processes: int) -> None:
    """batch_size is the global batch, split evenly across the processes."""
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    if batch_size % num_processes:
        raise ValueError(
            f"batch_size: {batch_size} is the global batch, split evenly across {num_processes} "
            f"processes; give a multiple of {num_processes}"
        )


def _mean_over_processes(accelerator: Accelerator, metrics: dict) -> dict[str, float]:
    """Each process's metrics (its slice's means), averaged over the processes: with equal slices, the
    global batch's. A collective: every process calls it."""
    names = list(metrics)
    values = torch.tensor([float(metrics[n]) for n in names], device=accelerator.device)
    values = accelerator.reduce(values, reduction="mean") if accelerator.num_processes > 1 else values
    return dict(zip(names, values.tolist(), strict=True))


def check_output_dir(cfg: TrainPolicyConfig) -> None:
    """Training writes output_dir/checkpoints/last and output_dir/pretrained_model over whatever is
    there: refuse a folder inside the dataset, and an earlier run's results unless resuming them."""
    out, data = Path(cfg.output_dir).resolve(), Path(cfg.dataset_root).resolve()
    if out == data or data in out.parents:
        raise ValueError(
            f"output_dir: {cfg.output_dir} must not be the dataset ({cfg.dataset_root}) or inside it"
        )
    if cfg.resume:
        return  # the same command's own earlier output, continued
    for name in ("pretrained_model", "checkpoints"):
        if (Path(cfg.output_dir) / name).exists():
            raise FileExistsError(
                f"output_dir: {cfg.output_dir} already holds a training run ({name}); "
                "give a new output_dir, or --resume=true to continue it"
            )


def _build(cfg: TrainPolicyConfig, device: torch.device):
    meta = LeRobotDatasetMetadata(cfg.repo_id, root=cfg.dataset_root)
    if cfg.init_from is not None:
        policy_cfg = PreTrainedConfig.from_pretrained(cfg.init_from)
        policy_cfg.device = device.type
        policy = get_policy_class(policy_cfg.type).from_pretrained(cfg.init_from, config=policy_cfg)
        # Keep the parent's normalization: the same inputs mean the same thing to the warm-started weights.
        pre, post = make_pre_post_processors(
            policy_cfg,
            pretrained_path=str(cfg.init_from),
            preprocessor_overrides={"device_processor": {"device": device.type}},
        )
    else:
        preset = {} if cfg.policy_preset is None else {"preset": cfg.policy_preset}
        policy_cfg = PreTrainedConfig.get_choice_class(cfg.policy_type)(device=device.type, **preset)
        policy = make_policy(policy_cfg, ds_meta=meta)
        pre, post = make_pre_post_processors(policy_cfg, dataset_stats=meta.stats)
    delta = resolve_delta_timestamps(policy.config, meta)
    dataset = LeRobotDataset(cfg.repo_id, root=cfg.dataset_root, delta_timestamps=delta)
    # State-only: the same items from tensors, without HF datasets' per-row cost.
    if cfg.frames_in_memory and supports(dataset):
        dataset = FramesInMemory(dataset)
    return policy, dataset, pre, post


def _loader(
    cfg: TrainPolicyConfig, dataset: LeRobotDataset | FramesInMemory
) -> tuple[torch.utils.data.DataLoader, torch.Generator]:
    """The loader of global batches, and the generator its sampler draws from: its own, seeded by
    `seed`, the same in every process, so the batches are the same under any number of processes
    (accelerate keeps the processes' copies in step and gives each its slice of every batch)."""
    generator = torch.Generator().manual_seed(_sampler_seed(cfg.seed, 0))
    sampler = None
    if cfg.sample_weights is not None:
        sampler = weighted_sampler(np.load(cfg.sample_weights), len(dataset), generator)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=sampler is None,
        sampler=sampler,
        generator=generator,
        num_workers=cfg.num_workers,
        drop_last=len(dataset) > cfg.batch_size,
        # FramesInMemory.__getitems__ returns the batch itself; None: torch's default collate.
        collate_fn=already_batched if isinstance(dataset, FramesInMemory) else None,
    )
    return loader, generator


def _sampler_seed(seed: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def weighted_sampler(
    weights: np.ndarray, num_frames: int, generator: torch.Generator | None = None
) -> torch.utils.data.WeightedRandomSampler:
    """The one sampler of weighted training: num_frames draws per epoch, with replacement, P(frame) ∝
    its weight (flywheel.recap.sampler.frame_weights, or the positive-share weights), from `generator`
    (train_policy's: its own, the same in every process; None: torch's global one)."""
    if len(weights) != num_frames:
        raise ValueError(f"sample_weights: {len(weights)} weights for {num_frames} frames")
    return torch.utils.data.WeightedRandomSampler(
        torch.as_tensor(weights, dtype=torch.double),
        num_samples=num_frames,
        replacement=True,
        generator=generator,
    )


def _forever(loader):
    while True:
        yield from loader


def _checkpoint(cfg: TrainPolicyConfig, accelerator: Accelerator, step: int) -> None:
    path = cfg.output_dir / "checkpoints" / "last"
    accelerator.save_state(str(path))  # every process: the main one the weights, each its RNG state
    accelerator.wait_for_everyone()  # step.json last: it says the whole checkpoint is there
    if accelerator.is_main_process:
        (path / "step.json").write_text(json.dumps({"step": step}))


def _resume(cfg: TrainPolicyConfig, accelerator: Accelerator) -> int:
    path = cfg.output_dir / "checkpoints" / "last"
    if not (path / "step.json").exists():
        raise FileNotFoundError(f"resume: no checkpoint at {path}")
    accelerator.load_state(str(path))
    step = json.loads((path / "step.json").read_text())["step"]
    if accelerator.is_main_process:
        log.info("resumed from step %d", step)
    return step


def main() -> None:
    logging.basicConfig(level=logging.INFO)
    train_policy(draccus.parse(TrainPolicyConfig))


if __name__ == "__main__":
    main()
