"""The trainer of a fleet (`--fleet.bind`): it trains on the union of the arms' datasets in the inbox,
keeps which arm each episode came from, counts new episodes by key `<arm>/<index>`, and deploys
through the fleet server. The fleet server is a stub here (trainer/fleet.py has its own tests)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import ClassVar

import datasets
import numpy as np
import pandas as pd
import pytest
import torch
import zmq
from lerobot.datasets.lerobot_dataset import LeRobotDataset

import trainer.loop
from flywheel.contracts.dataset import (
    DataType,
    EpisodeInfo,
    data_files,
    episode_file,
    episode_files,
    fleet_arms_path,
    open_for_append,
    read_episode_table,
    read_fleet_arms,
    read_frame_table,
    save_episode,
)
from flywheel.contracts.endpoints import WireConfig
from flywheel.contracts.registry import ModelRegistry
from flywheel.contracts.security import Security, make_keys
from flywheel.recap.source import load_source
from flywheel.rollout.hotswap import CandidateRejected, HotSwap
from tests.netutil import destroy_keyed_context, free_address
from tests.recap.synth import CAMERA, Spec, make_dataset
from tests.recap.synth import LENGTH as SYNTH_LENGTH
from tests.test_dataset import FEATURES, _frame, tree
from trainer.fleet import ArmReport, FleetConfig
from trainer.intake import EpisodeIntake, FleetIntake
from trainer.loop import WORK_MARKER, Trainer, TrainerConfig, TrainerInputError, check_paths
from trainer.union import ArmDatasetError, arm_roots, key_order, union_snapshot

FRAME_COLUMNS = ["observation.state", "action", "intervention", "policy_version", "next.reward", "next.done"]
EPISODE_COLUMNS = ["length", "data_type", "success", "num_intervention_frames", "policy_versions",
                   "operator", "robot", "seed", "end_reason"]  # fmt: skip
LENGTH_FAST = SYNTH_LENGTH["fast"]
LENGTH = 6


def _add_episodes(root: Path, arm: int, episodes: range) -> Path:
    """Episodes as an arm's recorder writes them (one data and one metadata file each). Every frame and
    episode is told apart by its values: state [arm, episode*100 + frame], its own intervention and
    policy_version pattern, and per-episode columns that differ from episode to episode."""
    dataset = open_for_append(root, "t/arm", 30, FEATURES, "arm", False)
    for e in episodes:
        for k in range(LENGTH):
            operator = (k + e + arm) % 3 == 0
            dataset.add_frame({
                "observation.state": np.array([arm, e * 100 + k], np.float32),
                "action": np.array([arm * 10 + e + k / 10], np.float32),
                "intervention": np.array([operator]),
                "policy_version": np.array([0 if operator else arm * 10 + e + 1]),
                "next.reward": np.array([float(k == LENGTH - 1 and e % 2 == 0)], np.float32),
                "next.done": np.array([k == LENGTH - 1]),
                "task": f"task of arm {arm}",
            })  # fmt: skip
        kinds = (DataType.AUTO, DataType.INTERVENTION, DataType.DEMO)
        info = EpisodeInfo(
            kinds[(e + arm) % 3],
            success=e % 2 == 0,
            num_intervention_frames=e + arm,
            policy_versions=[arm * 10 + e + 1, arm * 10 + e + 2],
            operator=f"op-{arm}-{e}",
            robot=f"arm{arm}",
            seed=arm * 1000 + e,
            end_reason="success" if e % 2 == 0 else "timeout",
        )
        save_episode(dataset, info)
    return root


def _inbox(tmp_path: Path, a: int = 3, b: int = 2) -> Path:
    inbox = tmp_path / "inbox"
    _add_episodes(inbox / "arm-a", 1, range(a))
    _add_episodes(inbox / "arm-b", 2, range(b))
    return inbox


def _frames(root: Path) -> pd.DataFrame:
    return read_frame_table(data_files(root), ["index", "episode_index", "frame_index", *FRAME_COLUMNS])


def _rows(root: Path) -> pd.DataFrame:
    return read_episode_table(episode_files(root)).set_index("episode_index")


def test_the_union_holds_every_episode_of_every_arm_once_with_its_arm_and_columns(tmp_path):
    inbox = _inbox(tmp_path, a=3, b=2)
    before = tree(inbox)

    union = union_snapshot(arm_roots(inbox), tmp_path / "union", tmp_path / "arms")

    assert union.episodes == [0, 1, 2, 3, 4]
    assert union.keys == ["arm-a/0", "arm-a/1", "arm-a/2", "arm-b/0", "arm-b/1"]
    origin = read_fleet_arms(tmp_path / "union")
    assert {e: (o.arm, o.arm_episode_index) for e, o in origin.items()} == {
        0: ("arm-a", 0), 1: ("arm-a", 1), 2: ("arm-a", 2), 3: ("arm-b", 0), 4: ("arm-b", 1),
    }  # fmt: skip
    assert tree(inbox) == before  # the arms' copies are read only

    frames, rows = _frames(tmp_path / "union"), _rows(tmp_path / "union")
    assert sorted(rows.index) == [0, 1, 2, 3, 4] and len(frames) == 5 * LENGTH
    assert frames["index"].tolist() == list(range(5 * LENGTH))
    for e, o in origin.items():
        source = inbox / o.arm
        mine = frames[frames["episode_index"] == e].reset_index(drop=True)
        theirs = _frames(source)
        theirs = theirs[theirs["episode_index"] == o.arm_episode_index].reset_index(drop=True)
        assert mine["frame_index"].tolist() == list(range(LENGTH))
        for column in FRAME_COLUMNS:  # the flywheel's per-frame columns, value for value
            assert np.array_equal(np.stack(mine[column]), np.stack(theirs[column])), (e, column)
        ours, src = rows.loc[e], _rows(source).loc[o.arm_episode_index]
        for column in EPISODE_COLUMNS:  # the flywheel's per-episode columns
            assert np.array_equal(np.asarray(ours[column]), np.asarray(src[column])), (e, column)
    assert rows.loc[4, "policy_versions"].tolist() == [22, 23]  # arm-b's episode 1, by construction

    # Every episode row points at the metadata file that holds it (aggregate_datasets left the
    # source's file index on rows it wrote into one file).
    for path in episode_files(tmp_path / "union"):
        table = pd.read_parquet(path)
        where = zip(table["meta/episodes/chunk_index"], table["meta/episodes/file_index"], strict=True)
        assert all(tmp_path / "union" / episode_file(chunk, file) == path for chunk, file in where)

    dataset = LeRobotDataset("local/union", root=tmp_path / "union")
    assert (dataset.num_episodes, dataset.num_frames) == (5, 5 * LENGTH)
    state = dataset[3 * LENGTH + 2]["observation.state"]
    assert state.tolist() == [2.0, 2.0]  # arm-b's episode 0, frame 2


def test_one_arm_s_union_is_that_arm_s_episodes(tmp_path):
    _add_episodes(tmp_path / "inbox" / "solo", 1, range(2))
    (tmp_path / "inbox" / ".partial").mkdir()  # a transfer's own folder: not an arm
    union = union_snapshot(arm_roots(tmp_path / "inbox"), tmp_path / "union")
    assert (union.episodes, union.keys) == ([0, 1], ["solo/0", "solo/1"])
    assert np.array_equal(
        np.stack(_frames(tmp_path / "union")["observation.state"]),
        np.stack(_frames(tmp_path / "inbox" / "solo")["observation.state"]),
    )


def test_camera_frames_join_the_union_without_filling_the_datasets_cache(tmp_path, monkeypatch):
    """aggregate_datasets reads image frames through datasets' from_parquet, which keeps an Arrow copy
    of each file in the Hugging Face cache: per iteration, the whole union again, never removed."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")
    make_dataset(tmp_path / "inbox" / "a", [Spec("fast"), Spec("fast")], seed=1, camera=True)
    make_dataset(tmp_path / "inbox" / "b", [Spec("fast")], seed=2, camera=True)
    union = union_snapshot(arm_roots(tmp_path / "inbox"), tmp_path / "union")
    assert union.keys == ["a/0", "a/1", "b/0"]
    assert not (tmp_path / "hf-cache").exists() or not any((tmp_path / "hf-cache").rglob("*.arrow"))
    assert tmp_path / "hf-cache" == datasets.config.HF_DATASETS_CACHE  # put back
    mine = LeRobotDataset("local/union", root=tmp_path / "union")
    theirs = LeRobotDataset("local/b", root=tmp_path / "inbox" / "b")
    assert mine.num_frames == 3 * LENGTH_FAST
    for k in (0, 7, LENGTH_FAST - 1):  # arm b's episode 0 is union episode 2
        assert torch.equal(mine[2 * LENGTH_FAST + k][CAMERA], theirs[k][CAMERA])


@pytest.mark.parametrize(
    ("kind", "field"),
    [("fps", "fps"), ("names", "features.observation.state.names"), ("feature", "features.extra")],
)
def test_an_incompatible_arm_is_refused_naming_it_and_the_field(tmp_path, kind, field):
    inbox = tmp_path / "inbox"
    _add_episodes(inbox / "arm-a", 1, range(1))
    features = dict(FEATURES)
    if kind == "names":
        features["observation.state"] = {**FEATURES["observation.state"], "names": ["b", "a"]}
    if kind == "feature":
        features["extra"] = {"dtype": "float32", "shape": (1,), "names": None}
    odd = open_for_append(inbox / "arm-odd", "t/arm", 15 if kind == "fps" else 30, features, "arm", False)
    for k in range(LENGTH):
        frame = _frame(k)
        if kind == "feature":
            frame["extra"] = np.zeros(1, np.float32)
        odd.add_frame(frame)
    save_episode(odd, EpisodeInfo(DataType.AUTO, success=True))

    with pytest.raises(ArmDatasetError, match=rf"fleet arm 'arm-odd': {field} is "):
        union_snapshot(arm_roots(inbox), tmp_path / "union", tmp_path / "arms")
    assert not (tmp_path / "union").exists() and not (tmp_path / "arms").exists()  # nothing half-made

    trainer = Trainer(_config(tmp_path, inbox))
    with pytest.raises(TrainerInputError, match=rf"fleet arm 'arm-odd': {field} is "):
        trainer._check_input()  # before anything is written
    with pytest.raises(TrainerInputError, match="fleet arm 'arm-odd'"):
        trainer.iterate("nightly")
    assert not (tmp_path / "work" / "iter-0001").exists()


def test_the_fleet_intake_counts_new_episodes_by_key_and_survives_a_restart(tmp_path):
    inbox = _inbox(tmp_path, a=3, b=2)
    state = tmp_path / "work" / "state.json"
    intake = FleetIntake(inbox, state)
    assert intake.new_episodes() == ["arm-a/0", "arm-a/1", "arm-a/2", "arm-b/0", "arm-b/1"]
    intake.commit(["arm-a/0", "arm-a/1", "arm-b/0"], 1)
    with pytest.raises(ValueError, match="not <arm>/<index>"):
        intake.commit([2], 1)  # a union index is no key

    again = FleetIntake(inbox, state)  # a restarted trainer
    assert (again.state.iterations, again.state.last_version) == (1, 1)
    assert again.new_episodes() == ["arm-a/2", "arm-b/1"]
    _add_episodes(inbox / "arm-b", 2, range(2, 3))  # arm-b sends another
    assert again.new_episodes() == ["arm-a/2", "arm-b/1", "arm-b/2"]
    assert again.new_per_arm() == {"arm-a": 1, "arm-b": 2}
    assert json.loads(state.read_text()) == {
        "used_keys": ["arm-a/0", "arm-a/1", "arm-b/0"], "iterations": 1, "last_version": 1,
    }  # fmt: skip
    assert sorted(["a/10", "b/0", "a/2"], key=key_order) == ["a/2", "a/10", "b/0"]

    assert not again.wait(0)
    again.on_episode("arm-b", 2)  # the fleet server's callback wakes it
    assert again.wait(0)
    assert not again.wait(0)

    with pytest.raises(ValueError, match="fleet trainer"):
        EpisodeIntake(inbox / "arm-a", state)  # a fleet's state does not pass for one dataset's


def test_an_old_one_dataset_state_file_still_loads_and_means_the_same(tmp_path):
    data = _add_episodes(tmp_path / "data", 1, range(3))
    state = tmp_path / "work" / "state.json"
    state.parent.mkdir()
    state.write_text(json.dumps({"used": [0, 1], "iterations": 2, "last_version": 3}))
    intake = EpisodeIntake(data, state)
    assert (intake.state.iterations, intake.state.last_version) == (2, 3)
    assert intake.new_episodes() == [2]
    intake.commit([2], 4)
    assert json.loads(state.read_text()) == {"used": [0, 1, 2], "iterations": 3, "last_version": 4}
    with pytest.raises(ValueError, match="one-dataset trainer"):
        FleetIntake(tmp_path / "inbox", state)


class StubFleet:
    """FleetServer's contract (trainer/fleet.py), recording what the trainer asks of it."""

    made: ClassVar[list[StubFleet]] = []

    def __init__(self, cfg, registry_root, security=None, on_episode=None):
        self.cfg, self.registry_root, self.on_episode = cfg, registry_root, on_episode
        self.calls: list[str] = []
        self.deployed: list[int] = []
        StubFleet.made.append(self)

    def start(self):
        self.calls.append("start")
        return self

    def stop(self):
        self.calls.append("stop")

    def arms(self):
        return sorted(p.name for p in Path(self.cfg.inbox).iterdir())

    def deploy(self, version, timeout_s=None):
        self.calls.append("deploy")
        self.deployed.append(version)
        return {
            "arm-a": ArmReport("arm-a", "swapped", version),
            "arm-b": ArmReport("arm-b", "queued", 0, "mid-episode"),
        }


@pytest.fixture(autouse=True)
def _stub_fleet(monkeypatch):
    StubFleet.made = []
    monkeypatch.setattr(trainer.loop, "FleetServer", StubFleet)


def _config(tmp_path: Path, inbox: Path, **overrides) -> TrainerConfig:
    base = dict(
        work_dir=tmp_path / "work", registry=tmp_path / "models", dataset_root=tmp_path / "unused",
        fleet=FleetConfig(bind="tcp://127.0.0.1:5999", inbox=inbox), once=True, nightly_steps=2,
        batch_size=4, save_every=1000, trackers=[],
    )  # fmt: skip
    cfg = TrainerConfig(**{**base, **overrides})
    cfg.label.value.steps = 2
    cfg.gate.sim_episodes = 0
    cfg.gate.holdout_every = 2
    return cfg


def test_a_fleet_iteration_trains_on_the_union_and_deploys_to_every_arm(tmp_path, caplog):
    inbox = _inbox(tmp_path, a=3, b=2)
    cfg = _config(tmp_path, inbox)
    with caplog.at_level(logging.INFO, logger="trainer.loop"):
        Trainer(cfg).run()  # --once: what the inbox holds now

    (fleet,) = StubFleet.made
    assert fleet.calls == ["start", "deploy", "stop"]
    assert fleet.registry_root == cfg.registry and fleet.cfg is cfg.fleet
    assert fleet.on_episode is not None and fleet.on_episode.__self__.__class__ is FleetIntake
    assert fleet.deployed == [1] == ModelRegistry(cfg.registry).versions()

    folder = tmp_path / "work" / "iter-0001"
    assert json.loads((folder / "deploy.json").read_text()) == {
        "version": 1,
        "arms": {
            "arm-a": {"arm": "arm-a", "status": "swapped", "acting_version": 1, "reason": ""},
            "arm-b": {"arm": "arm-b", "status": "queued", "acting_version": 0, "reason": "mid-episode"},
        },
    }
    assert "deploy v0001 to arm arm-b: queued, acting v0000 (mid-episode)" in caplog.text

    # Labeled and trained on the union: all five episodes of both arms, the arms file beside them.
    labeled = load_source(folder / "labeled")
    assert labeled.episodes.index.tolist() == [0, 1, 2, 3, 4]
    assert read_fleet_arms(folder / "snapshot")[3].key == "arm-b/0"
    assert json.loads((folder / "episodes.json").read_text()) == [0, 1, 2, 3, 4]
    # Held out by each arm's own index (every 2nd: arm-a/1, arm-b/1 = union 1 and 4): no weight.
    weights = np.load(folder / "sample_weights.npy")
    frame_episode = labeled.episodes.index[labeled.frames.episode]
    assert np.all(weights[np.isin(frame_episode, [1, 4])] == 0)
    assert np.all(weights[~np.isin(frame_episode, [1, 4])] > 0)
    manifest = json.loads((cfg.registry / "v0001" / "manifest.json").read_text())
    assert manifest["episodes"] == [0, 2, 3]
    assert manifest["metrics"]["fleet_episodes"] == ["arm-a/0", "arm-a/2", "arm-b/0"]

    state = json.loads((tmp_path / "work" / "state.json").read_text())
    keys = ["arm-a/0", "arm-a/1", "arm-a/2", "arm-b/0", "arm-b/1"]
    assert state == {"used_keys": keys, "iterations": 1, "last_version": 1}
    assert json.loads((tmp_path / "work" / WORK_MARKER).read_text())["fleet_inbox"] == str(inbox.resolve())

    _add_episodes(inbox / "arm-a", 1, range(3, 4))
    assert Trainer(cfg).intake.new_episodes() == ["arm-a/3"]  # only the new one, after a restart


def test_arms_on_a_policy_server_get_no_deploy_the_server_does(tmp_path):
    """--fleet.deploy_to_arms=false: the arms only send episodes; the gated version goes to the
    policy server's deploy endpoint, checked against its `policy_server` key."""
    keys = tmp_path / "keys"
    make_keys(keys, ("trainer", "policy_server"))
    address, offered = free_address(), []

    def load(deployment):  # the server's loader: it saw the version, and refuses it (no model here)
        offered.append(deployment.version)
        raise CandidateRejected("test server: not loading")

    ctx = zmq.Context()
    server = HotSwap(
        ctx, address, load, lambda: (None, ""), 4, None, security=Security(keys, "policy_server")
    ).start()
    wire = WireConfig(deploy=address, deploy_key="policy_server", keys_dir=keys)
    cfg = _config(tmp_path, _inbox(tmp_path, a=3, b=2), wire=wire, deploy_timeout_s=30)
    cfg.fleet.deploy_to_arms = False
    try:
        Trainer(cfg).run()
    finally:
        server.stop()
        destroy_keyed_context(ctx)
    (fleet,) = StubFleet.made
    assert fleet.calls == ["start", "stop"] and fleet.deployed == []
    assert offered == [1] == ModelRegistry(cfg.registry).versions()


def test_a_restarted_iteration_reuses_its_union(tmp_path):
    inbox = _inbox(tmp_path, a=2, b=1)
    cfg = _config(tmp_path, inbox)
    Trainer(cfg)._claim_work_dir()
    folder = tmp_path / "work" / "iter-0001"
    folder.mkdir()
    assert Trainer(cfg)._snapshot(folder) == [0, 1, 2]
    made = tree(folder / "snapshot")
    _add_episodes(inbox / "arm-a", 1, range(2, 3))  # arrives while the iteration is killed
    assert Trainer(cfg)._snapshot(folder) == [0, 1, 2]  # pinned: the same episodes, not rebuilt
    assert tree(folder / "snapshot") == made
    assert Trainer(cfg)._intake_ids(folder, [0, 1, 2]) == ["arm-a/0", "arm-a/1", "arm-b/0"]
    assert fleet_arms_path(folder / "snapshot").exists()


def test_the_inbox_is_kept_apart_from_work_dir_and_registry_and_owns_the_work_dir(tmp_path):
    inbox = tmp_path / "inbox"
    with pytest.raises(TrainerInputError, match=r"work_dir: .* must not be, hold or sit inside fleet.inbox"):
        check_paths(_config(tmp_path, inbox, work_dir=inbox / "work"))
    with pytest.raises(TrainerInputError, match=r"registry: .* must not be, hold or sit inside fleet.inbox"):
        check_paths(_config(tmp_path, inbox, registry=inbox / "models"))
    no_fleet = FleetConfig(inbox=tmp_path / "w" / "x")  # no bind: the inbox is not used, nor checked
    check_paths(TrainerConfig(work_dir=tmp_path / "w", registry=tmp_path / "r", fleet=no_fleet))

    work = tmp_path / "work"
    work.mkdir()  # a one-dataset trainer's work_dir
    (work / WORK_MARKER).write_text(json.dumps({"dataset_root": str(tmp_path / "data")}))
    with pytest.raises(TrainerInputError, match=r"work on the dataset .*data, not on the fleet inbox"):
        Trainer(_config(tmp_path, inbox))
