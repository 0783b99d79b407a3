"""Real-time chunking (RTC) in pi_star_recap: LeRobot's RTCProcessor guiding the denoising loop
(tiny preset, CPU, random init).

When does RTC give exactly the plain chunk? RTCProcessor.denoise_step returns
v - w(t) * (Y - (x_t - t v)) * W, with W = get_prefix_weights(min(delay, H), H, chunk) and
H = min(execution_horizon, len(prefix)). The chunk is the plain one, bit for bit, exactly when W is
all zero: no prefix at all, or delay 0 with H = 0 (an empty prefix, or execution_horizon 0), or
delay 0 under the ZEROS schedule. Delay 0 alone is not enough under the default LINEAR schedule:
the soft mask still pulls rows 0..H-1 toward the prefix (test below)."""

from __future__ import annotations

import pytest
import torch
from lerobot.configs import RTCAttentionSchedule
from lerobot.policies.rtc import RTCConfig
from lerobot.rollout.inference.rtc import supports_rtc_inference

from flywheel.policies.pi_star_recap import PiStarRECAPPolicy
from tests.policies.test_pi_star_recap import ACTION_DIM, CHUNK, make_batch, make_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_policy(cfg_scale: float = 1.0, **rtc) -> PiStarRECAPPolicy:
    torch.manual_seed(0)
    rtc_config = RTCConfig(**{"execution_horizon": CHUNK, **rtc})
    policy = PiStarRECAPPolicy(make_config(cfg_scale=cfg_scale, rtc_config=rtc_config))
    if cfg_scale != 1.0:
        # The learned indicator embedding starts at zero (both CFG branches equal): make them differ.
        with torch.no_grad():
            policy.model.indicator_embedding.weight.normal_(0, 0.5)
    return policy


def noise(seed: int) -> torch.Tensor:
    return torch.randn(1, CHUNK, 32, generator=torch.Generator().manual_seed(seed))


def previous_chunk(policy: PiStarRECAPPolicy, batch: dict) -> torch.Tensor:
    """A chunk the policy itself would have made (other noise): what the prefix really is."""
    return policy.predict_action_chunk(batch, noise=noise(99))


def test_supports_lerobot_rtc_inference():
    policy = make_policy()
    assert supports_rtc_inference(policy)
    policy.config.rtc_config = RTCConfig(max_guidance_weight=5.0)
    policy.init_rtc_processor()  # what lerobot-rollout --inference.type=rtc does
    assert policy.rtc_processor.rtc_config.max_guidance_weight == 5.0


def test_without_prefix_or_with_zero_weights_rtc_is_plain_sampling_bit_for_bit():
    policy, batch = make_policy(), make_batch(1)
    plain = policy.predict_action_chunk(batch, noise=noise(0))
    prev = previous_chunk(policy, batch)[:, 3:]  # 7 rows still to run
    same = [
        policy.predict_action_chunk(batch, noise=noise(0), inference_delay=2, prev_chunk_left_over=None),
        # delay 0 and horizon 0: every prefix weight is 0.
        policy.predict_action_chunk(
            batch, noise=noise(0), inference_delay=0, prev_chunk_left_over=prev, execution_horizon=0
        ),
        # An empty prefix clamps the horizon to 0.
        policy.predict_action_chunk(
            batch, noise=noise(0), inference_delay=0, prev_chunk_left_over=prev[:, :0]
        ),
    ]
    for chunk in same:
        assert torch.equal(chunk, plain)
    zeros = make_policy(prefix_attention_schedule=RTCAttentionSchedule.ZEROS)
    assert torch.equal(
        zeros.predict_action_chunk(batch, noise=noise(0), inference_delay=0, prev_chunk_left_over=prev),
        plain,
    )
    # Delay 0 under the LINEAR schedule still guides rows 0..H-1 (the soft mask).
    soft = policy.predict_action_chunk(batch, noise=noise(0), inference_delay=0, prev_chunk_left_over=prev)
    assert not torch.allclose(soft, plain)


def test_rtc_off_in_the_config_ignores_the_prefix():
    torch.manual_seed(0)
    policy, batch = PiStarRECAPPolicy(make_config()), make_batch(1)
    plain = policy.predict_action_chunk(batch, noise=noise(0))
    prev = torch.randn(1, 5, ACTION_DIM)
    guided = policy.predict_action_chunk(batch, noise=noise(0), inference_delay=2, prev_chunk_left_over=prev)
    assert torch.equal(guided, plain)


def _follows(policy: PiStarRECAPPolicy, delay: int) -> None:
    batch = make_batch(1)
    plain = policy.predict_action_chunk(batch, noise=noise(0))
    prev = previous_chunk(policy, batch)[:, 2:]  # 8 rows, row i aligned with the new chunk's row i
    # Under inference_mode, as the daemon calls it: RTC's gradient must still work.
    with torch.inference_mode():
        rtc = policy.predict_action_chunk(
            batch, noise=noise(0), inference_delay=delay, prev_chunk_left_over=prev
        )
    gap_plain = (plain[:, :delay] - prev[:, :delay]).abs().max()
    gap_rtc = (rtc[:, :delay] - prev[:, :delay]).abs().max()
    assert gap_plain > 0.3  # the two noises really give different chunks
    # The hard-masked rows (weight 1): within 5% of the plain chunk's distance (about 0.5% here).
    assert gap_rtc < 0.05 * gap_plain, (gap_rtc, gap_plain)
    assert not torch.allclose(rtc, plain)
    assert torch.isfinite(rtc).all() and rtc.shape == plain.shape


def test_prefix_and_delay_pull_the_first_actions_onto_the_prefix():
    _follows(make_policy(), delay=3)


def test_cfg_and_rtc_together():
    policy = make_policy(cfg_scale=2.0)
    batch = make_batch(1)
    # CFG really differs from the positive branch alone here.
    positive = make_policy(cfg_scale=2.0)
    positive.config.cfg_scale = 1.0
    assert not torch.allclose(
        policy.predict_action_chunk(batch, noise=noise(0)),
        positive.predict_action_chunk(batch, noise=noise(0)),
    )
    _follows(policy, delay=4)


def test_rtc_config_survives_save_and_load(tmp_path):
    policy = make_policy(max_guidance_weight=3.0)
    policy.save_pretrained(tmp_path)
    loaded = PiStarRECAPPolicy.from_pretrained(tmp_path)
    assert loaded.config.rtc_config.max_guidance_weight == 3.0
    assert loaded.rtc_processor is not None
