"""The training step under `accelerate launch` with 2 CPU processes (gloo) equals 1 process with the same
global batch; and the trainer's `launch` option (trainer/launch.py).

Equivalence, made meaningful: pi_star_recap draws flow noise, flow times and indicator dropout per
sample, from a stream that differs between layouts (each process has its own). Run as a module
(`-m tests.test_multiprocess_training`, below), this file trains through train_policy with those
draws made a function of (frame index, step) only, so both layouts see the same noise for the same
sample. What is left to differ is what the issue is about: which samples each step sees (the
weighted sampler, sharded by accelerate), how the per-process losses and gradients are averaged,
and the optimizer state. The check: after 3 Adam steps on a global batch of 8, the 2-process
weights are within 1e-4 (relative L2) of the 1-process ones, measured on how far training moved
them; a layout that gives every process the same half of each batch lands far outside it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import draccus
import numpy as np
import pytest
import torch
from accelerate.utils import set_seed

from trainer.launch import LaunchConfig, LaunchError, launch_training
from trainer.loop import Trainer, TrainerConfig
from trainer.train_policy import TrainPolicyConfig, _build, check_batch_size

WRONG_LAYOUT = "FLYWHEEL_TEST_SAME_HALF"  # env: every process takes the first half of each batch
TOLERANCE = 1e-4
STEPS, GLOBAL_BATCH = 3, 8


# --- in the launched processes -------------------------------------------------------------------
def _keyed_randomness() -> None:
    """Noise, flow times and indicator dropout drawn per sample from a generator seeded by (frame
    index, step): the same for a sample in whichever process and batch slice it lands."""
    from flywheel.policies.pi_star_recap import modeling_pi_star_recap as modeling
    from flywheel.policies.pi_star_recap.network import PiStarRECAPNetwork
    from flywheel.policies.pi_star_recap.prompt import NEGATIVE, POSITIVE

    now = {"index": None, "step": 0}
    forward, flow_loss = modeling.PiStarRECAPPolicy.forward, PiStarRECAPNetwork.flow_loss

    def generators():
        return [torch.Generator().manual_seed(int(i) * 1000 + now["step"]) for i in now["index"]]

    def keyed_forward(self, batch, reduction="mean"):
        now["index"], now["step"] = batch["index"].reshape(-1).tolist(), now["step"] + 1
        return forward(self, batch, reduction)

    def keyed_flow_loss(self, inp, actions, noise=None, t=None):
        gens = generators()
        noise = torch.stack([torch.randn(actions.shape[1:], generator=g) for g in gens]).to(actions)
        scale, offset = self.cfg.time_sampling_scale, self.cfg.time_sampling_offset
        t = torch.stack([torch.rand((), generator=g) * scale + offset for g in gens]).to(actions)
        return flow_loss(self, inp, actions, noise=noise, t=t)

    def keyed_indicators(positive, dropout, generator=None):
        drop = [bool(torch.rand((), generator=g) < dropout) for g in generators()]
        words = [POSITIVE if bool(p) else NEGATIVE for p in positive.reshape(-1).tolist()]
        return [None if d else w for w, d in zip(words, drop, strict=True)]

    modeling.PiStarRECAPPolicy.forward = keyed_forward
    PiStarRECAPNetwork.flow_loss = keyed_flow_loss
    modeling.indicators_from_labels = keyed_indicators


def _same_half_everywhere() -> None:
    """A wrong layout, for the check to catch: every process trains on the first half of the batch."""
    from accelerate.data_loader import BatchSamplerShard

    def first_half(self):
        part = self.batch_sampler.batch_size // self.num_processes
        for batch in self.batch_sampler:
            yield batch[:part]

    BatchSamplerShard._iter_with_split = first_half


# --- the tests -----------------------------------------------------------------------------------


def _config(sim_dataset, out: Path, weights: Path, **overrides) -> TrainPolicyConfig:
    base = dict(
        dataset_root=sim_dataset, output_dir=out, steps=STEPS, batch_size=GLOBAL_BATCH, save_every=STEPS,
        log_every=1, device="cpu", trackers=[], sample_weights=weights,
    )  # fmt: skip
    return TrainPolicyConfig(**{**base, **overrides})


def _launch(cfg: TrainPolicyConfig, processes: int, tmp_path: Path, wrong_layout: bool = False) -> float:
    """Train cfg under `accelerate launch` (the trainer's command, with this file as the module)."""
    config_path = tmp_path / f"{cfg.output_dir.name}.yaml"
    with open(config_path, "w") as f:
        draccus.dump(cfg, f)
    cmd = LaunchConfig(num_processes=processes, cpu=True, main_process_port=0).command(config_path)
    cmd[cmd.index("trainer.train_policy")] = "tests.test_multiprocess_training"
    env = {**os.environ, "OMP_NUM_THREADS": "1", WRONG_LAYOUT: "1" if wrong_layout else ""}
    start = time.perf_counter()
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    errors = [line for line in result.stderr.splitlines() if "Error" in line]
    assert result.returncode == 0, "\n".join(errors[:10]) + result.stderr[-2000:]
    return time.perf_counter() - start


def _weights(pretrained: Path, names: list[str]) -> torch.Tensor:
    from safetensors.torch import load_file

    tensors = load_file(str(pretrained / "model.safetensors"))
    return torch.cat([tensors[k].double().flatten() for k in names])


def _initial_weights(cfg: TrainPolicyConfig) -> dict[str, torch.Tensor]:
    """The weights train_policy starts from (built from the same seed in every layout)."""
    set_seed(cfg.seed)
    policy = _build(cfg, torch.device("cpu"))[0]
    return {k: v.detach().double().flatten() for k, v in policy.state_dict().items()}


def test_two_processes_train_as_one_with_the_same_global_batch(sim_dataset, tmp_path):
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    frames = LeRobotDatasetMetadata("local/flywheel", root=sim_dataset).total_frames
    weights = tmp_path / "weights.npy"
    np.save(weights, np.linspace(1.0, 3.0, frames))  # the weighted sampler, not uniform shuffling

    initial = _initial_weights(_config(sim_dataset, tmp_path / "init", weights))
    seconds = {
        "one": _launch(_config(sim_dataset, tmp_path / "one", weights), 1, tmp_path),
        "two": _launch(_config(sim_dataset, tmp_path / "two", weights), 2, tmp_path),
        "wrong": _launch(_config(sim_dataset, tmp_path / "wrong", weights), 2, tmp_path, wrong_layout=True),
    }
    from safetensors import safe_open

    with safe_open(str(tmp_path / "one/pretrained_model/model.safetensors"), "pt") as f:
        names = sorted(f.keys())
    start = torch.cat([initial[k] for k in names])
    one, two, wrong = (
        _weights(tmp_path / name / "pretrained_model", names) for name in ("one", "two", "wrong")
    )
    moved = (one - start).norm()
    distance = {"two": float((two - one).norm() / moved), "wrong": float((wrong - one).norm() / moved)}
    print(f"relative distance to 1 process: {distance}; seconds: {seconds}")
    assert moved > 0
    assert distance["two"] < TOLERANCE, distance
    assert distance["wrong"] > 10 * TOLERANCE, distance  # the check can fail
    assert json.loads((tmp_path / "two/checkpoints/last/step.json").read_text()) == {"step": STEPS}
    assert sorted(p.name for p in (tmp_path / "two/checkpoints/last").glob("random_states_*")) == [
        "random_states_0.pkl",
        "random_states_1.pkl",
    ]


def test_batch_size_is_the_global_batch_and_must_split_evenly():
    check_batch_size(8, 2)
    with pytest.raises(ValueError, match=r"batch_size: 7 is the global batch.*3 processes"):
        check_batch_size(7, 3)


def test_launch_builds_the_accelerate_command(tmp_path):
    assert LaunchConfig().in_process
    assert not LaunchConfig(mixed_precision="bf16").in_process
    cfg = LaunchConfig(
        num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1", main_process_port=29600
    )
    assert not cfg.in_process
    assert cfg.command(tmp_path / "c.yaml") == [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes=16",
        "--num_machines=2", "--machine_rank=1", "--mixed_precision=no", "--dynamo_backend=no",
        "--main_process_ip=10.0.0.1", "--main_process_port=29600",
        "-m", "trainer.train_policy", f"--config_path={tmp_path / 'c.yaml'}",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_processes": 0}, "launch.num_processes: 0"),
        ({"num_machines": 0}, "launch.num_machines: 0"),
        ({"num_processes": 3, "num_machines": 2, "main_process_ip": "h"}, "launch.num_processes: 3"),
        (
            {"num_processes": 2, "num_machines": 2, "machine_rank": 2, "main_process_ip": "h"},
            "machine_rank: 2",
        ),
        ({"num_processes": 2, "num_machines": 2}, "launch.main_process_ip: None"),
        ({"main_process_port": 70000}, "launch.main_process_port: 70000"),
        ({"mixed_precision": "fp64"}, "launch.mixed_precision: 'fp64'"),
    ],
)
def test_launch_refuses_bad_values(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LaunchConfig(**kwargs)


def test_trainer_refuses_a_batch_that_does_not_split_across_its_processes():
    with pytest.raises(ValueError, match=r"batch_size: 30 is the global batch.*launch\.num_processes=4"):
        TrainerConfig(batch_size=30, launch=LaunchConfig(num_processes=4))
    assert TrainerConfig(batch_size=32, launch=LaunchConfig(num_processes=4)).launch.num_processes == 4


def test_the_trainer_s_launch_option_runs_its_training_step_under_accelerate(tmp_path, monkeypatch):
    """Trainer._train with launch.num_processes=2: the accelerate command on a yaml in the iteration
    folder (not run here); with the defaults, train_policy in-process as before."""
    import trainer.launch as launch_module
    import trainer.loop as loop

    source = SimpleNamespace(
        episodes=SimpleNamespace(index=np.array([0, 1])),
        frames=SimpleNamespace(episode=np.array([0, 0, 1, 1])),
    )
    monkeypatch.setattr(loop, "load_source", lambda path: source)
    monkeypatch.setattr(loop, "labels_of", lambda path: np.array([True, False, True, False]))
    ran, in_process = [], []

    def fake_run(cmd, stdout, stderr, timeout):
        ran.append(cmd)
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(launch_module.subprocess, "run", fake_run)
    monkeypatch.setattr(loop, "train_policy", lambda cfg: in_process.append(cfg) or cfg.output_dir)
    cfg = draccus.parse(
        TrainerConfig,
        args=[
            f"--dataset_root={tmp_path / 'data'}", f"--work_dir={tmp_path / 'work'}", "--batch_size=8",
            "--launch.num_processes=2", "--launch.cpu=true", "--launch.main_process_port=0",
        ],
    )  # fmt: skip
    trainer = Trainer.__new__(Trainer)  # _train only: no dataset, registry or sockets needed
    trainer.cfg = cfg
    folder = tmp_path / "iter-0001"
    folder.mkdir()

    pretrained = trainer._train(folder, folder / "labeled", heldout=[], kind="nightly", current=None)
    assert pretrained == folder / "train" / "pretrained_model" and in_process == []
    assert ran == [cfg.launch.command(folder / "train_policy.yaml")]
    assert ran[0][3:5] == ["--multi_gpu", "--num_processes=2"]
    trained = draccus.parse(TrainPolicyConfig, args=[f"--config_path={folder / 'train_policy.yaml'}"])
    assert (trained.batch_size, trained.device, trained.output_dir) == (8, "cpu", folder / "train")
    assert trained.sample_weights == folder / "sample_weights.npy"

    trainer.cfg = TrainerConfig(dataset_root=tmp_path / "data", work_dir=tmp_path / "work", batch_size=8)
    trainer._train(folder, folder / "labeled", heldout=[], kind="nightly", current=None)
    assert len(ran) == 1 and len(in_process) == 1 and in_process[0].device is None


def test_launch_training_writes_the_config_and_names_the_log_on_failure(tmp_path, monkeypatch):
    import trainer.launch as launch_module

    ran = []

    def fake_run(cmd, stdout, stderr, timeout):
        ran.append(cmd)
        stdout.write("boom\n")
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr(launch_module.subprocess, "run", fake_run)
    cfg = TrainPolicyConfig(output_dir=tmp_path / "train", batch_size=8, trackers=[], device="cpu")
    launch = LaunchConfig(num_processes=2, cpu=True)
    with pytest.raises(LaunchError, match=f"exit code 3; its log: {tmp_path / 'train_policy.log'}"):
        launch_training(launch, cfg, tmp_path)
    assert ran == [launch.command(tmp_path / "train_policy.yaml")]
    assert (tmp_path / "train_policy.log").read_text() == "boom\n"
    parsed = draccus.parse(TrainPolicyConfig, args=[f"--config_path={tmp_path / 'train_policy.yaml'}"])
    assert parsed == cfg


if __name__ == "__main__":  # launched by _launch: train_policy with the per-sample draws
    from trainer.train_policy import main

    _keyed_randomness()
    if os.environ.get(WRONG_LAYOUT):
        _same_half_everywhere()
    main()
