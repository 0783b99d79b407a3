"""Every seed field that would do nothing says so: the field, its value, and what is used instead.

Issue 18, item 5: `--policy.vlm_model_name=google/gemma-2b-it` built a random model without a word,
`--policy.iql_*` did nothing under the default recap estimator, and the 3.35 B pi05 preset was built
on a CPU with only LeRobot's generic warning.
"""

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.configs.policies import PreTrainedConfig
from lerobot.configs.types import FeatureType, PolicyFeature

from flywheel.policies.pi_star_recap import PiStarRECAPConfig, PiStarRECAPPolicy, build_checks, config_checks
from flywheel.policies.pi_star_recap import modeling_pi_star_recap as modeling

# config_checks.py and build_checks.py both log under the package.
LOGGERS = ("flywheel.policies.pi_star_recap.config_checks", "flywheel.policies.pi_star_recap.build_checks")
STATE_DIM, ACTION_DIM, CHUNK = 6, 3, 4
HUB_NAME = "google/gemma-2b-it"  # the seed's value: a hub name, never downloaded here


def tiny_config(**overrides) -> PiStarRECAPConfig:
    kwargs = {
        "preset": "tiny",
        "device": "cpu",
        "chunk_size": CHUNK,
        "n_action_steps": CHUNK,
        "input_features": {"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))},
        "output_features": {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
    }
    return PiStarRECAPConfig(**{**kwargs, **overrides})


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name in LOGGERS and r.levelno == logging.WARNING]


@pytest.fixture(autouse=True)
def _capture(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch):
    for logger in LOGGERS:
        caplog.set_level(logging.WARNING, logger=logger)
    # The batch warnings are once per process; each test starts from none given.
    monkeypatch.setattr(build_checks, "_WARNED_BATCH", set())


# The seed's values, which equal the IQL defaults: a typed value must speak even so.
SEED_IQL_FIELDS = {
    "iql_expectile": 0.7,
    "iql_temperature": 0.5,
    "iql_discount": 0.99,
    "q_lr": 3e-4,
    "v_lr": 3e-4,
}


@pytest.mark.parametrize(("field", "value"), SEED_IQL_FIELDS.items())
def test_iql_field_under_recap_warns_with_its_name_and_value(caplog, field, value):
    config = tiny_config(**{field: value})
    (message,) = warnings_of(caplog)
    assert f"{field}={value!r} has no effect with advantage_estimator='recap'" in message
    assert "--policy.advantage_estimator=iql" in message
    assert getattr(config, field) is None  # the saved config records that it was not used


def test_iql_fields_act_under_iql_without_a_word(caplog):
    config = tiny_config(advantage_estimator="iql", iql_expectile=0.9)
    assert warnings_of(caplog) == []
    assert config.iql_expectile == 0.9  # given: kept
    assert (config.iql_temperature, config.iql_discount, config.q_lr, config.v_lr) == (0.5, 0.99, 3e-4, 3e-4)
    policy = PiStarRECAPPolicy(config)
    assert {g["name"]: g["lr"] for g in policy.get_optim_params()}["q"] == 3e-4


def test_indicator_fields_under_iql_warn(caplog):
    config = tiny_config(advantage_estimator="iql", cfg_scale=1.5)
    (message,) = warnings_of(caplog)
    assert "cfg_scale=1.5 has no effect with advantage_estimator='iql'" in message
    assert config.cfg_scale == 1.0


def test_defaults_and_reloaded_checkpoints_are_silent(caplog, tmp_path):
    """Warning on every construction would be noise in every test and in the daemon's hot-swaps."""
    PiStarRECAPPolicy(tiny_config()).save_pretrained(tmp_path / "default")
    PiStarRECAPPolicy(tiny_config(vlm_model_name=HUB_NAME, iql_expectile=0.7)).save_pretrained(
        tmp_path / "seed"
    )
    caplog.clear()
    for name in ("default", "seed"):
        PreTrainedConfig.from_pretrained(tmp_path / name)
        PiStarRECAPPolicy.from_pretrained(tmp_path / name)
    assert warnings_of(caplog) == []


def test_a_config_saved_before_the_iql_defaults_became_none_reloads_silently(caplog):
    old = {name: default for name, (default, _) in config_checks.IQL_ONLY.items()}
    config = tiny_config(**old)
    assert warnings_of(caplog) == []
    assert all(getattr(config, name) is None for name in old)


def test_hub_vlm_model_name_says_the_model_starts_random(caplog):
    config = tiny_config(vlm_model_name=HUB_NAME)
    assert warnings_of(caplog) == []  # a config alone builds nothing
    PiStarRECAPPolicy(config)
    (message,) = warnings_of(caplog)
    assert f"vlm_model_name={HUB_NAME!r} is not a local directory" in message
    assert "random initialisation" in message and "--policy.base_model_path" in message


def test_base_model_path_wins_over_vlm_model_name_and_needs_a_tokenizer(caplog, tmp_path):
    PiStarRECAPPolicy(tiny_config()).save_pretrained(tmp_path / "base")
    base = str(tmp_path / "base")
    PiStarRECAPPolicy(tiny_config(vlm_model_name=HUB_NAME, base_model_path=base))
    not_read, tokenizer = warnings_of(caplog)
    assert f"vlm_model_name={HUB_NAME!r} is not read: base_model_path={base!r}" in not_read
    assert "tokenizer_path=None" in tokenizer and "byte tokenizer" in tokenizer


def test_freezing_a_random_vlm_warns(caplog):
    PiStarRECAPPolicy(tiny_config(freeze_vlm=True))
    (message,) = warnings_of(caplog)
    assert "freeze_vlm=True freezes a VLM prefix that was randomly initialised" in message


def test_pi05_on_a_cpu_says_so_before_building(caplog, monkeypatch):
    """The 3.35 B model is never built: the builder is replaced by one that records what was said."""
    said_before: list[list[str]] = []

    class Built(Exception):
        pass

    def builder(config):
        said_before.append(warnings_of(caplog))
        raise Built

    monkeypatch.setattr(modeling, "_build_network", builder)
    with pytest.raises(Built):
        PiStarRECAPPolicy(PiStarRECAPConfig(device="cpu"))
    (before,) = said_before
    message = next(m for m in before if "on the CPU" in m)
    assert "3.35 B-parameter model (preset='pi05')" in message and "--policy.preset=tiny" in message


def test_tiny_on_a_cpu_is_silent(caplog):
    PiStarRECAPPolicy(tiny_config())
    assert warnings_of(caplog) == []


def test_unlabeled_training_batch_warns_once(caplog):
    policy = PiStarRECAPPolicy(tiny_config())
    batch = {
        "observation.state": torch.randn(2, STATE_DIM),
        "action": torch.randn(2, CHUNK, ACTION_DIM),
        "task": ["push"] * 2,
    }
    policy.train()
    policy.forward(batch)
    policy.forward(batch)
    data_type, advantage = warnings_of(caplog)
    assert "demo_weight=1.0, auto_weight=1.0, intervention_weight=2.0" in data_type
    assert "balance_data_types=True have no effect on the loss" in data_type
    assert "no advantage label" in advantage and "'Advantage: positive'" in advantage


def make_dataset(root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    ds = LeRobotDataset.create(repo_id="local/seed", fps=30, root=root, features=features, use_videos=False)
    rng = np.random.default_rng(0)
    for _ in range(2):
        for _ in range(10):
            state, action = rng.standard_normal(STATE_DIM), rng.standard_normal(ACTION_DIM)
            ds.add_frame(
                {
                    "observation.state": state.astype(np.float32),
                    "action": action.astype(np.float32),
                    "task": "t",
                }
            )
        ds.save_episode()
    ds.finalize()


def test_stock_lerobot_train_with_the_seed_flags_says_what_they_do(tmp_path):
    """The seed's command line, made to run here (local dataset, tiny, 1 step): each flag speaks."""
    make_dataset(tmp_path / "ds")
    cmd = [
        str(Path(sys.executable).parent / "lerobot-train"),
        "--policy.type=pi_star_recap",
        "--policy.discover_packages_path=flywheel.policies.pi_star_recap",
        "--dataset.repo_id=your_username/your_dataset",
        f"--dataset.root={tmp_path / 'ds'}",
        f"--output_dir={tmp_path / 'out'}",
        f"--policy.vlm_model_name={HUB_NAME}",
        "--policy.iql_expectile=0.7",
        "--policy.iql_temperature=0.5",
        "--policy.preset=tiny",
        "--policy.push_to_hub=false",
        "--policy.device=cpu",
        "--wandb.enable=false",
        "--batch_size=2",
        "--steps=1",
        "--num_workers=0",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    for said in (
        "iql_expectile=0.7 has no effect with advantage_estimator='recap'",
        "iql_temperature=0.5 has no effect with advantage_estimator='recap'",
        f"vlm_model_name={HUB_NAME!r} is not a local directory",
    ):
        assert said in result.stderr, result.stderr[-3000:]
