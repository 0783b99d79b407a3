"""Label a small dataset recorded from the MetaWorld sim with the flywheel CLI (in lockstep)."""

from pathlib import Path

import numpy as np
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset

from flywheel import cli
from flywheel.contracts.dataset import FrameType
from flywheel.recap.labeling import run_labeling
from flywheel.recap.source import load_source
from tests.netutil import free_address
from tests.recap.conftest import label_config, tree_hashes


def flywheel(*args: str) -> None:
    """The CLI in this process (a subprocess would pay ~6 s of imports per call)."""
    # Own ports: the default ones may be held by another flywheel on this machine.
    wire = [f"--wire.{name}={free_address()}" for name in ("daemon_events", "teleop_state", "deploy")]
    assert cli.main([*args, "--robot", "sim", "--fps=0", *wire]) == 0


def test_label_a_sim_dataset(tmp_path: Path):
    root = tmp_path / "sim"
    flywheel("record", "--episodes=2", f"--dataset.root={root}", "--teleop.skill=good")
    flywheel("record", "--episodes=1", f"--dataset.root={root}", "--teleop.skill=drift", "--robot.seed=50")
    flywheel(
        "rollout",
        "--local_teleop=true",
        "--episodes=1",
        f"--dataset.root={root}",
        "--policy.baseline=random",
        "--robot.seed=100",
    )
    before = tree_hashes(root)
    out = tmp_path / "labeled"
    labels = run_labeling(label_config(root, out, value={"cross_fit_folds": 2}))

    assert tree_hashes(root) == before
    source = load_source(root)
    assert set(source.episodes.data_type) == {"demo", "intervention"}
    assert labels.positive[source.frame_data_type_ids() == FrameType.INTERVENTION].all()
    assert abs(labels.positive[~labels.forced].mean() - 0.10) < 0.02
    assert labels.report["label_quality"] is not None  # good and drift demos are both present
    dataset = LeRobotDataset("local/labeled", root=out)
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=32, shuffle=True)))
    assert batch["observation.advantage_positive"].shape == (32,)
    assert np.isin(batch["observation.advantage_positive"].numpy(), [0.0, 1.0]).all()
