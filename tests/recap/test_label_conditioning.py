"""`flywheel label --conditioning.policy=DIR`: the policy's conditioning strength on the new labels,
in the labels report; a policy it cannot measure is refused before anything is done."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
from lerobot.configs.types import FeatureType, PolicyFeature
from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
from lerobot.policies.factory import make_pre_post_processors

from flywheel.contracts.dataset import labels_path
from flywheel.policies.pi_star_recap import PiStarRECAPConfig, PiStarRECAPPolicy
from flywheel.recap.labeling import conditioning_line, label_main, run_labeling
from tests.recap.conftest import label_config
from tests.recap.synth import make_dataset, mixed_specs

# Cheap labeling: the labels' quality is not what is tested here.
CHEAP = {"value": {"steps": 50, "cross_fit_folds": 2}}


@pytest.fixture(scope="module")
def small_root(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("cond") / "ds", mixed_specs(1))


def save_tiny_policy(dataset_root: Path, out: Path, **overrides) -> Path:
    """An untrained tiny pi_star_recap for the dataset's state and action, with its processors
    (a pretrained_model folder, as the trainer saves it)."""
    meta = LeRobotDatasetMetadata("local/synth", root=dataset_root)
    shape = {key: tuple(meta.features[key]["shape"]) for key in ("observation.state", "action")}
    config = PiStarRECAPConfig(
        preset="tiny",
        device="cpu",
        chunk_size=4,
        n_action_steps=4,
        input_features={"observation.state": PolicyFeature(FeatureType.STATE, shape["observation.state"])},
        output_features={"action": PolicyFeature(FeatureType.ACTION, shape["action"])},
        **overrides,
    )
    pre, post = make_pre_post_processors(config, dataset_stats=meta.stats)
    for part in (PiStarRECAPPolicy(config), pre, post):
        part.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def tiny_policy(small_root, tmp_path_factory) -> Path:
    return save_tiny_policy(small_root, tmp_path_factory.mktemp("policy") / "pretrained_model")


def test_the_labels_report_carries_the_conditioning_strength(small_root, tiny_policy, tmp_path, capsys):
    out = tmp_path / "labeled"
    cfg = label_config(
        small_root, out, **CHEAP, conditioning={"policy": tiny_policy, "frames": 24, "draws": 1}
    )
    labels = run_labeling(cfg)
    entry = labels.report["conditioning"]
    assert entry["policy"] == str(tiny_policy) and "error" not in entry
    assert entry["frames"] == 24 and entry["positive_frames"] == 12 and entry["draws"] == 1
    for key in ("loss_true", "loss_flipped", "loss_dropped", "loss_gap", "relative_gap"):
        assert math.isfinite(entry[key]), key
    assert entry["loss_gap"] == pytest.approx(entry["loss_flipped"] - entry["loss_true"], abs=1e-5)
    assert entry["action_difference"] is None  # sample_actions off by default
    report = json.loads(labels_path(out).read_text())
    assert report["conditioning"] == pytest.approx(entry)
    assert report["config"]["conditioning"]["policy"] == str(tiny_policy)
    printed = capsys.readouterr().out
    assert conditioning_line(entry) in printed
    assert "loss with flipped indicator minus true, as share of true" in printed


def _copy_with_config(policy: Path, to: Path, **edits) -> Path:
    shutil.copytree(policy, to)
    config = json.loads((to / "config.json").read_text())
    for key, value in edits.items():
        config[key] = value
    (to / "config.json").write_text(json.dumps(config))
    return to


@pytest.mark.parametrize("case", ["missing", "no_weights", "not_pi_star_recap", "iql", "other_state"])
def test_a_policy_that_cannot_be_measured_is_refused_before_anything(
    small_root, tiny_policy, tmp_path, case, caplog
):
    if case == "missing":
        policy, words = tmp_path / "nowhere", ["not a folder"]
    elif case == "no_weights":
        policy = _copy_with_config(tiny_policy, tmp_path / "p")
        (policy / "model.safetensors").unlink()
        words = ["model.safetensors"]
    elif case == "not_pi_star_recap":
        policy, words = _copy_with_config(tiny_policy, tmp_path / "p", type="act"), ["'act'"]
    elif case == "iql":
        policy = _copy_with_config(tiny_policy, tmp_path / "p", advantage_estimator="iql")
        words = ["advantage_estimator='iql'"]
    else:
        state = {"observation.state": {"type": "STATE", "shape": [5]}}
        policy = _copy_with_config(tiny_policy, tmp_path / "p", input_features=state)
        words = ["observation.state", "[5]", "[4]"]
    out = tmp_path / "labeled"
    cfg = label_config(small_root, out, **CHEAP, conditioning={"policy": policy})
    with pytest.raises(ValueError, match=r"conditioning\.policy") as error:
        run_labeling(cfg)
    message = str(error.value)
    assert str(policy) in message and all(w in message for w in words), message
    assert not out.exists() and not list(tmp_path.glob(".labeled.tmp-*"))
    # the CLI's entry point: exit 2, the field named in the log
    assert label_main(cfg) == 2
    assert "conditioning.policy" in caplog.text and not out.exists()


def test_without_a_policy_there_is_no_conditioning_entry(labeled):
    out, labels = labeled["progress"]
    assert "conditioning" not in labels.report
    report = json.loads(labels_path(out).read_text())
    assert "conditioning" not in report
    assert report["config"]["conditioning"]["policy"] is None


def test_frames_and_draws_must_be_positive(small_root, tmp_path):
    with pytest.raises(ValueError, match=r"conditioning\.frames"):
        label_config(small_root, tmp_path / "o", conditioning={"frames": 0})
