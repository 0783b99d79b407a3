"""Tests of the pi_star_recap policy (tiny sizes, CPU only, no downloads)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from lerobot.configs.types import FeatureType, PolicyFeature
from safetensors.torch import load_file, save_file

from benchmarks.fixtures import pi05_base_state_dict
from flywheel.policies.pi_star_recap import PiStarRECAPConfig, PiStarRECAPPolicy
from flywheel.policies.pi_star_recap import modeling_pi_star_recap as modeling
from flywheel.policies.pi_star_recap.batch_inputs import data_type_weights
from flywheel.policies.pi_star_recap.prompt import POSITIVE

STATE_DIM, ACTION_DIM, CHUNK = 39, 4, 10
IMAGE_KEY = "observation.images.front"


def make_config(with_image: bool = False, **overrides) -> PiStarRECAPConfig:
    inputs = {"observation.state": PolicyFeature(FeatureType.STATE, (STATE_DIM,))}
    if with_image:
        inputs[IMAGE_KEY] = PolicyFeature(FeatureType.VISUAL, (3, 48, 48))
    kwargs = {
        "preset": "tiny",
        "device": "cpu",
        "chunk_size": CHUNK,
        "n_action_steps": CHUNK,
        "input_features": inputs,
        "output_features": {"action": PolicyFeature(FeatureType.ACTION, (ACTION_DIM,))},
    }
    return PiStarRECAPConfig(**{**kwargs, **overrides})


def make_batch(size: int, seed: int = 0, with_image: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    batch = {
        "observation.state": torch.randn(size, STATE_DIM, generator=g),
        "action": torch.randn(size, CHUNK, ACTION_DIM, generator=g).clamp(-2, 2),
        "task": ["push the puck to the goal"] * size,
        "advantage_positive": torch.rand(size, generator=g) > 0.5,
    }
    if with_image:
        batch[IMAGE_KEY] = torch.rand(size, 3, 48, 48, generator=g)
    return batch


def test_forward_returns_loss_and_the_three_losses():
    policy = PiStarRECAPPolicy(make_config())
    loss, info = policy.forward(make_batch(4))
    assert loss.ndim == 0 and loss.requires_grad
    assert {"policy_loss", "v_loss", "q_loss", "loss"} <= set(info)
    assert all(isinstance(v, float) for v in info.values())
    # recap: the value function is trained elsewhere, so the critic losses are zero.
    assert info["v_loss"] == 0.0 and info["q_loss"] == 0.0
    per_sample, _ = policy.forward(make_batch(4), reduction="none")
    assert per_sample.shape == (4,)


@pytest.mark.usefixtures("one_torch_thread")  # small matmuls gain little from a second thread
def test_tiny_model_overfits_one_batch():
    torch.manual_seed(0)
    policy = PiStarRECAPPolicy(make_config(policy_lr=2e-3))
    batch = make_batch(8)
    optimizer = torch.optim.AdamW(policy.get_optim_params())
    policy.train()
    losses = []
    for _ in range(200):
        loss, _ = policy.forward(batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    first, last = np.mean(losses[:10]), np.mean(losses[-20:])
    # 2.1 -> 0.6 here (the flow loss has a noise floor; the tiny preset sees the state through its
    # one continuous token, and memorises 8 random states slower than with 39 state tokens, which
    # trained worse on real data: docs/demo.md).
    assert last < first / 3, (first, last)


def test_cfg_scale_one_equals_positive_conditioning():
    policy = PiStarRECAPPolicy(make_config(cfg_scale=1.0))
    batch = make_batch(3)
    noise = torch.randn(3, CHUNK, policy.config.max_action_dim, generator=torch.Generator().manual_seed(1))
    guided = policy.predict_action_chunk(batch, noise=noise)
    positive = policy.model.sample(policy._prefix_inputs(batch, [POSITIVE] * 3), noise)[..., :ACTION_DIM]
    assert torch.equal(guided, positive)


def test_batched_cfg_matches_separate_passes():
    """One 2B-row pass must equal guidance computed from separate positive and unconditioned passes."""
    beta = 2.0
    policy = PiStarRECAPPolicy(make_config(with_image=True, cfg_scale=beta)).eval()
    batch = make_batch(2, with_image=True)
    noise = torch.randn(2, CHUNK, policy.config.max_action_dim, generator=torch.Generator().manual_seed(2))
    guided = policy.predict_action_chunk(batch, noise=noise)

    model = policy.model
    kv_pos, mask_pos = model.encode(policy._prefix_inputs(batch, [POSITIVE] * 2))
    kv_unc, mask_unc = model.encode(policy._prefix_inputs(batch, [None] * 2))
    x, steps = noise, policy.config.num_inference_steps
    with torch.no_grad():
        for step in range(steps):
            t = torch.full((2,), 1.0 - step / steps)
            v_pos = model.velocity(x, t, kv_pos, mask_pos)
            v_unc = model.velocity(x, t, kv_unc, mask_unc)
            x = x - (v_unc + beta * (v_pos - v_unc)) / steps
    torch.testing.assert_close(guided, x[..., :ACTION_DIM], rtol=1e-4, atol=1e-4)


def test_the_indicator_reaches_the_actions_but_not_the_context():
    """What lets CFG encode the context once: its keys and values do not depend on the indicator,
    while the prefix the action expert reads does (the prompt path: the indicator is prompt text)."""
    policy = PiStarRECAPPolicy(make_config(with_image=True, indicator_conditioning="prompt")).eval()
    batch = make_batch(2, with_image=True)
    model = policy.model
    x_t, t = torch.randn(2, CHUNK, policy.config.max_action_dim), torch.full((2,), 0.5)
    with torch.no_grad():
        kv_pos, mask_pos = model.encode(policy._prefix_inputs(batch, [POSITIVE] * 2))
        kv_unc, mask_unc = model.encode(policy._prefix_inputs(batch, [None] * 2))
        v_pos = model.velocity(x_t, t, kv_pos, mask_pos)
        v_unc = model.velocity(x_t, t, kv_unc, mask_unc)
    n_context = model.embed_context(policy._prefix_inputs(batch, [None] * 2))[0].shape[1]
    for (k_pos, v_pos_), (k_unc, v_unc_) in zip(kv_pos, kv_unc, strict=True):
        torch.testing.assert_close(k_pos[:, :, :n_context], k_unc[:, :, :n_context])
        torch.testing.assert_close(v_pos_[:, :, :n_context], v_unc_[:, :, :n_context])
    assert (v_pos - v_unc).abs().max() > 1e-4


def test_indicator_dropout_rate_is_about_point_three():
    policy = PiStarRECAPPolicy(make_config()).train()
    policy.generator = torch.Generator().manual_seed(3)
    n = 4000
    indicators = policy._training_indicators(
        {"advantage_positive": torch.ones(n), "observation.state": torch.zeros(n, 1)}, n
    )
    dropped = sum(i is None for i in indicators) / n
    assert abs(dropped - 0.3) < 0.03, dropped
    assert set(indicators) == {None, POSITIVE}
    # No dropout outside training: evaluation prompts always carry the label.
    assert None not in policy.eval()._training_indicators({"observation.state": torch.zeros(8, 1)}, 8)


def test_labels_are_read_from_observation_key_and_default_to_positive():
    policy = PiStarRECAPPolicy(make_config(advantage_dropout=0.0)).train()
    batch = {
        "observation.state": torch.zeros(2, 1),
        "observation.advantage_positive": torch.tensor([[1.0], [0.0]]),
    }
    assert policy._training_indicators(batch, 2) == ["positive", "negative"]
    assert policy._training_indicators({"observation.state": torch.zeros(2, 1)}, 2) == ["positive"] * 2


# pi05_base layout at reduced size: names as LeRobot publishes them, shapes written out independently.
REDUCED = {
    "vlm_width": 64,
    "vlm_depth": 2,
    "vlm_mlp_dim": 128,
    "expert_width": 32,
    "expert_depth": 2,
    "expert_mlp_dim": 48,
    "num_heads": 2,
    "num_kv_heads": 1,
    "head_dim": 16,
    "vocab_size": 600,
    "vision_width": 32,
    "vision_depth": 1,
    "vision_heads": 2,
    "vision_mlp_dim": 40,
    "vision_patch_size": 8,
    "image_size": 16,
    "dtype": "float32",
    "gradient_checkpointing": False,
}


def spy_uninitialized(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records each build that skipped the random init."""
    built: list[bool] = []
    real = modeling.uninitialized
    monkeypatch.setattr(modeling, "uninitialized", lambda factory: built.append(True) or real(factory))
    return built


def test_pi05_base_layout_loads_with_no_missing_or_unexpected_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    state = pi05_base_state_dict(REDUCED)
    save_file(state, str(tmp_path / "model.safetensors"))
    config = make_config(with_image=True, preset="pi05", base_model_path=str(tmp_path), **REDUCED)
    built_bare = spy_uninitialized(monkeypatch)
    policy = PiStarRECAPPolicy(config)
    missing, unexpected = policy.base_load_report
    assert missing == [] and unexpected == []
    assert built_bare == [True]  # the file sets every weight: no random init before it
    loaded = policy.model.paligemma_with_expert.gemma_expert.model.layers[1].mlp.up_proj.weight
    torch.testing.assert_close(
        loaded, state["paligemma_with_expert.gemma_expert.model.layers.1.mlp.up_proj.weight"]
    )
    actions = policy.predict_action_chunk(make_batch(1, with_image=True))
    assert actions.shape == (1, CHUNK, ACTION_DIM) and torch.isfinite(actions).all()


def test_hf_paligemma_checkpoint_initialises_the_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """vlm_model_name naming a local HF PaliGemma dir loads SigLIP + projector + Gemma, nothing else."""
    pg = "paligemma_with_expert.paligemma."
    state = {
        k.replace(pg, "", 1): v
        for k, v in pi05_base_state_dict(REDUCED).items()
        if k.startswith(pg)  # an HF PaliGemma file: model.{vision_tower,...}.*, lm_head.weight
    }
    save_file(state, str(tmp_path / "model.safetensors"))
    built_bare = spy_uninitialized(monkeypatch)
    policy = PiStarRECAPPolicy(make_config(preset="pi05", vlm_model_name=str(tmp_path), **REDUCED))
    missing, unexpected = policy.base_load_report
    assert unexpected == []
    assert missing and not any(".paligemma." in k for k in missing)  # only expert and projections remain
    assert built_bare == []  # what the file lacks keeps its random init
    assert all(torch.isfinite(p).all() for p in policy.parameters())
    embed = policy.model.paligemma_with_expert.language_model.embed_tokens.weight
    torch.testing.assert_close(embed, state["model.language_model.embed_tokens.weight"])


def test_save_and_load_round_trip(tmp_path: Path):
    policy = PiStarRECAPPolicy(make_config(with_image=True, cfg_scale=1.5))
    policy.save_pretrained(tmp_path)
    loaded = PiStarRECAPPolicy.from_pretrained(tmp_path)
    assert loaded.config.cfg_scale == 1.5 and loaded.config.vlm_width == policy.config.vlm_width
    batch = make_batch(2, with_image=True)
    noise = torch.randn(2, CHUNK, 32)
    torch.testing.assert_close(
        policy.predict_action_chunk(batch, noise=noise), loaded.predict_action_chunk(batch, noise=noise)
    )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_loading_skips_the_random_init_but_not_the_unsaved_buffers(dtype: str):
    config = make_config(with_image=True, dtype=dtype)
    initialised = PiStarRECAPPolicy(config)
    bare = PiStarRECAPPolicy(config, init_weights=False)
    saved = initialised.model.state_dict().keys()
    unsaved = {n: b for n, b in initialised.model.named_buffers() if n not in saved}
    assert unsaved  # rotary frequencies, SigLIP position ids: computed, never in a checkpoint
    for name, buffer in bare.model.named_buffers():
        if name in unsaved:
            torch.testing.assert_close(buffer, unsaved[name], rtol=0, atol=0)  # dtype included
    assert {p.dtype for p in bare.parameters()} == {p.dtype for p in initialised.parameters()}


def test_from_pretrained_builds_without_random_init(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    PiStarRECAPPolicy(make_config()).save_pretrained(tmp_path)
    built_bare = spy_uninitialized(monkeypatch)
    PiStarRECAPPolicy.from_pretrained(tmp_path)
    assert built_bare == [True]


def test_a_checkpoint_missing_a_weight_is_an_error_naming_it(tmp_path: Path):
    PiStarRECAPPolicy(make_config()).save_pretrained(tmp_path)
    weights = load_file(str(tmp_path / "model.safetensors"))
    del weights["model.action_out_proj.bias"]
    save_file(weights, str(tmp_path / "model.safetensors"))
    with pytest.raises(RuntimeError, match=r"model\.action_out_proj\.bias"):
        PiStarRECAPPolicy.from_pretrained(tmp_path)


def test_select_action_serves_a_chunk_from_the_queue():
    policy = PiStarRECAPPolicy(make_config(n_action_steps=3))
    obs = {k: v for k, v in make_batch(1).items() if k != "action"}
    actions = [policy.select_action(obs) for _ in range(4)]
    assert all(a.shape == (1, ACTION_DIM) for a in actions)
    assert len(policy._action_queue) == 2  # 3 served from chunk one, 1 from chunk two
    policy.reset()
    assert len(policy._action_queue) == 0


def iql_batch(size: int) -> dict:
    batch = make_batch(size)
    batch["observation.state"] = torch.randn(size, 2, STATE_DIM)  # [current, next] frames
    batch["observation.state_is_pad"] = torch.zeros(size, 2, dtype=torch.bool)
    batch["next.reward"] = -torch.ones(size)
    batch["next.done"] = torch.zeros(size, dtype=torch.bool)
    batch["data_type_id"] = torch.tensor([0, 1, 2, 2])[:size]
    return batch


def test_iql_estimator_losses_groups_and_target_update():
    config = make_config(advantage_estimator="iql")
    assert config.observation_delta_indices == [0, 1]
    policy = PiStarRECAPPolicy(config)
    loss, info = policy.forward(iql_batch(4))
    assert info["v_loss"] > 0 and info["q_loss"] > 0
    loss.backward()
    groups = {g["name"]: g for g in policy.get_optim_params()}
    assert {g["lr"] for g in groups.values()} == {config.policy_lr, config.q_lr, config.v_lr}
    assert groups["q"]["lr"] == 3e-4 and groups["v"]["lr"] == 3e-4
    n_grouped = sum(len(g["params"]) for g in groups.values())
    assert n_grouped == len([p for p in policy.parameters() if p.requires_grad])
    optimizer = torch.optim.AdamW(list(groups.values()))
    optimizer.step()
    target = policy.model.iql.q_target[0][0].weight.clone()
    policy.update()
    assert not torch.equal(target, policy.model.iql.q_target[0][0].weight)


def test_data_type_weights_and_balancing():
    batch = {"data_type_id": torch.tensor([0, 0, 0, 2])}
    plain = data_type_weights(batch, 4, (1.0, 1.0, 2.0), balance=False, timed=False)
    assert plain.tolist() == [1.0, 1.0, 1.0, 2.0]
    balanced = data_type_weights(batch, 4, (1.0, 1.0, 2.0), balance=True, timed=False)
    # Each present type gets half the batch's mass, times its weight.
    assert balanced[:3].sum().item() == pytest.approx(2.0) and balanced[3].item() == pytest.approx(4.0)
    assert data_type_weights({}, 3, (1.0, 1.0, 2.0), True, False).tolist() == [1.0, 1.0, 1.0]


def test_freeze_vlm_and_train_expert_only():
    policy = PiStarRECAPPolicy(make_config(freeze_vlm=True))
    model = policy.model
    assert not any(p.requires_grad for p in model.paligemma_with_expert.paligemma.parameters())
    assert all(p.requires_grad for p in model.paligemma_with_expert.gemma_expert.parameters())
    assert all(p.requires_grad for p in model.state_token_proj.parameters())

    policy = PiStarRECAPPolicy(make_config(train_expert_only=True, advantage_estimator="iql"))
    trainable = {n.split(".")[1] for n, p in policy.named_parameters() if p.requires_grad}
    assert trainable == {
        "paligemma_with_expert",
        "action_in_proj",
        "action_out_proj",
        "time_mlp_in",
        "time_mlp_out",
        "iql",
    }
    assert not any(p.requires_grad for p in policy.model.paligemma_with_expert.paligemma.parameters())
    policy.train()
    assert not policy.model.paligemma_with_expert.paligemma.training


def test_images_enter_the_prefix():
    policy = PiStarRECAPPolicy(make_config(with_image=True))
    batch = make_batch(2, with_image=True)
    inputs = policy._prefix_inputs(batch, [POSITIVE] * 2)
    embs, _ = policy.model.embed_context(inputs)
    patches = (policy.config.image_size // policy.config.vision_patch_size) ** 2
    assert embs.shape[1] == patches + 1 + inputs.context_tokens.shape[1]  # image + state token + text
    loss, _ = policy.forward(batch)
    loss.backward()
    vision = policy.model.paligemma_with_expert.paligemma.model.vision_tower.vision_model
    patch_grad = vision.embeddings.patch_embedding.weight.grad
    assert patch_grad is not None and patch_grad.abs().sum() > 0


def make_dataset(root: Path) -> None:
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    features = {
        "observation.state": {"dtype": "float32", "shape": (STATE_DIM,), "names": None},
        "action": {"dtype": "float32", "shape": (ACTION_DIM,), "names": None},
    }
    ds = LeRobotDataset.create(
        repo_id="local/recap_test", fps=30, root=root, features=features, use_videos=False
    )
    rng = np.random.default_rng(0)
    for _ in range(2):
        for _ in range(20):
            ds.add_frame(
                {
                    "observation.state": rng.standard_normal(STATE_DIM).astype(np.float32),
                    "action": rng.standard_normal(ACTION_DIM).astype(np.float32),
                    "task": "push the puck",
                }
            )
        ds.save_episode()
    ds.finalize()


def test_stock_lerobot_train_runs_and_checkpoints(tmp_path: Path):
    make_dataset(tmp_path / "ds")
    train = Path(sys.executable).parent / "lerobot-train"
    cmd = [
        str(train),
        "--policy.type=pi_star_recap",
        # Works with or without the lerobot_policy_pi_star_recap shim installed.
        "--policy.discover_packages_path=flywheel.policies.pi_star_recap",
        "--policy.preset=tiny",
        f"--dataset.root={tmp_path / 'ds'}",
        "--dataset.repo_id=local/recap_test",
        "--policy.push_to_hub=false",
        "--policy.device=cpu",
        "--wandb.enable=false",
        f"--output_dir={tmp_path / 'out'}",
        "--batch_size=4",
        "--steps=3",
        "--save_freq=3",
        "--num_workers=0",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    checkpoint = tmp_path / "out" / "checkpoints" / "000003" / "pretrained_model"
    assert (checkpoint / "model.safetensors").is_file()
    policy = PiStarRECAPPolicy.from_pretrained(checkpoint)
    assert policy.config.preset == "tiny"


def test_local_tokenizer_path_writes_the_state_as_digits(tmp_path: Path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "Task", ":", "push", ",", "State", ";", "Advantage", "positive", "Action"]
    vocab = {w: i for i, w in enumerate(words + [str(i) for i in range(256)])}
    raw = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, pad_token="[PAD]", unk_token="[UNK]")
    fast.save_pretrained(tmp_path)

    policy = PiStarRECAPPolicy(make_config(tokenizer_path=str(tmp_path), vocab_size=len(vocab)))
    ids = policy.tokenizer.encode_context("push", [0, 128, 255]) + policy.tokenizer.encode_suffix("positive")
    expected = "Task : push , State : 0 128 255 ; Advantage : positive ; Action :"
    assert ids == [vocab[w] for w in expected.split(" ")]
    loss, _ = policy.forward(make_batch(2))
    assert torch.isfinite(loss)


def test_text_embeddings_are_scaled_by_sqrt_width_once(tmp_path: Path):
    """transformers 5's Gemma embedding scales by sqrt(width) itself (4.57 left it to the model's
    forward); the scale is an unsaved buffer, so a checkpoint load must rebuild it as well."""
    policy = PiStarRECAPPolicy(make_config())
    policy.save_pretrained(tmp_path)
    tokens = torch.tensor([[1, 2, 3]])
    for model in (policy, PiStarRECAPPolicy.from_pretrained(tmp_path)):
        backbone = model.model.paligemma_with_expert
        weight = backbone.language_model.embed_tokens.weight
        expected = weight[tokens] * weight.shape[1] ** 0.5
        torch.testing.assert_close(backbone.embed_tokens(tokens), expected)


def test_a_one_joint_action_without_its_feature_axis_trains():
    """LeRobot 0.6 returns a shape-(1,) action feature as scalars: chunks come as (batch, chunk)."""
    config = make_config(output_features={"action": PolicyFeature(FeatureType.ACTION, (1,))})
    policy = PiStarRECAPPolicy(config)
    batch = make_batch(4)
    batch["action"] = batch["action"][..., 0]  # (4, CHUNK): the axis LeRobot 0.6 drops
    loss, _ = policy.forward(batch)
    assert torch.isfinite(loss)
    loss.backward()
    with_axis = {**batch, "action": batch["action"].unsqueeze(-1)}
    assert torch.equal(policy._actions(batch), policy._actions(with_axis))
    assert policy._actions(batch).shape == (4, CHUNK, 1)
