"""The advantage indicator's learned embedding (indicator_conditioning) and the conditioning-strength
diagnostic (flywheel/policies/pi_star_recap/conditioning.py). Tiny sizes, CPU only."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from flywheel.policies.pi_star_recap import PiStarRECAPConfig, PiStarRECAPPolicy
from flywheel.policies.pi_star_recap.conditioning import conditioning_strength, pick_frames
from flywheel.policies.pi_star_recap.prompt import POSITIVE
from tests.policies.test_pi_star_recap import ACTION_DIM, CHUNK, make_batch, make_config

MODES = ("modulation", "time", "tokens")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_presets_pick_the_indicator_path():
    assert PiStarRECAPConfig(preset="tiny").indicator_conditioning == "modulation"
    assert PiStarRECAPConfig(preset="pi05").indicator_conditioning == "prompt"
    with pytest.raises(ValueError, match="indicator_conditioning"):
        PiStarRECAPConfig(preset="tiny", indicator_conditioning="everywhere")


@pytest.mark.parametrize("mode", MODES)
def test_the_zero_initialised_embedding_changes_nothing_at_init(mode: str):
    torch.manual_seed(0)
    with_prompt = PiStarRECAPPolicy(make_config(indicator_conditioning="prompt")).eval()
    # the same prompt as the prompt path (the learned paths leave the indicator words out by default)
    with_embedding = PiStarRECAPPolicy(make_config(indicator_conditioning=mode, indicator_in_prompt=True))
    with_embedding.eval()
    missing, unexpected = with_embedding.model.load_state_dict(with_prompt.model.state_dict(), strict=False)
    assert missing == [] and unexpected == []  # a state dict without it reads as zero (see below)
    assert with_embedding.model.indicator_embedding.weight.abs().sum() == 0
    batch = make_batch(3)
    noise = torch.randn(3, CHUNK, 32)
    torch.testing.assert_close(
        with_prompt.predict_action_chunk(batch, noise=noise),
        with_embedding.predict_action_chunk(batch, noise=noise),
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bsize", [1, 2])
def test_batched_cfg_matches_separate_passes_with_the_embedding(mode: str, bsize: int):
    beta = 2.0
    policy = PiStarRECAPPolicy(make_config(with_image=True, cfg_scale=beta, indicator_conditioning=mode))
    policy.eval()
    with torch.no_grad():  # as if trained (the adaptive norms' dense layers start at zero)
        policy.model.indicator_embedding.weight.normal_()
        for name, p in policy.model.named_parameters():
            if name.endswith("dense.weight"):
                p.normal_(std=0.1)
    batch = make_batch(bsize, with_image=True)
    noise = torch.randn(bsize, CHUNK, 32, generator=torch.Generator().manual_seed(2))
    guided = policy.predict_action_chunk(batch, noise=noise)
    model = policy.model
    pos, unc = (policy._prefix_inputs(batch, [word] * bsize) for word in (POSITIVE, None))
    (kv_pos, mask_pos), (kv_unc, mask_unc) = model.encode(pos), model.encode(unc)
    x, steps = noise, policy.config.num_inference_steps
    with torch.no_grad():
        for step in range(steps):
            t = torch.full((bsize,), 1.0 - step / steps)
            v_pos = model.velocity(x, t, kv_pos, mask_pos, pos.indicator_rows())
            v_unc = model.velocity(x, t, kv_unc, mask_unc, unc.indicator_rows())
            x = x - (v_unc + beta * (v_pos - v_unc)) / steps
    torch.testing.assert_close(guided, x[..., :ACTION_DIM], rtol=1e-4, atol=1e-4)
    # and the embedding does reach the actions
    policy.config.cfg_scale = 1.0
    negative = model.sample(policy._prefix_inputs(batch, ["negative"] * bsize), noise)[..., :ACTION_DIM]
    assert (policy.predict_action_chunk(batch, noise=noise) - negative).abs().max() > 1e-3


def test_a_checkpoint_without_the_embedding_loads_as_a_zero_one(tmp_path: Path):
    """An older tiny checkpoint (no indicator_conditioning field, no embedding weight, state and
    indicator in the prompt) loads, and acts as it did: the zero embedding is the model it was, and
    it keeps the prompt it was trained on rather than the preset's shorter one."""
    old = PiStarRECAPPolicy(make_config(indicator_conditioning="prompt", state_in_prompt=True))
    old.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for name in ("indicator_conditioning", "state_in_prompt", "indicator_in_prompt"):
        del config[name]
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert "model.indicator_embedding.weight" not in load_file(str(tmp_path / "model.safetensors"))
    loaded = PiStarRECAPPolicy.from_pretrained(tmp_path)
    assert loaded.config.indicator_conditioning == "modulation"  # the tiny preset's
    assert loaded.config.state_in_prompt and loaded.config.indicator_in_prompt
    assert loaded.model.indicator_embedding.weight.abs().sum() == 0
    batch, noise = make_batch(2), torch.randn(2, CHUNK, 32)
    torch.testing.assert_close(
        old.predict_action_chunk(batch, noise=noise), loaded.predict_action_chunk(batch, noise=noise)
    )
    # other missing weights are still an error naming them
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.action_in_proj.bias"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"model\.action_in_proj\.bias"):
        PiStarRECAPPolicy.from_pretrained(tmp_path)


def _label_batch(size: int, seed: int) -> dict:
    """Same states for both labels; the action is +0.8 where positive, -0.8 where negative."""
    batch = make_batch(size, seed=seed)
    batch["observation.state"] = batch["observation.state"][:1].expand(size, -1).clone()
    positive = torch.arange(size) % 2 == 0
    batch["advantage_positive"] = positive
    batch["action"] = torch.where(positive[:, None, None], 0.8, -0.8).expand(size, CHUNK, ACTION_DIM).clone()
    return batch


def test_conditioning_strength_sees_a_model_that_uses_its_indicator():
    torch.manual_seed(0)
    policy = PiStarRECAPPolicy(make_config(policy_lr=3e-3, advantage_dropout=0.0))
    batch = _label_batch(16, seed=1)
    before = conditioning_strength(policy, [batch], draws=2, seed=0)
    optimizer = torch.optim.AdamW(policy.get_optim_params())
    policy.train()
    for _ in range(150):
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = conditioning_strength(policy, [batch], draws=2, seed=0)
    assert after.frames == 16 and after.positive_frames == after.negative_frames == 8
    assert after.loss_gap > 0.5 and after.loss_gap_negative > 0.5 and after.loss_gap_positive > 0.5
    assert after.action_difference > 0.5  # positive and negative chunks +0.8 and -0.8 apart
    assert abs(before.loss_gap) < after.loss_gap / 10
    assert policy.training  # restored


def test_conditioning_strength_is_paired_and_leaves_the_global_rng_alone():
    policy = PiStarRECAPPolicy(make_config(indicator_conditioning="modulation"))
    with torch.no_grad():
        policy.model.indicator_embedding.weight.zero_()
    batch = make_batch(6)
    torch.manual_seed(123)
    expected = torch.rand(1)
    torch.manual_seed(123)
    first = conditioning_strength(policy, [batch], draws=3, seed=5)
    assert torch.equal(torch.rand(1), expected)
    second = conditioning_strength(policy, [batch], draws=3, seed=5)
    assert first == second
    # true and flipped see the same noise and times: the gap is exactly the flipped-minus-true
    # difference of the group losses, not a difference of draws
    n_pos, n_neg = first.positive_frames, first.negative_frames
    gap = (n_pos * first.loss_gap_positive + n_neg * first.loss_gap_negative) / (n_pos + n_neg)
    assert first.loss_gap == pytest.approx(gap, abs=1e-5)


def test_pick_frames_balances_the_labels():
    positive = np.zeros(100, dtype=bool)
    positive[:10] = True
    picked = pick_frames(positive, 40, seed=0)
    assert len(picked) == 40 and positive[picked].sum() == 10  # all 10 positives, 30 negatives
    picked = pick_frames(positive, 10, seed=0)
    assert positive[picked].sum() == 5
    assert len(set(picked.tolist())) == len(picked)


def test_what_the_prompt_carries():
    """The tiny preset's prompt is the task alone (its state arrives as the continuous token, the
    indicator through the embedding); pi05's is pi0.5's, state and indicator words included."""
    tiny = PiStarRECAPPolicy(make_config()).eval()
    assert not tiny.config.state_in_prompt and not tiny.config.indicator_in_prompt
    inputs = tiny._prefix_inputs(make_batch(2), [POSITIVE, None])
    context, suffix = inputs.context_tokens[0, 1:].tolist(), inputs.suffix_tokens[0][0].tolist()
    assert bytes(context + suffix).decode() == "Task: push the puck to the goal;\nAction: "
    assert inputs.context_mask.all() and inputs.suffix_masks[0].all()
    pi05 = PiStarRECAPConfig(preset="pi05")
    assert pi05.state_in_prompt and pi05.indicator_in_prompt
    assert PiStarRECAPConfig(preset="tiny", indicator_conditioning="prompt").indicator_in_prompt
    with pytest.raises(ValueError, match="state_in_prompt"):
        PiStarRECAPConfig(preset="tiny", state_in_prompt=False, continuous_state_token=False)
    with pytest.raises(ValueError, match="indicator_in_prompt"):
        PiStarRECAPConfig(preset="pi05", indicator_in_prompt=False)
