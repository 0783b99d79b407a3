"""Datasets recorded by stock LeRobot tools, labeled by `flywheel label` and trained on.

Two stock datasets, neither with the flywheel's episode columns (docs/dataset.md, "Datasets from
stock LeRobot tools"):

- lerobot-rollout --strategy.type=dagger. The stock CLI itself runs on the sim robot now (the sim's
  features are named `*.pos`/`*.vel`, the only robot features its rollout context routes to the policy):
  tests/test_stock_rollout.py runs the real console script, the DAgger strategy included, with its keys
  typed into a pseudo-terminal, and labels that dataset. What still does not work there: returning the
  arm to its initial position (the strategies send the observed `.pos` values as an action; the sim,
  commanded in `.vel`, refuses it and the strategy logs a warning), and DAgger's pause holds the arm by
  resending the policy's last command, which moves the sim's hand on. What a real run cannot give is a
  fixed pattern: where the policy's and the operator's frames fall depends on when the keys land, and an
  episode only ends at a correction's end (corrections-only mode) or after minutes (continuous mode). So
  this test drives the same writer code the strategy uses, with the sim robot, the sim operator
  (teleop.type=sim_operator) and the tiny pi_star_recap policy, to get exact episodes: the dataset
  created as build_rollout_context creates it for DAgger (LeRobotDataset.create with the robot's
  features plus `intervention` bool (1,), a `rollout_` repo name), each frame built as
  DAggerStrategy._run_continuous / _run_corrections_only build it (build_dataset_frame for the
  observation and the action, `task`, `intervention`), dataset.add_frame, dataset.save_episode and, at
  the end, dataset.finalize. Episodes: policy - operator correction - policy (continuous mode), policy
  only, and one correction window alone (corrections-only mode).
- lerobot-record (the real console script, as tests/test_stock_tools.py runs it): no `intervention`
  either. Labeled with --reward.success_episodes; without it the error names meta/episodes.success.

Each source is hashed before and after: labeling and training leave it byte-identical.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from flywheel.contracts.dataset import (
    DATA_TYPE,
    DONE,
    INTERVENTION,
    NUM_INTERVENTION_FRAMES,
    POLICY_VERSION,
    POLICY_VERSIONS,
    REWARD,
    SUCCESS,
    episode_files,
    read_episode_table,
)
from flywheel.recap.source import LabelInputError, StockFields, check_dataset, load_source
from robots.sim.tasks import ACTION_NAMES
from tests.test_stock_tools import _run

TASK = "push the puck to the goal"
FPS = 30
# (driver, frames) runs per episode: P = the policy, O = the operator (intervention=True).
DAGGER_EPISODES = [[("P", 6), ("O", 5), ("P", 5)], [("P", 10)], [("O", 8)]]


@pytest.fixture(autouse=True)
def _root_logging():
    """`flywheel.cli.main` points the root logger at this test's stderr; the next test must not use it."""
    handlers = logging.root.handlers[:]
    yield
    logging.root.handlers[:] = handlers


def _hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _record_dagger(root: Path, policy_dir: Path) -> None:
    from lerobot.common.control_utils import predict_action
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import get_policy_class, make_pre_post_processors
    from lerobot.utils.constants import ACTION, OBS_STR
    from lerobot.utils.feature_utils import build_dataset_frame, hw_to_dataset_features

    from robots.sim import SimArm, SimArmConfig
    from teleop.sim_operator import SimOperator, SimOperatorConfig

    robot = SimArm(SimArmConfig(task="push-v3", seed=3, id="test-stock-dagger"))
    operator = SimOperator(SimOperatorConfig(observation_source="local"))
    policy = get_policy_class("pi_star_recap").from_pretrained(policy_dir).eval()
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(policy_dir))
    # build_rollout_context: action + observation features, plus `intervention` for DAgger.
    features = {
        **hw_to_dataset_features(robot.action_features, ACTION),
        **hw_to_dataset_features(robot.observation_features, OBS_STR),
        "intervention": {"dtype": "bool", "shape": (1,), "names": None},
    }
    dataset = LeRobotDataset.create(
        "local/rollout_sim", FPS, root=root, robot_type=robot.name, features=features, use_videos=False
    )
    robot.connect()
    operator.connect()
    try:
        for runs in DAGGER_EPISODES:
            policy.reset()
            for driver, frames in runs:
                for _ in range(frames):
                    obs = robot.get_observation()
                    obs_frame = build_dataset_frame(features, obs, prefix=OBS_STR)
                    if driver == "O":
                        action = operator.get_action()
                    else:
                        with torch.inference_mode():
                            tensor = predict_action(
                                obs_frame, policy, torch.device("cpu"), pre, post, False, TASK
                            )
                        action = dict(zip(ACTION_NAMES, tensor.reshape(-1).tolist(), strict=True))
                    robot.send_action(action)
                    action_frame = build_dataset_frame(features, action, prefix=ACTION)
                    dataset.add_frame(
                        {
                            **obs_frame,
                            **action_frame,
                            "task": TASK,
                            "intervention": np.array([driver == "O"], dtype=bool),
                        }
                    )
            dataset.save_episode()
    finally:
        dataset.finalize()
        operator.disconnect()
        robot.disconnect()


@pytest.fixture(scope="module")
def dagger(tmp_path_factory) -> Path:
    from benchmarks.fixtures import tiny_sim_checkpoint

    tmp = tmp_path_factory.mktemp("dagger")
    policy = tiny_sim_checkpoint(tmp / "policy")
    _record_dagger(tmp / "dataset", policy)
    return tmp / "dataset"


@pytest.fixture(scope="module")
def recorded(tmp_path_factory) -> Path:
    """Two short episodes by stock lerobot-record with the sim robot and the sim operator."""
    tmp = tmp_path_factory.mktemp("record")
    root = tmp / "dataset"
    _run(
        "lerobot-record",
        "--robot.type=sim",
        "--robot.task=push-v3",
        "--robot.seed=5",
        "--teleop.type=sim_operator",
        "--teleop.observation_source=local",
        "--dataset.repo_id=local/sim",
        f"--dataset.root={root}",
        f"--dataset.single_task={TASK}",
        "--dataset.num_episodes=2",
        "--dataset.episode_time_s=0.5",
        "--dataset.reset_time_s=0",
        f"--dataset.fps={FPS}",
        "--dataset.push_to_hub=false",
        "--display_data=false",
        "--play_sounds=false",
        cwd=tmp,
    )
    return root


def _label(source: Path, out: Path, *flags: str) -> int:
    from flywheel.cli import main

    return main(
        [
            "label",
            f"--dataset.root={source}",
            f"--output.root={out}",
            "--value.steps=20",
            "--value.cross_fit_folds=1",
            "--advantage.n_step=5",
            *flags,
        ]
    )


def _episodes(root: Path) -> pd.DataFrame:
    return read_episode_table(episode_files(root))


def test_dagger_dataset_features(dagger):
    info = load_source(dagger, stock=StockFields(assume_success=True)).info
    assert info["features"][INTERVENTION]["dtype"] == "bool"
    for missing in (POLICY_VERSION, REWARD, DONE):
        assert missing not in info["features"]
    assert DATA_TYPE not in _episodes(dagger) and SUCCESS not in _episodes(dagger)


def test_dagger_dataset_is_refused_without_success(dagger, tmp_path, capfd):
    with pytest.raises(LabelInputError, match=r"meta/episodes\.success: missing"):
        load_source(dagger)
    with pytest.raises(LabelInputError, match=r"meta/episodes\.success: missing"):
        check_dataset(dagger)  # the trainer's check of its dataset_root
    assert check_dataset(dagger, StockFields(assume_success=True))["features"][INTERVENTION]
    assert _label(dagger, tmp_path / "out") == 2
    assert "meta/episodes.success: missing" in capfd.readouterr().err
    assert not (tmp_path / "out").exists()


def test_dagger_dataset_labeled_and_trained(dagger, tmp_path):
    from trainer.train_policy import TrainPolicyConfig, train_policy

    before = _hashes(dagger)
    out = tmp_path / "labeled"
    assert _label(dagger, out, "--reward.success_episodes=[0,2]") == 0
    episodes = _episodes(out)
    assert episodes[DATA_TYPE].tolist() == ["intervention", "auto", "intervention"]
    assert episodes[SUCCESS].tolist() == [True, False, True]
    assert episodes[NUM_INTERVENTION_FRAMES].tolist() == [5, 0, 8]
    assert [list(v) for v in episodes[POLICY_VERSIONS]] == [[0, 1], [1], [0]]
    source = load_source(out)  # the labeled copy is a complete flywheel dataset: no flags needed
    assert not source.derived_frames and not source.derived_episodes
    versions = pd.concat(
        pd.read_parquet(p, columns=[POLICY_VERSION, INTERVENTION]) for p in out.glob("data/*/*")
    )
    np.testing.assert_array_equal(versions[POLICY_VERSION].to_numpy() == 0, versions[INTERVENTION].to_numpy())
    assert source.frames.intervention.sum() == 13
    frames = pd.concat(pd.read_parquet(p, columns=["index", REWARD, DONE]) for p in out.glob("data/*/*"))
    frames = frames.sort_values("index")
    last = np.cumsum([sum(n for _, n in runs) for runs in DAGGER_EPISODES]) - 1  # each episode's last frame
    np.testing.assert_array_equal(np.flatnonzero(frames[DONE].to_numpy()), last)
    np.testing.assert_array_equal(np.flatnonzero(frames[REWARD].to_numpy()), last[[0, 2]])  # the successes
    pretrained = train_policy(
        TrainPolicyConfig(
            dataset_root=out, output_dir=tmp_path / "train", steps=2, batch_size=4, save_every=2, trackers=[]
        )
    )
    assert (pretrained / "model.safetensors").exists()
    assert _hashes(dagger) == before


def test_record_dataset_refused_without_success(recorded, tmp_path):
    with pytest.raises(LabelInputError, match=r"meta/episodes\.success: missing.*--reward\.success_episodes"):
        load_source(recorded)
    assert _label(recorded, tmp_path / "out") == 2
    assert not (tmp_path / "out").exists()


def test_record_dataset_labeled_as_demos(recorded, tmp_path):
    before = _hashes(recorded)
    out = tmp_path / "labeled"
    assert _label(recorded, out, "--reward.success_episodes=[1]") == 0
    episodes = _episodes(out)
    assert episodes[DATA_TYPE].tolist() == ["demo", "demo"]
    assert episodes[SUCCESS].tolist() == [False, True]
    assert [list(v) for v in episodes[POLICY_VERSIONS]] == [[0], [0]]
    source = load_source(out)
    assert source.frames.intervention.all()  # the operator drove every frame, as `flywheel record` tags
    assert _hashes(recorded) == before
    # --reward.assume_success and --dataset.driver=policy (a stock rollout without `intervention`).
    assert _label(recorded, tmp_path / "auto", "--reward.assume_success=true", "--dataset.driver=policy") == 0
    auto = _episodes(tmp_path / "auto")
    assert auto[DATA_TYPE].tolist() == ["auto", "auto"] and auto[SUCCESS].all()
    assert _hashes(recorded) == before


@pytest.mark.parametrize(
    "stock, success, expected", [("dagger", "[0,2]", [True, False, True]), ("recorded", "[1]", [False, True])]
)
def test_the_trainer_takes_a_stock_dataset(stock, success, expected, request, tmp_path, capsys):
    from flywheel.cli import main

    data = request.getfixturevalue(stock)
    before = _hashes(data)
    work, registry = tmp_path / "work", tmp_path / "models"
    code = main([
        "trainer", f"--dataset_root={data}", "--once=true", f"--work_dir={work}", f"--registry={registry}",
        "--nightly_steps=2", "--batch_size=4", "--label.value.steps=2", "--label.value.cross_fit_folds=1",
        "--gate.sim_episodes=0", "--deploy=false", "--trackers=[]",
        f"--label.reward.success_episodes={success}",
    ])  # fmt: skip
    assert code == 0, capsys.readouterr().err[-3000:]
    assert _episodes(work / "iter-0001" / "labeled")[SUCCESS].tolist() == expected
    assert list(registry.glob("v0001*"))
    assert _hashes(data) == before
