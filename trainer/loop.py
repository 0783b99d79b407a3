"""`flywheel trainer`: the background trainer.

It watches the dataset (a scan at start-up, then the daemon's EPISODE_SAVED notifications) and runs
RECAP iterations:

    label     train the value function on all episodes, label every frame with an advantage
    train     the policy on the labeled data (held-out episodes excluded, data-type weights applied)
    publish   a new registry version
    gate      not worse than the acting version on held-out episodes (and in the sim, if it is one)
    deploy    announce it to the daemon, which validates and hot-swaps it

Continuous iterations run every `every` new episodes and warm-start from the acting version;
nightly ones (`--schedule=02:00`, or `--once` now) retrain from the base checkpoint on all data, as
the paper does. An iteration killed half-way is redone on restart with the same episodes: its
folder keeps the labels, the training checkpoint and the published version, so nothing is lost and
nothing counted twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zmq

from flywheel.configs import WireConfig
from flywheel.dataset import snapshot
from flywheel.protocol import MessageType, request
from flywheel.recap.labeling import LabelConfig, run_labeling
from flywheel.recap.sampler import DataTypeWeights, frame_weights
from flywheel.recap.source import load_source
from flywheel.viz.config import RerunConfig
from trainer.gate import GateConfig, decide, holdout_episodes
from trainer.intake import EpisodeIntake
from trainer.registry import ModelRegistry
from trainer.schedule import next_occurrence, parse_clock
from trainer.train_policy import TrainPolicyConfig, train_policy

log = logging.getLogger(__name__)


@dataclass
class TrainerConfig:
    # The dataset the rollout daemon records into (read only here).
    dataset_root: Path = Path("outputs/datasets/flywheel")
    # The model registry (versions v0001, v0002, ...).
    registry: Path = Path("outputs/models")
    # Iteration folders (labels, checkpoints, gate decisions) and the trainer's state.
    work_dir: Path = Path("outputs/trainer")
    # A continuous iteration after this many new episodes (0: never).
    every: int = 10
    # Nightly full retrain at this local time, e.g. "02:00" (None: never).
    schedule: str | None = None
    # Run one full retrain now, then exit.
    once: bool = False
    # The base checkpoint (a pretrained_model folder) nightly retrains start from. None: a new
    # policy of policy_type / policy_preset.
    base: Path | None = None
    policy_type: str = "pi_star_recap"
    policy_preset: str | None = "tiny"
    continuous_steps: int = 300
    nightly_steps: int = 2000
    batch_size: int = 32
    # Training checkpoints every this many steps (a killed trainer resumes from the last one).
    save_every: int = 100
    trackers: list[str] = field(default_factory=lambda: ["tensorboard"])
    weights: DataTypeWeights = field(default_factory=DataTypeWeights)
    label: LabelConfig = field(default_factory=LabelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    # The sim task, when the robot is the sim: the gate then also evaluates in simulation.
    sim_task: str | None = None
    # Announce gated versions to the daemon.
    deploy: bool = True
    deploy_timeout_s: float = 120.0
    wire: WireConfig = field(default_factory=WireConfig)
    # Log each relabeled episode (value curve, advantage, threshold) to Rerun; give the daemon's
    # --rerun.recording_id and --rerun.connect to land in its recording.
    rerun: RerunConfig = field(default_factory=RerunConfig)
    # Poll the dataset at least this often, even without notifications.
    poll_s: float = 30.0

    def __post_init__(self):
        if self.schedule is not None:
            parse_clock(self.schedule, "schedule")
        if self.every < 0:
            raise ValueError(f"every: {self.every} must be >= 0")


class Trainer:
    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        self.registry = ModelRegistry(cfg.registry)
        self.intake = EpisodeIntake(cfg.dataset_root, cfg.work_dir / "state.json")
        self._ctx = zmq.Context.instance()
        self._stop = False

    def stop(self) -> None:
        self._stop = True

    def run(self) -> None:
        cfg = self.cfg
        if cfg.once:
            self.iterate("nightly")
            return
        self.intake.listen(self._ctx, cfg.wire.daemon_events, cfg.wire.security("trainer"))
        nightly_at = self._next_nightly()
        log.info(
            "trainer: %d episodes on disk, %d new; continuous every %d, nightly %s",
            len(self.intake.all_episodes()),
            len(self.intake.new_episodes()),
            cfg.every,
            nightly_at or "off",
        )
        try:
            while not self._stop:
                if nightly_at is not None and dt.datetime.now() >= nightly_at:
                    self.iterate("nightly")
                    nightly_at = self._next_nightly()
                elif cfg.every and len(self.intake.new_episodes()) >= cfg.every:
                    self.iterate("continuous")
                else:
                    self.intake.wait(cfg.poll_s)
        finally:
            self.intake.close()

    def _next_nightly(self) -> dt.datetime | None:
        if self.cfg.schedule is None:
            return None
        return next_occurrence(parse_clock(self.cfg.schedule), dt.datetime.now())

    # --- one iteration ---------------------------------------------------------------------------
    def iterate(self, kind: str) -> int | None:
        """Label, train, publish, gate, deploy. Returns the new version (None when gated out)."""
        cfg = self.cfg
        if not self.intake.all_episodes():
            log.info("trainer: no episodes yet")
            return None
        number = self.intake.state.iterations + 1
        folder = cfg.work_dir / f"iter-{number:04d}"
        episodes = self._snapshot(folder)  # the iteration's episodes, pinned across restarts
        log.info("iteration %d (%s) on %d episodes in %s", number, kind, len(episodes), folder)
        heldout = holdout_episodes(episodes, cfg.gate.holdout_every)
        labeled = self._label(folder)
        current = self._acting_version()
        manifest_path = folder / "published.json"
        if manifest_path.exists():  # killed after publishing: reuse that version, do not publish twice
            version = json.loads(manifest_path.read_text())["version"]
        else:
            pretrained = self._train(folder, labeled, heldout, kind, current)
            trained_on = [e for e in episodes if e not in heldout]
            version = self.registry.publish(
                pretrained, parent=current, kind=kind, episodes=trained_on
            ).version
            manifest_path.write_text(json.dumps({"version": version}))
        decision = decide(
            cfg.gate,
            self.registry.path(version),
            self.registry.path(current) if current else None,
            labeled,
            heldout,
            cfg.sim_task,
            folder / "gate",
        )
        (folder / "gate.json").write_text(json.dumps(decision.as_dict(), indent=1))
        if decision.passed and cfg.deploy:
            self._deploy(version)
        self.intake.commit(episodes, version if decision.passed else current)
        return version if decision.passed else None

    def _snapshot(self, folder: Path) -> list[int]:
        """The daemon keeps appending while we train: work on a consistent snapshot of the dataset."""
        snap, pinned = folder / "snapshot", folder / "episodes.json"
        if pinned.exists():
            return json.loads(pinned.read_text())
        shutil.rmtree(snap, ignore_errors=True)  # a snapshot interrupted half-way
        episodes = snapshot(self.cfg.dataset_root, snap)
        pinned.write_text(json.dumps(episodes))
        return episodes

    def _label(self, folder: Path) -> Path:
        out = folder / "labeled"
        if (out / "meta" / "recap_labels.json").exists():
            return out  # labeled before a restart
        shutil.rmtree(out, ignore_errors=True)  # a half-written copy of the trainer's own scratch
        label_cfg = self.cfg.label
        label_cfg.dataset.root, label_cfg.output.root = folder / "snapshot", out
        labels = run_labeling(label_cfg)
        if self.cfg.rerun.enabled:
            self._log_labels(out, labels)
        return out

    def _log_labels(self, labeled: Path, labels) -> None:
        """Every relabeled episode into the Rerun recording (on the dataset_index timeline)."""
        from flywheel.viz.replay import frame_thresholds, log_labeled_episode
        from flywheel.viz.sinks import open_recording

        source = load_source(labeled)
        tasks = source.task_of_frames()
        thresholds = frame_thresholds(labeled, tasks, labels.values)
        recording = open_recording(self.cfg.rerun)
        try:
            for episode, start, length in zip(
                source.episodes.index, source.episodes.start, source.episodes.length, strict=True
            ):
                rows = slice(int(start), int(start + length))
                threshold = None if thresholds is None else thresholds[rows]
                values, advantages, positive = (
                    labels.values[rows],
                    labels.advantages[rows],
                    labels.positive[rows],
                )
                log_labeled_episode(
                    recording.stream,
                    int(episode),
                    values,
                    advantages,
                    positive,
                    threshold,
                    start_frame=int(start),
                )
        finally:
            recording.close()

    def _train(self, folder: Path, labeled: Path, heldout: list[int], kind: str, current: int | None) -> Path:
        cfg = self.cfg
        source = load_source(labeled)
        weights = frame_weights(source.frame_data_type_ids(), cfg.weights)
        frame_episodes = source.episodes.index[source.frames.episode]
        weights[np.isin(frame_episodes, heldout)] = 0.0  # held-out frames are the gate's
        np.save(folder / "sample_weights.npy", weights)
        warm = kind == "continuous" and current is not None
        out = folder / "train"
        return train_policy(
            TrainPolicyConfig(
                dataset_root=labeled,
                init_from=self.registry.path(current) if warm else cfg.base,
                policy_type=cfg.policy_type,
                policy_preset=cfg.policy_preset,
                output_dir=out,
                steps=cfg.continuous_steps if warm else cfg.nightly_steps,
                batch_size=cfg.batch_size,
                save_every=cfg.save_every,
                trackers=cfg.trackers,
                sample_weights=folder / "sample_weights.npy",
                resume=(out / "checkpoints" / "last" / "step.json").exists(),
            )
        )

    def _acting_version(self) -> int | None:
        return self.intake.state.last_version

    def _deploy(self, version: int) -> None:
        fields = {
            "version": version,
            "path": str(self.registry.path(version).resolve()),
            "sha256": self.registry.manifest(version).sha256,
        }
        try:
            reply = request(
                self._ctx,
                self.cfg.wire.deploy,
                MessageType.DEPLOY,
                fields,
                self.cfg.deploy_timeout_s,
                self.cfg.wire.security("trainer"),
            )
            log.info("deploy v%04d: %s", version, reply.fields)
        except TimeoutError as e:
            log.warning("deploy v%04d: %s; the daemon picks it up with `flywheel deploy`", version, e)
