"""`flywheel trainer`: the background trainer.

It watches the dataset (a scan at start-up, then the daemon's EPISODE_SAVED notifications) and runs
RECAP iterations:

    label     train the value function on all episodes, label every frame with an advantage
    train     the policy on the labeled data (held-out episodes excluded, positives at a fixed share)
    report    conditioning strength: how much the new policy's loss depends on its indicator
    publish   a new registry version
    gate      not worse than the acting version on held-out episodes (and in the sim, if it is one)
    deploy    announce it to the daemon, which validates and hot-swaps it

Continuous iterations run every `every` new episodes and warm-start from the acting version;
nightly ones (`--schedule=02:00`, or `--once` now) retrain from the base checkpoint on all data, as
the paper does. An iteration killed half-way is redone on restart with the same episodes: its
folder keeps the labels, the training checkpoint and the published version, so nothing is lost and
nothing counted twice.

With `--fleet.bind=ADDRESS` it serves arms on other computers instead (trainer/fleet.py): their
episodes arrive in `fleet.inbox/<arm>/`, each iteration trains on the union of the arms' datasets
(trainer/union.py; which arm each episode came from is kept), and deploys go to every arm.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import re
import shutil
import signal
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import zmq

from flywheel.contracts.dataset import labels_path, snapshot
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.files import write_text_atomically
from flywheel.contracts.messages import DeployRequest, send_deploy
from flywheel.contracts.registry import ModelRegistry
from flywheel.policies.pi_star_recap.conditioning import report_conditioning
from flywheel.recap.indicator_balance import indicator_balanced_weights, labels_of
from flywheel.recap.labeling import LabelConfig, run_labeling
from flywheel.recap.sampler import DataTypeWeights, frame_weights
from flywheel.recap.source import LabelInputError, check_dataset, load_source
from flywheel.viz.config import RerunConfig
from trainer.fleet import FleetConfig, FleetServer
from trainer.gate import GateConfig, decide, holdout_episodes
from trainer.intake import EpisodeIntake, FleetIntake
from trainer.launch import LaunchConfig, launch_training
from trainer.schedule import next_occurrence, parse_clock
from trainer.train_policy import TrainPolicyConfig, train_policy
from trainer.union import (
    ArmDatasetError,
    UnionSnapshot,
    arm_episodes,
    arm_roots,
    check_arms,
    parse_episode_key,
    union_snapshot,
)

log = logging.getLogger(__name__)

# In work_dir: says the folder is this trainer's, for which dataset (the only folder it removes things in).
WORK_MARKER = ".flywheel-trainer"
# What a trainer from before WORK_MARKER existed leaves in its work_dir.
_EARLIER_TRAINER = re.compile(r"state\.json|state\.tmp|iter-\d{4,}")


class TrainerInputError(ValueError):
    """The trainer's folders cannot be used as given; the message names the flag and the path."""


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
    # The training step's processes and machines (trainer/launch.py); the defaults train in-process.
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    weights: DataTypeWeights = field(default_factory=DataTypeWeights)
    # Share of the policy's training samples drawn from positive-labeled frames
    # (flywheel/recap/indicator_balance.py); None: the data-type `weights` above instead, which
    # starved the positive mode in the demo's measurements (docs/demo.md).
    positive_share: float | None = 0.9
    label: LabelConfig = field(default_factory=LabelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    # The sim task, when the robot is the sim: the gate then also evaluates in simulation.
    sim_task: str | None = None
    # Announce gated versions to the daemon.
    deploy: bool = True
    deploy_timeout_s: float = 120.0
    wire: WireConfig = field(default_factory=WireConfig)
    # Arms on other computers (--fleet.bind=ADDRESS): train on the union of their datasets in
    # fleet.inbox, deploy to each of them. Unset: the one dataset at dataset_root, as before.
    fleet: FleetConfig = field(default_factory=FleetConfig)
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
        if self.positive_share is not None and not 0.0 < self.positive_share < 1.0:
            raise ValueError(f"positive_share: {self.positive_share} must lie in (0, 1)")
        if self.batch_size % self.launch.num_processes:
            raise ValueError(
                f"batch_size: {self.batch_size} is the global batch, split evenly across "
                f"launch.num_processes={self.launch.num_processes}; give a multiple of it"
            )


def check_paths(cfg: TrainerConfig) -> None:
    """The trainer writes into work_dir and registry and removes its own half-made folders there: neither
    may be, hold or sit inside the dataset, nor overlap the other."""
    pairs = (
        ("work_dir", cfg.work_dir, "dataset_root", cfg.dataset_root),
        ("registry", cfg.registry, "dataset_root", cfg.dataset_root),
        ("registry", cfg.registry, "work_dir", cfg.work_dir),
    )
    if cfg.fleet.bind is not None:  # the arms' datasets: written by the fleet server, read by the trainer
        pairs += (
            ("work_dir", cfg.work_dir, "fleet.inbox", cfg.fleet.inbox),
            ("registry", cfg.registry, "fleet.inbox", cfg.fleet.inbox),
        )
    for name, path, other_name, other in pairs:
        if _overlap(Path(path), Path(other)):
            raise TrainerInputError(
                f"{name}: {path} must not be, hold or sit inside {other_name} ({other}); "
                "give separate folders"
            )


def _overlap(a: Path, b: Path) -> bool:
    a, b = a.resolve(), b.resolve()
    return a == b or a in b.parents or b in a.parents


def _marker_owner(marker: Path) -> tuple[str, str | None]:
    """Whose work the marker says work_dir holds: ("dataset_root", path) or, a fleet trainer's,
    ("fleet_inbox", path)."""
    try:
        owner = json.loads(marker.read_text())
        kind = "fleet_inbox" if "fleet_inbox" in owner else "dataset_root"
        return kind, owner.get(kind)
    except (json.JSONDecodeError, AttributeError) as e:
        raise TrainerInputError(f"work_dir: {marker} is unreadable ({e}); move it aside") from e


_OWNER_WORDS = {"dataset_root": "the dataset", "fleet_inbox": "the fleet inbox"}


def _write_json(path: Path, value) -> None:
    """Whole or not at all: a trainer killed mid-write must not leave a file it cannot read back."""
    write_text_atomically(path, json.dumps(value))


def trainer_main(cfg: TrainerConfig) -> int:
    """Entry point of `flywheel trainer`: 0 when done or stopped, 2 when its input or a folder is refused."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        trainer = Trainer(cfg)
        signal.signal(signal.SIGTERM, lambda *_: trainer.stop())
        trainer.run()
    except (LabelInputError, TrainerInputError) as e:
        print(f"flywheel trainer: {e}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)  # the handler holds this trainer; called in-process too
    return 0


class Trainer:
    def __init__(self, cfg: TrainerConfig):
        self.cfg = cfg
        check_paths(cfg)
        self._check_work_dir()
        self.registry = ModelRegistry(cfg.registry)
        if cfg.fleet.bind is None:
            self.intake = EpisodeIntake(cfg.dataset_root, cfg.work_dir / "state.json")
            self.fleet: FleetServer | None = None
        else:
            self.intake = FleetIntake(cfg.fleet.inbox, cfg.work_dir / "state.json")
            self.fleet = FleetServer(
                cfg.fleet, cfg.registry, cfg.wire.security("trainer"), on_episode=self.intake.on_episode
            )  # started by run()
        self._ctx = zmq.Context.instance()
        self._stop = False

    def stop(self) -> None:
        """Stop after the step under way (SIGTERM): a wait for episodes or for the arms' deploy
        reports ends now; an iteration being trained finishes (or is redone on restart)."""
        self._stop = True
        self.intake.wake()
        if self.fleet is not None:
            self.fleet.interrupt()

    def run(self) -> None:
        cfg = self.cfg
        if cfg.once or self.intake.all_episodes():
            self._check_input()  # a dataset the trainer cannot use: say so now, not at the first iteration
        if self.fleet is not None:
            self.fleet.start()  # arms send episodes and fetch weights from now on, --once too
            if self._acting_version() is not None and cfg.deploy and cfg.fleet.deploy_to_arms:
                # After a restart: the arms act with this one (an arm that connects later fetches it).
                self.fleet.set_target(self._acting_version())
            log.info("trainer: serving the fleet on %s, inbox %s", cfg.fleet.bind, cfg.fleet.inbox)
        try:
            self._run()
        finally:
            if self.fleet is not None:
                self.fleet.stop()

    def _run(self) -> None:
        cfg = self.cfg
        if cfg.once:
            self.iterate("nightly")  # on what the dataset (a fleet: the inbox) holds now
            return
        if self.fleet is None:  # a fleet's wake-up is its server's on_episode
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

    # --- its folders and its input ---------------------------------------------------------------
    def _check_work_dir(self) -> None:
        """work_dir is where the trainer removes its own half-made folders: it must be new, empty, or
        the trainer's own for this dataset, so that nothing else is ever removed or overwritten."""
        work, marker = self.cfg.work_dir, self.cfg.work_dir / WORK_MARKER
        if marker.exists():
            kind, owner = _marker_owner(marker)
            mine, path = self._owner()
            if (kind, owner) != (mine, str(Path(path).resolve())):
                raise TrainerInputError(
                    f"work_dir: {work} holds the trainer's work on {_OWNER_WORDS[kind]} {owner}, "
                    f"not on {_OWNER_WORDS[mine]} {path}; give another work_dir"
                )
            return
        if work.exists() and not work.is_dir():
            raise TrainerInputError(f"work_dir: {work} is not a folder")
        names = sorted(p.name for p in work.iterdir()) if work.exists() else []
        earlier = "state.json" in names and all(_EARLIER_TRAINER.fullmatch(n) for n in names)
        if names and not earlier:
            raise TrainerInputError(
                f"work_dir: {work} is not empty and not the trainer's (it holds {', '.join(names[:3])}); "
                "give a new or empty folder"
            )

    def _claim_work_dir(self) -> None:
        marker = self.cfg.work_dir / WORK_MARKER
        if not marker.exists():
            self.cfg.work_dir.mkdir(parents=True, exist_ok=True)
            kind, path = self._owner()
            # Not _write_json: its temporary file, left by a kill, would make work_dir look like a stranger's.
            marker.write_text(json.dumps({"made_by": "flywheel trainer", kind: str(Path(path).resolve())}))

    def _owner(self) -> tuple[str, Path]:
        """What the trainer's work is on: the dataset, or a fleet's inbox (work_dir's marker)."""
        if self.cfg.fleet.bind is not None:
            return "fleet_inbox", Path(self.cfg.fleet.inbox)
        return "dataset_root", Path(self.cfg.dataset_root)

    def _check_input(self) -> None:
        """The checks `flywheel label` makes, on the user's dataset and before anything is written: an
        error names dataset_root, never the trainer's snapshot of it. A fleet's: each arm's copy in
        the inbox that holds an episode, and that they can be joined (an error names the arm)."""
        if self.fleet is None:
            check_dataset(self.cfg.dataset_root, self.cfg.label.stock_fields())
            return
        roots = {arm: root for arm, root in arm_roots(self.cfg.fleet.inbox).items() if arm_episodes(root)}
        for root in roots.values():
            check_dataset(root, self.cfg.label.stock_fields())
        try:
            check_arms(roots)
        except ArmDatasetError as e:
            raise TrainerInputError(str(e)) from e

    # --- one iteration ---------------------------------------------------------------------------
    def iterate(self, kind: str) -> int | None:
        """Label, train, publish, gate, deploy. Returns the new version (None when gated out)."""
        cfg = self.cfg
        if not self.intake.all_episodes():
            log.info("trainer: no episodes yet")
            return None
        self._check_input()
        self._claim_work_dir()
        number = self.intake.state.iterations + 1
        folder = cfg.work_dir / f"iter-{number:04d}"
        folder.mkdir(exist_ok=True)
        episodes = self._snapshot(folder)  # the iteration's episodes, pinned across restarts
        log.info("iteration %d (%s) on %d episodes in %s", number, kind, len(episodes), folder)
        heldout = self._heldout(folder, episodes)
        labeled = self._label(folder)
        current = self._acting_version()
        manifest_path = folder / "published.json"
        if manifest_path.exists():  # killed after publishing: reuse that version, do not publish twice
            version = json.loads(manifest_path.read_text())["version"]
        else:
            pretrained = self._train(folder, labeled, heldout, kind, current)
            self._report_conditioning(folder, pretrained, labeled, heldout)
            trained_on = [e for e in episodes if e not in heldout]
            version = self.registry.publish(
                pretrained,
                parent=current,
                kind=kind,
                episodes=trained_on,
                metrics=self._fleet_episodes(folder, trained_on),
            ).version
            _write_json(manifest_path, {"version": version})
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
            self._deploy(version, folder)
        self.intake.commit(self._intake_ids(folder, episodes), version if decision.passed else current)
        return version if decision.passed else None

    def _snapshot(self, folder: Path) -> list[int]:
        """The daemon keeps appending while we train: work on a consistent snapshot of the dataset.
        A fleet's: snapshots of the arms' copies (folder/arms/<arm>) and their union (trainer/union.py)."""
        snap, pinned = folder / "snapshot", folder / "episodes.json"
        arms = folder / "arms"  # a fleet's
        if pinned.exists():
            return json.loads(pinned.read_text())
        # Inside the trainer's own work_dir (checked at start): a snapshot it was interrupted making.
        shutil.rmtree(snap, ignore_errors=True)
        shutil.rmtree(arms, ignore_errors=True)
        try:
            if self.fleet is None:
                episodes = snapshot(self.cfg.dataset_root, snap)
            else:
                episodes = union_snapshot(arm_roots(self.cfg.fleet.inbox), snap, arms).episodes
        except BaseException as e:
            shutil.rmtree(snap, ignore_errors=True)  # leave nothing half-made
            shutil.rmtree(arms, ignore_errors=True)
            with contextlib.suppress(OSError):
                folder.rmdir()  # the iteration folder too, if nothing else is in it
            if isinstance(e, ArmDatasetError):
                raise TrainerInputError(str(e)) from e
            raise
        _write_json(pinned, episodes)
        return episodes

    def _union(self, folder: Path) -> UnionSnapshot:
        return UnionSnapshot.read(folder / "snapshot")

    def _heldout(self, folder: Path, episodes: list[int]) -> list[int]:
        """The gate's episodes (union indices for a fleet). A fleet's are chosen by each arm's own
        episode index, so that an episode held out once stays held out as the arms grow (a union
        index shifts when an arm sorted before it sends more)."""
        every = self.cfg.gate.holdout_every
        if self.fleet is None:
            return holdout_episodes(episodes, every)
        union = self._union(folder)
        own = {e: parse_episode_key(k)[1] for e, k in zip(union.episodes, union.keys, strict=True)}
        held = set(holdout_episodes(sorted(set(own.values())), every))  # the one rule, on own indices
        return [e for e in episodes if own[e] in held]

    def _intake_ids(self, folder: Path, episodes: list[int]) -> list:
        """What the intake records as used: the episode indices, a fleet's keys (`<arm>/<index>`)."""
        if self.fleet is None:
            return episodes
        union = self._union(folder)
        return [union.key(e) for e in episodes]

    def _fleet_episodes(self, folder: Path, trained_on: list[int]) -> dict | None:
        """A fleet version's manifest also names its episodes by key (union indices are the iteration's)."""
        if self.fleet is None:
            return None
        return {"fleet_episodes": self._intake_ids(folder, trained_on)}

    def _label(self, folder: Path) -> Path:
        out = folder / "labeled"
        if labels_path(out).exists():
            return out  # labeled before a restart
        shutil.rmtree(out, ignore_errors=True)  # a half-written copy, in the trainer's own work_dir
        label_cfg = self.cfg.label
        label_cfg.dataset.root, label_cfg.output.root = folder / "snapshot", out
        try:
            labels = run_labeling(label_cfg)
        except LabelInputError as e:
            raise LabelInputError(f"{e} (the trainer's snapshot of {self.cfg.dataset_root})") from e
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
        frame_episodes = source.episodes.index[source.frames.episode]
        training = (~np.isin(frame_episodes, heldout)).astype(np.float64)  # held-out frames are the gate's
        if cfg.positive_share is None:
            weights = frame_weights(source.frame_data_type_ids(), cfg.weights) * training
        else:
            weights = indicator_balanced_weights(labels_of(labeled), cfg.positive_share, base=training)
        np.save(folder / "sample_weights.npy", weights)
        warm = kind == "continuous" and current is not None
        out = folder / "train"
        resume = (out / "checkpoints" / "last" / "step.json").exists()
        if not resume:  # a run killed before its first checkpoint, in the trainer's own work_dir: redone
            shutil.rmtree(out, ignore_errors=True)
        train_cfg = TrainPolicyConfig(
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
            resume=resume,
            device="cpu" if cfg.launch.cpu else None,
        )
        if cfg.launch.in_process:
            return train_policy(train_cfg)
        return launch_training(cfg.launch, train_cfg, folder)  # its log: folder/train_policy.log

    def _report_conditioning(self, folder: Path, pretrained: Path, labeled: Path, heldout: list[int]) -> None:
        """Does the new policy act on its advantage indicator? On the gate's held-out episodes (the
        training ones when none is held out, said so), at a cost that does not hold up the deploy:
        128 frames, 2 noise draws, losses only (no sampled chunks)."""
        context = {"episodes": heldout or "all (none held out)"}
        report_conditioning(
            pretrained, labeled, heldout or None, folder / "conditioning.json", context,
            max_frames=128, draws=2, sample_actions=False,
        )  # fmt: skip

    def _acting_version(self) -> int | None:
        return self.intake.state.last_version

    def _deploy(self, version: int, folder: Path) -> None:
        if self.fleet is not None and self.cfg.fleet.deploy_to_arms:
            self._deploy_to_fleet(version, folder)
            return
        deploy = DeployRequest.of_version(self.registry, version)
        try:
            reply = send_deploy(
                self._ctx,
                self.cfg.wire.deploy,
                deploy,
                self.cfg.deploy_timeout_s,
                self.cfg.wire.security("trainer"),
                server=self.cfg.wire.deploy_key,
            )
            log.info("deploy v%04d: %s", version, reply.fields())
        except TimeoutError as e:
            log.warning("deploy v%04d: %s; the daemon picks it up with `flywheel deploy`", version, e)

    def _deploy_to_fleet(self, version: int, folder: Path) -> None:
        """Every connected arm's report on the deploy, into folder/deploy.json and the log."""
        reports = self.fleet.deploy(version)
        arms = {arm: asdict(report) for arm, report in sorted(reports.items())}
        _write_json(folder / "deploy.json", {"version": version, "arms": arms})
        if not reports:
            log.warning("deploy v%04d: no arm connected; each fetches it when it connects", version)
        for arm, report in sorted(reports.items()):
            acting = "none" if report.acting_version is None else f"v{report.acting_version:04d}"
            reason = f" ({report.reason})" if report.reason else ""
            log.info("deploy v%04d to arm %s: %s, acting %s%s", version, arm, report.status, acting, reason)
