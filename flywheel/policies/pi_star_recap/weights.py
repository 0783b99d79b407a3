"""Loading pretrained weights: LeRobot's pi05_base checkpoint, or a plain HF PaliGemma checkpoint.

This model's parameters are named like pi05's (`model.` + checkpoint key), so the remap is total:
add the `model.` prefix, drop the tied LM heads, and rename the two layouts transformers has used
for PaliGemma (`paligemma.language_model.model.*` before 4.52, `paligemma.model.language_model.*`
after). Keys of modules pi05_base has no counterpart for (the continuous state token, IQL heads) are
reported as missing rather than hidden.
"""

import logging
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor, nn
from transformers.models.gemma.modeling_gemma import GemmaTextScaledWordEmbedding

PI05_PREFIX = "paligemma_with_expert."
TIED_HEADS = (
    "paligemma_with_expert.paligemma.lm_head.weight",
    "paligemma_with_expert.gemma_expert.lm_head.weight",
)
# transformers < 4.52 nested PaliGemma differently; both layouts occur in published checkpoints.
LEGACY_RENAMES = (
    ("paligemma.language_model.model.", "paligemma.model.language_model."),
    ("paligemma.vision_tower.", "paligemma.model.vision_tower."),
    ("paligemma.multi_modal_projector.", "paligemma.model.multi_modal_projector."),
)
# openpi-era names of the time MLP.
OLD_NAMES = (("action_time_mlp_in.", "time_mlp_in."), ("action_time_mlp_out.", "time_mlp_out."))


def remap_pi05_key(key: str) -> str | None:
    """pi05_base key -> this policy's state-dict key; None for keys that are deliberately dropped."""
    if key in TIED_HEADS or key.endswith("lm_head.weight"):
        return None
    for old, new in (*LEGACY_RENAMES, *OLD_NAMES):
        if old in key and new not in key:
            key = key.replace(old, new)
    return key if key.startswith("model.") else f"model.{key}"


def remap_paligemma_key(key: str) -> str | None:
    """HF PaliGemma checkpoint key (prefix only) -> this policy's key; None for the LM head."""
    if key.endswith("lm_head.weight"):
        return None
    key = key.removeprefix("model.")
    if key.startswith("language_model.model."):
        key = key.replace("language_model.model.", "language_model.", 1)
    return f"model.paligemma_with_expert.paligemma.model.{key}"


# V: a tensor, or nothing when only the names are remapped.
def remap_state_dict[V](state_dict: dict[str, V]) -> dict[str, V]:
    """Pick the remap by layout: pi05 keys live under paligemma_with_expert, HF PaliGemma's do not."""
    is_pi05 = any(PI05_PREFIX in k for k in state_dict)
    remap = remap_pi05_key if is_pi05 else remap_paligemma_key
    out = {}
    for key, value in state_dict.items():
        new = remap(key)
        if new is not None:
            out[new] = value
    return out


def _safetensors_files(path: str | Path) -> list[Path]:
    """A file, or a directory holding model.safetensors or sharded model-*.safetensors."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(path.glob("model*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no model*.safetensors under {path}")
    return files


def read_safetensors(path: str | Path) -> dict[str, Tensor]:
    state: dict[str, Tensor] = {}
    for file in _safetensors_files(path):
        state.update(load_file(str(file)))
    return state


def covers(path: str | Path, keys: Iterable[str]) -> bool:
    """Whether the checkpoint at `path`, remapped, holds every one of `keys` (reads names only)."""
    names: dict[str, None] = {}
    for file in _safetensors_files(path):
        with safe_open(str(file), framework="pt") as f:
            names |= dict.fromkeys(f.keys())
    return set(keys) <= set(remap_state_dict(names))


def load_pretrained(policy: nn.Module, path: str | Path) -> tuple[list[str], list[str]]:
    """Load remapped weights into `policy` (dtype converted); returns (missing, unexpected) keys."""
    remapped = remap_state_dict(read_safetensors(path))
    own = policy.state_dict()
    remapped = {k: v.to(own[k].dtype) if k in own else v for k, v in remapped.items()}
    with torch.no_grad():
        missing, unexpected = policy.load_state_dict(remapped, strict=False)
    logging.info(
        "loaded %d tensors from %s (%d missing, %d unexpected)",
        len(remapped),
        path,
        len(missing),
        len(unexpected),
    )
    return list(missing), list(unexpected)


def uninitialized[M: nn.Module](factory: Callable[[], M]) -> M:
    """The module `factory` builds, its parameters allocated on the CPU but not initialised, for a
    checkpoint that overwrites all of them next (at pi05 size the random init is ~40 s of CPU). The
    factory runs on the meta device, so its dtype casts cost nothing either. What no checkpoint
    holds is computed as usual: each module owning a non-persistent buffer (rotary frequencies,
    SigLIP's position ids, Gemma's embedding scale) is rebuilt."""
    with torch.device("meta"):
        module = factory()
    module.to_empty(device="cpu")
    persistent = module.state_dict().keys()
    owners = {name.rpartition(".")[0] for name, _ in module.named_buffers() if name not in persistent}
    for owner_name in sorted(owners):
        _rebuild_unsaved_tensors(module.get_submodule(owner_name), owner_name)
    leftover = [name for name, sub in module.named_modules() for v in vars(sub).values() if _is_meta(v)]
    if leftover:
        raise RuntimeError(f"uninitialized: tensors left on the meta device in {sorted(set(leftover))}")
    return module


def _rebuild_unsaved_tensors(owner: nn.Module, name: str) -> None:
    if isinstance(owner, GemmaTextScaledWordEmbedding):
        # transformers 5 scales Gemma's token embeddings inside the embedding, by an unsaved
        # buffer; it has no config, and rebuilding it would allocate the whole vocabulary again.
        scale = owner._buffers["embed_scale"]
        owner._buffers["embed_scale"] = torch.tensor(owner.scalar_embed_scale).to(scale.dtype)
        return
    config = getattr(owner, "config", None)
    if config is None:
        raise TypeError(f"uninitialized: {name} ({type(owner).__name__}) has unsaved buffers but no config")
    fresh = type(owner)(config)
    for attr in owner._non_persistent_buffers_set:  # in the dtype the factory gave them (.to(bf16))
        owner._buffers[attr] = fresh._buffers[attr].to(owner._buffers[attr].dtype)


def _is_meta(value: object) -> bool:
    return isinstance(value, Tensor) and value.is_meta
