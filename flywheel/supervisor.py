"""`flywheel run`: starts the rollout daemon and the teleop process as children (and the trainer with
--trainer=true, or the uplink to a fleet's trainer with --trainer_address), restarts a child that
crashes (with backoff), and stops them all cleanly on Ctrl-C or when the daemon is done."""

from __future__ import annotations

import io
import logging
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import draccus

from flywheel.configs import RunConfig

log = logging.getLogger(__name__)


@dataclass
class Child:
    name: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    next_start: float = 0.0

    def start(self) -> None:
        cmd = [sys.executable, "-m", "flywheel.cli", self.name, f"--config_path={self.config_path}"]
        # The daemon's output goes to our terminal (episode summaries); the others' to their log.
        out = None if self.name == "rollout" else self.log_path.open("ab")
        self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT if out else None)
        log.info("started %s (pid %d)", self.name, self.process.pid)


def write_config(cfg, path: Path) -> Path:
    buffer = io.StringIO()
    draccus.dump(cfg, buffer)
    path.write_text(buffer.getvalue())
    return path


def trainer_config(cfg: RunConfig):
    """The trainer child's config: its own file (if any), with this run's dataset, wire and task."""
    from trainer.loop import TrainerConfig

    args = [] if cfg.trainer_config is None else [f"--config_path={cfg.trainer_config}"]
    trainer = draccus.parse(TrainerConfig, args=args)
    trainer.dataset_root = cfg.dataset.root
    trainer.registry = cfg.registry
    trainer.work_dir = Path(cfg.dataset.root).parent / f"{Path(cfg.dataset.root).name}-trainer"
    trainer.wire = cfg.wire
    trainer.every = cfg.train_every
    trainer.sim_task = getattr(cfg.robot, "task", None) if getattr(cfg.robot, "type", "") == "sim" else None
    return trainer


def uplink_config(cfg: RunConfig):
    """The uplink child's config: this run's dataset and wire, the fleet's trainer address."""
    from flywheel.uplink.config import UplinkConfig

    arm = {} if cfg.arm is None else {"arm": cfg.arm}
    return UplinkConfig(
        trainer=cfg.trainer_address,
        dataset_root=cfg.dataset.root,
        cache=Path(cfg.dataset.root).parent / f"{Path(cfg.dataset.root).name}-uplink-models",
        wire=cfg.wire,
        identity=cfg.uplink_identity,
        **arm,
    )


def run(cfg: RunConfig) -> int:
    run_dir = cfg.run_dir or Path(cfg.dataset.root).parent / "runs" / time.strftime("%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    teleop = Child(
        "teleop", write_config(cfg.teleop_config(), run_dir / "teleop.yaml"), run_dir / "teleop.log"
    )
    rollout = Child(
        "rollout", write_config(cfg.rollout_config(), run_dir / "rollout.yaml"), run_dir / "rollout.log"
    )
    children = [teleop, rollout]  # teleop first: it is listening when the first observation comes
    if cfg.trainer:
        children.append(
            Child(
                "trainer",
                write_config(trainer_config(cfg), run_dir / "trainer.yaml"),
                run_dir / "trainer.log",
            )
        )
    if cfg.trainer_address is not None:
        children.append(
            Child("uplink", write_config(uplink_config(cfg), run_dir / "uplink.yaml"), run_dir / "uplink.log")
        )
    log.info("run directory %s", run_dir)
    interrupted = False

    def on_signal(signum, _frame):
        nonlocal interrupted
        interrupted = True

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for child in children:
            child.start()
        while not interrupted:
            time.sleep(0.1)
            code = rollout.process.poll()
            if code == 0:
                log.info("the rollout daemon finished")
                return 0
            for child in list(children):
                if child.process.poll() is None or _restart(child, cfg.max_restarts):
                    continue
                if child is rollout:
                    log.error(
                        "the rollout daemon exited with %s too often; stopping", child.process.returncode
                    )
                    return 1
                # Without teleop the policy runs on (no takeovers); without the trainer or the uplink the
                # weights stay (and an uplink's episodes wait on disk).
                log.error(
                    "%s exited with %s too often; the daemon runs on without it",
                    child.name,
                    child.process.returncode,
                )
                children.remove(child)
        log.info("interrupted: stopping")
        return 130
    finally:
        _stop_all(children)
        for s, handler in previous.items():
            signal.signal(s, handler)


def _restart(child: Child, max_restarts: int) -> bool:
    """Restart a crashed child after a backoff of 1, 2, 4, ... s. False when out of restarts."""
    now = time.monotonic()
    if child.next_start == 0.0:
        if child.restarts >= max_restarts:
            return False
        delay = 2.0**child.restarts
        child.next_start = now + delay
        log.warning(
            "%s exited with %s; restarting in %.0f s (%d/%d)",
            child.name,
            child.process.returncode,
            delay,
            child.restarts + 1,
            max_restarts,
        )
    if now >= child.next_start:
        child.restarts += 1
        child.next_start = 0.0
        child.start()
    return True


def _stop_all(children: list[Child], timeout: float = 10.0) -> None:
    """SIGINT first (the daemon finishes writing), then SIGTERM, then SIGKILL."""
    alive = [c.process for c in reversed(children) if c.process is not None and c.process.poll() is None]
    for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        for p in alive:
            p.send_signal(sig)
        deadline = time.monotonic() + wait
        while alive and time.monotonic() < deadline:
            alive = [p for p in alive if p.poll() is None]
            time.sleep(0.05)
        if not alive:
            return
