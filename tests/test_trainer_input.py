"""`flywheel trainer` checks its input and its folders before it writes anything, and never removes or
overwrites what it did not make: a stock LeRobot dataset is refused naming the user's path, a
work_dir or registry overlapping the dataset or holding other files is refused, a half-made snapshot
is removed, and training never writes into the dataset or over an earlier run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

import flywheel.contracts.dataset
from flywheel.cli import main as flywheel_main
from flywheel.contracts.dataset import DataType, EpisodeInfo, open_for_append, save_episode
from tests.test_dataset import FEATURES, _frame, stock_dataset, tree
from trainer.loop import WORK_MARKER, Trainer, TrainerConfig
from trainer.train_policy import TrainPolicyConfig, train_policy


@pytest.fixture(autouse=True)
def _root_logging():
    """`flywheel.cli.main` points the root logger at this test's stderr; the next test must not use it."""
    handlers = logging.root.handlers[:]
    yield
    logging.root.handlers[:] = handlers


def _trainer(data: Path, work: Path, registry: Path, capsys) -> tuple[int, list[str]]:
    """One `flywheel trainer --once=true` run in this process: its exit code and its stderr lines."""
    code = flywheel_main([
        "trainer", f"--dataset_root={data}", "--once=true", f"--work_dir={work}", f"--registry={registry}",
        "--nightly_steps=2", "--label.value.steps=2", "--gate.sim_episodes=0", "--deploy=false",
        "--trackers=[]",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err.strip().splitlines()


def _flywheel_dataset(root: Path, episodes: int = 2) -> Path:
    """A small dataset as the rollout daemon writes it (one data file per episode, flywheel columns)."""
    dataset = open_for_append(root, "t/x", 30, FEATURES, "arm", False)
    for _ in range(episodes):
        for k in range(4):
            dataset.add_frame(_frame(k))
        save_episode(dataset, EpisodeInfo(DataType.AUTO, success=True))
    return root


@pytest.mark.parametrize("lengths", [(3, 4, 5), (5,)], ids=["episodes-sharing-a-file", "one-episode"])
def test_a_stock_dataset_is_refused_naming_it_and_nothing_is_made(tmp_path, capsys, lengths):
    data = stock_dataset(tmp_path / "stock", lengths)  # what stock lerobot-record writes
    before = tree(data)
    work, registry = tmp_path / "work", tmp_path / "models"
    for _ in range(2):  # a rerun gives the same clear refusal, not a different error
        code, lines = _trainer(data, work, registry, capsys)
        assert code == 2
        errors = [line for line in lines if line.startswith("flywheel trainer:")]
        # Its missing flywheel fields are derived (docs/dataset.md), but not its outcome.
        assert len(errors) == 1 and errors[0].startswith("flywheel trainer: meta/episodes.success: missing")
        assert errors[0].endswith(f"in the dataset at {data}")
        assert not list(work.glob("iter-*")) and not list(tmp_path.rglob("snapshot"))
        assert not registry.exists()
    assert tree(data) == before


@pytest.mark.parametrize(
    "work, registry, flag",
    [
        ("stock", "models", "work_dir"),  # work_dir is the dataset
        ("stock/trainer", "models", "work_dir"),  # inside it
        (".", "models", "work_dir"),  # holding it
        ("work", "stock", "registry"),
        ("work", "stock/models", "registry"),
        ("work", "work", "registry"),  # the registry is the work_dir
    ],
)
def test_folders_overlapping_the_dataset_or_each_other_are_refused(tmp_path, capsys, work, registry, flag):
    data = stock_dataset(tmp_path / "stock")
    before = tree(tmp_path)
    code, lines = _trainer(data, tmp_path / work, tmp_path / registry, capsys)
    assert code == 2
    named = tmp_path / (work if flag == "work_dir" else registry)
    assert lines[-1].startswith(f"flywheel trainer: {flag}: {named}")
    assert tree(tmp_path) == before  # nothing written, nothing removed


def test_a_work_dir_the_trainer_did_not_make_is_refused_and_left_alone(tmp_path, capsys):
    data = stock_dataset(tmp_path / "stock")
    work = tmp_path / "work"
    (work / "iter-0001" / "snapshot").mkdir(parents=True)
    # Before, the trainer took this for a snapshot of its own it was interrupted making, and removed it.
    (work / "iter-0001" / "snapshot" / "precious.txt").write_text("mine")
    code, lines = _trainer(data, work, tmp_path / "models", capsys)
    assert code == 2
    assert lines[-1].startswith(f"flywheel trainer: work_dir: {work} is not empty and not the trainer's")
    (work / "notes.txt").write_text("mine")
    code, lines = _trainer(data, work, tmp_path / "models", capsys)
    assert code == 2 and "notes.txt" in lines[-1]
    assert (work / "iter-0001" / "snapshot" / "precious.txt").read_text() == "mine"
    assert (work / "notes.txt").read_text() == "mine"


def test_a_work_dir_of_another_dataset_is_refused(tmp_path, capsys):
    data = stock_dataset(tmp_path / "stock")
    work = tmp_path / "work"
    work.mkdir()
    (work / WORK_MARKER).write_text(json.dumps({"dataset_root": str(tmp_path / "other")}))
    (work / "state.json").write_text(json.dumps({"used": [0, 1], "iterations": 1, "last_version": 1}))
    code, lines = _trainer(data, work, tmp_path / "models", capsys)
    assert code == 2
    assert lines[-1].startswith(f"flywheel trainer: work_dir: {work} holds the trainer's work on the dataset")
    assert str(tmp_path / "other") in lines[-1]


def test_the_trainer_s_own_work_dir_is_taken_up_again(tmp_path):
    data = _flywheel_dataset(tmp_path / "data")
    work = tmp_path / "work"
    (work / "iter-0002").mkdir(parents=True)  # what a trainer from before the marker leaves
    (work / "state.json").write_text(json.dumps({"used": [0], "iterations": 1, "last_version": None}))
    cfg = TrainerConfig(dataset_root=data, work_dir=work, registry=tmp_path / "models", deploy=False)
    assert Trainer(cfg).intake.state.iterations == 1
    Trainer(cfg)._claim_work_dir()
    assert json.loads((work / WORK_MARKER).read_text())["dataset_root"] == str(data.resolve())
    assert Trainer(cfg).intake.new_episodes() == [1]  # marked as this dataset's: still accepted


def test_a_snapshot_that_fails_half_way_leaves_nothing_and_is_made_again(tmp_path, monkeypatch):
    data = _flywheel_dataset(tmp_path / "data")
    before = tree(data)
    cfg = TrainerConfig(
        dataset_root=data, work_dir=tmp_path / "work", registry=tmp_path / "models", deploy=False
    )

    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(
        flywheel.contracts.dataset.shutil, "copy2", disk_full
    )  # after the episode files are linked
    with pytest.raises(OSError, match="No space left"):
        Trainer(cfg).iterate("nightly")
    assert not (tmp_path / "work" / "iter-0001").exists()  # a half-made snapshot was left behind before
    assert tree(data) == before

    monkeypatch.undo()
    folder = tmp_path / "work" / "iter-0001"
    folder.mkdir()
    assert Trainer(cfg)._snapshot(folder) == [0, 1]
    assert json.loads((folder / "episodes.json").read_text()) == [0, 1]


def _train_config(data: Path, out: Path, **overrides) -> TrainPolicyConfig:
    base = dict(dataset_root=data, output_dir=out, steps=1, batch_size=2, device="cpu", trackers=[])
    return TrainPolicyConfig(**{**base, **overrides})


def test_training_never_writes_into_the_dataset_or_over_an_earlier_run(tmp_path):
    data = _flywheel_dataset(tmp_path / "data")
    before = tree(data)
    for out in (data, data / "train"):
        with pytest.raises(ValueError, match=rf"output_dir: {out} must not be the dataset"):
            train_policy(_train_config(data, out))
    assert tree(data) == before

    out = tmp_path / "run"
    (out / "pretrained_model").mkdir(parents=True)
    (out / "pretrained_model" / "model.safetensors").write_bytes(b"an earlier run's weights")
    with pytest.raises(FileExistsError, match=rf"output_dir: {out} already holds a training run"):
        train_policy(_train_config(data, out))
    assert (out / "pretrained_model" / "model.safetensors").read_bytes() == b"an earlier run's weights"
    assert len(list(out.rglob("*"))) == 2  # nothing else written
