"""Architecture presets of the pi_star_recap policy.

One code path serves both: `pi05` has the sizes of LeRobot's pi05_base (PaliGemma gemma_2b prefix with
SigLIP so400m, gemma_300m action expert) so its weights load; `tiny` is the same network at toy size, random
init, so it trains on a CPU in minutes. A preset only fills the config fields the user left unset (None).
"""

from typing import Any

PRESETS: dict[str, dict[str, Any]] = {
    "pi05": {
        "vlm_width": 2048,
        "vlm_depth": 18,
        "vlm_mlp_dim": 16_384,
        "expert_width": 1024,
        "expert_depth": 18,
        "expert_mlp_dim": 4096,
        "num_heads": 8,
        "num_kv_heads": 1,
        "head_dim": 256,
        # PaliGemma's SentencePiece vocabulary; the byte tokenizer's ids are a subset of it.
        "vocab_size": 257_152,
        "vision_width": 1152,
        "vision_depth": 27,
        "vision_heads": 16,
        "vision_mlp_dim": 4304,
        "vision_patch_size": 14,
        "image_size": 224,
        "dtype": "bfloat16",
        "gradient_checkpointing": True,
        "continuous_state_token": False,
        # pi0.5's prompt: "Task: ..., State: <256-bin tokens>;\n".
        "state_in_prompt": True,
        # pi0.5 reads the indicator from its prompt only; pi05_base loads and starts unchanged.
        "indicator_conditioning": "prompt",
        "normalization": "QUANTILES",
        "policy_lr": 3e-5,
        "scheduler_warmup_steps": 1000,
        "scheduler_decay_steps": 30_000,
    },
    "tiny": {
        "vlm_width": 128,
        "vlm_depth": 2,
        "vlm_mlp_dim": 256,
        "expert_width": 64,
        "expert_depth": 2,
        "expert_mlp_dim": 128,
        "num_heads": 4,
        "num_kv_heads": 1,
        "head_dim": 32,
        # 256 bytes + 256 state-bin tokens + pad/bos/eos (see byte_tokenizer.py).
        "vocab_size": 515,
        "vision_width": 64,
        "vision_depth": 1,
        "vision_heads": 2,
        "vision_mlp_dim": 128,
        "vision_patch_size": 8,
        "image_size": 32,
        "dtype": "float32",
        "gradient_checkpointing": False,
        # Measured (NOTES.md section 5): the tiny model does not learn from text-only state.
        "continuous_state_token": True,
        # The continuous token carries the state: 39 fewer prompt tokens (issue 19, docs/benchmarks.md).
        "state_in_prompt": False,
        # Measured (docs/demo.md, issue 19): through the prompt alone the tiny model ignores it.
        "indicator_conditioning": "modulation",
        # Quantile stats are noisy on the few-episode data sets the tiny preset is meant for.
        "normalization": "MEAN_STD",
        # Random init needs a far larger step than fine-tuning pretrained weights.
        "policy_lr": 5e-4,
        "scheduler_warmup_steps": 100,
        "scheduler_decay_steps": 30_000,
    },
}
