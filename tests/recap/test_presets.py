"""The recap_value policy type: both presets build, save and load like any LeRobot policy."""

from pathlib import Path

import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature

from flywheel.policies.recap_value import RecapValueConfig, RecapValuePolicy
from flywheel.policies.recap_value.configuration_recap_value import VLMSettings
from flywheel.policies.recap_value.modeling_recap_value import TARGET_KEY

STATE = PolicyFeature(FeatureType.STATE, (6,))
CAMERA = PolicyFeature(FeatureType.VISUAL, (3, 32, 32))
LABEL = PolicyFeature(FeatureType.STATE, (1,))


def _batch(with_image: bool) -> dict:
    batch = {"observation.state": torch.randn(3, 6), "task": ["push", "push", "pick"]}
    if with_image:
        batch["observation.images.front"] = torch.rand(3, 3, 32, 32)
    batch[TARGET_KEY] = torch.tensor([-0.1, -0.5, -0.9])
    return batch


def _config(preset: str, vlm: VLMSettings | None = None) -> RecapValueConfig:
    config = RecapValueConfig(
        preset=preset, hidden_dim=32, num_layers=2, vlm=vlm or VLMSettings(image_size=32)
    )
    config.input_features = {
        "observation.state": STATE,
        "observation.images.front": CAMERA,
        "observation.advantage_positive": LABEL,  # a label column, must not become an input
    }
    return config


@pytest.mark.parametrize("preset", ["tiny", "vlm"])
def test_preset_trains_a_step_and_round_trips(preset, tmp_path: Path):
    policy = RecapValuePolicy(_config(preset))
    assert "observation.advantage_positive" not in policy.config.input_features
    loss, info = policy.forward(_batch(with_image=True))
    loss.backward()
    assert torch.isfinite(loss) and "value_mae" in info
    batch = _batch(with_image=True)
    values = policy.predict_value(batch)
    assert values.shape == (3,) and ((values >= -1) & (values <= 0)).all()
    policy.save_pretrained(tmp_path / "model")
    loaded = RecapValuePolicy.from_pretrained(tmp_path / "model")
    torch.testing.assert_close(loaded.predict_value(batch), values)


def test_vlm_loads_local_pretrained_weights(tmp_path: Path):
    """The vlm preset reads SigLIP and Gemma weights from local directories (save_pretrained layout)."""
    from flywheel.policies.recap_value.vlm_backbone import build_language, build_vision

    small = VLMSettings(image_size=32)
    vision, language = build_vision(small), build_language(small)
    vision.save_pretrained(tmp_path / "siglip")
    language.save_pretrained(tmp_path / "gemma")
    settings = VLMSettings(vision_path=str(tmp_path / "siglip"), language_path=str(tmp_path / "gemma"))
    settings.tokenizer_path = None
    loaded_vision, loaded_language = build_vision(settings), build_language(settings)
    for a, b in zip(vision.state_dict().values(), loaded_vision.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    for a, b in zip(language.state_dict().values(), loaded_language.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
