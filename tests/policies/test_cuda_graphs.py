"""Sampling through a CUDA graph acts exactly like the eager one. Needs a GPU: skipped on CPU-only
machines (CI); run on one with `pytest tests/policies/test_cuda_graphs.py` (docs/benchmarks.md)."""

import threading
import time

import pytest
import torch

from flywheel.policies.pi_star_recap import PiStarRECAPPolicy
from tests.policies.test_pi_star_recap import CHUNK, make_batch, make_config

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _chunks(policy: PiStarRECAPPolicy, graphs: bool, noise: torch.Tensor | None) -> torch.Tensor:
    policy.config.cuda_graphs = graphs
    batch = make_batch(2, with_image=True)
    obs = {k: v.cuda() if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    return policy.predict_action_chunk(obs, noise=noise)


@pytest.mark.parametrize("cfg_scale", [1.0, 2.0])
def test_graphed_loop_equals_eager_bit_for_bit(cfg_scale: float):
    torch.manual_seed(0)
    policy = PiStarRECAPPolicy(make_config(with_image=True, device="cuda", cfg_scale=cfg_scale))
    noise = torch.randn(2, CHUNK, policy.config.max_action_dim, device="cuda")
    eager = _chunks(policy, False, noise)
    assert policy.model.sample_graphs.captures == 0
    for _ in range(2):  # captured on the first call, replayed on the second
        torch.testing.assert_close(_chunks(policy, True, noise), eager, rtol=0, atol=0)
    assert policy.model.sample_graphs.captures == 1


def test_new_noise_and_moved_weights_are_seen():
    torch.manual_seed(0)
    policy = PiStarRECAPPolicy(make_config(with_image=True, device="cuda"))
    noise = torch.randn(2, CHUNK, policy.config.max_action_dim, device="cuda")
    first = _chunks(policy, True, noise)
    assert not torch.equal(_chunks(policy, True, noise + 1), first)  # the input buffers are refilled
    policy.model.to("cpu").to("cuda")  # new parameter storage: the old graph would read freed memory
    with torch.no_grad():
        policy.model.action_out_proj.bias.add_(1.0)
    torch.testing.assert_close(_chunks(policy, True, noise), _chunks(policy, False, noise), rtol=0, atol=0)
    assert policy.model.sample_graphs.captures == 2


def test_least_recently_used_graph_is_dropped():
    policy = PiStarRECAPPolicy(make_config(with_image=True, device="cuda"))
    policy.model.sample_graphs.max_graphs = 2
    noise = torch.randn(2, CHUNK, policy.config.max_action_dim, device="cuda")
    for steps in (2, 3, 4, 2):
        policy.config.num_inference_steps = steps
        _chunks(policy, True, noise)
    assert policy.model.sample_graphs.captures == 4  # steps=2 was dropped when 4 came in


def test_capture_while_another_thread_builds_a_policy_on_the_gpu():
    """The daemon's worker thread captures its first chunk while the hot-swap thread may be moving
    the next policy onto the GPU and running its smoke inference (drawing noise, capturing its own
    graph): neither may fail. Drawing the noise from the CUDA generator failed here."""
    torch.manual_seed(0)
    policy = PiStarRECAPPolicy(make_config(with_image=True, device="cuda"))
    noise = torch.randn(2, CHUNK, policy.config.max_action_dim, device="cuda")
    eager = _chunks(policy, False, noise)
    stop, errors = threading.Event(), []

    def hot_swap_like() -> None:  # build the next policy on the GPU and run its smoke inference
        try:
            while not stop.is_set():
                standby = PiStarRECAPPolicy(make_config(with_image=True, device="cuda"))
                assert torch.isfinite(_chunks(standby, True, None)).all()
        except Exception as error:  # reported by the assertion below
            errors.append(error)

    worker = threading.Thread(target=hot_swap_like, daemon=True)
    worker.start()
    try:
        time.sleep(0.2)  # the other thread is busy on the GPU when the capture starts
        for _ in range(3):
            torch.testing.assert_close(_chunks(policy, True, noise), eager, rtol=0, atol=0)
    finally:
        stop.set()
        worker.join(timeout=60)
    assert policy.model.sample_graphs.captures == 1
    assert not errors, errors
