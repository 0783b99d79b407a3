"""How the trainer runs its training step: in-process, or under `accelerate launch` with several processes.

The defaults (one process on one machine) train in the trainer's own process, as train_policy is
called everywhere else. Anything more runs

    python -m accelerate.commands.launch --multi_gpu --num_processes N --num_machines M ... \\
        -m trainer.train_policy --config_path=<iteration folder>/train_policy.yaml

and waits for it (torchrun underneath: one process per GPU, or per CPU slot with `cpu`, over gloo).
On several machines (a shared filesystem for the dataset and the iteration folder) the trainer runs
on the main one (machine_rank 0); each other machine runs that same command, with its own
--machine_rank, on the same yaml (LaunchConfig(..., machine_rank=k).command(yaml)). `batch_size`
stays the global batch: the processes split it (trainer/train_policy.py).
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import draccus

MIXED_PRECISION = ("no", "fp16", "bf16", "fp8")


class LaunchError(RuntimeError):
    """The launched training failed; the message says where its log is."""


@dataclass
class LaunchConfig:
    # Processes in all, over all machines (accelerate's --num_processes): one per GPU, or per CPU slot.
    num_processes: int = 1
    num_machines: int = 1
    # This machine's rank among num_machines (0: the main one).
    machine_rank: int = 0
    # The main machine's address and port, which the others join; needed with num_machines > 1.
    # Port None: accelerate's default (29500); 0: a free one (one machine only).
    main_process_ip: str | None = None
    main_process_port: int | None = None
    # Train on the CPUs (gloo) even where there are GPUs.
    cpu: bool = False
    # Autocast precision, as accelerate takes it: no, fp16, bf16, fp8.
    mixed_precision: str = "no"

    def __post_init__(self):
        if self.num_processes < 1:
            raise ValueError(f"launch.num_processes: {self.num_processes} must be >= 1")
        if self.num_machines < 1:
            raise ValueError(f"launch.num_machines: {self.num_machines} must be >= 1")
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"launch.num_processes: {self.num_processes} counts the processes of all "
                f"{self.num_machines} machines; give a multiple of launch.num_machines"
            )
        if not 0 <= self.machine_rank < self.num_machines:
            raise ValueError(
                f"launch.machine_rank: {self.machine_rank} must lie in [0, {self.num_machines - 1}]"
            )
        if self.num_machines > 1 and not self.main_process_ip:
            raise ValueError(
                f"launch.main_process_ip: {self.main_process_ip} must be the main machine's address "
                f"with num_machines={self.num_machines}"
            )
        if self.main_process_port is not None and not 0 <= self.main_process_port <= 65535:
            raise ValueError(f"launch.main_process_port: {self.main_process_port} must lie in [0, 65535]")
        if self.num_machines > 1 and self.main_process_port == 0:
            raise ValueError("launch.main_process_port: 0 (a free port) works on one machine only")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"launch.mixed_precision: {self.mixed_precision!r} must be one of "
                f"{', '.join(MIXED_PRECISION)}"
            )

    @property
    def in_process(self) -> bool:
        """The defaults: train in the calling process (`cpu` is then TrainPolicyConfig.device)."""
        return self.num_processes == 1 and self.num_machines == 1 and self.mixed_precision == "no"

    def command(self, config_path: Path) -> list[str]:
        """The `accelerate launch` command that trains the TrainPolicyConfig saved at config_path."""
        cmd = [sys.executable, "-m", "accelerate.commands.launch"]
        # torchrun for every distributed run: accelerate's --cpu would pick its one-process launcher.
        # The CPU is asked for in the config instead (device: cpu).
        if self.num_processes > 1:
            cmd.append("--multi_gpu")
        cmd += [
            f"--num_processes={self.num_processes}",
            f"--num_machines={self.num_machines}",
            f"--machine_rank={self.machine_rank}",
            f"--mixed_precision={self.mixed_precision}",
            "--dynamo_backend=no",
        ]
        if self.main_process_ip is not None:
            cmd.append(f"--main_process_ip={self.main_process_ip}")
        if self.main_process_port is not None:
            cmd.append(f"--main_process_port={self.main_process_port}")
        return [*cmd, "-m", "trainer.train_policy", f"--config_path={config_path}"]


def launch_training(launch: LaunchConfig, cfg, folder: Path, timeout_s: float | None = None) -> Path:
    """Train `cfg` (a TrainPolicyConfig) under `accelerate launch`: the config as a yaml in `folder`,
    the run's output in folder/train_policy.log. Returns the pretrained_model folder."""
    config_path = folder / "train_policy.yaml"
    with open(config_path, "w") as f:
        draccus.dump(cfg, f)
    log_path = folder / "train_policy.log"
    with open(log_path, "w") as out:
        code = subprocess.run(
            launch.command(config_path), stdout=out, stderr=subprocess.STDOUT, timeout=timeout_s
        ).returncode
    if code != 0:
        raise LaunchError(
            f"training under accelerate launch ({launch.num_processes} processes) failed with exit code "
            f"{code}; its log: {log_path}"
        )
    return Path(cfg.output_dir) / "pretrained_model"
