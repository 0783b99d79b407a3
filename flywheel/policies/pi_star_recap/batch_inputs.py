"""Reading a LeRobot batch: current/next frames, camera images, RECAP labels and data-type weights.

Labels are looked up in this order (README "How the labels arrive"):
  advantage indicator: `advantage_positive`, then `observation.advantage_positive`, else all positive
  data type:           `data_type_id`, then `observation.data_type_id` (0 demo, 1 auto, 2 intervention)
Stock lerobot-train's preprocessor keeps only observation.*, action, next.*, task and index columns, so
through stock training the `observation.*` spellings are the ones that arrive.
"""

import torch
import torch.nn.functional as F
from lerobot.utils.constants import OBS_STATE
from torch import Tensor

ADVANTAGE_KEYS = ("advantage_positive", "observation.advantage_positive")
DATA_TYPE_KEYS = ("data_type_id", "observation.data_type_id")


def has_time_axis(batch: dict) -> bool:
    """IQL training loads [current, next] frames (observation_delta_indices=[0, 1])."""
    return batch[OBS_STATE].ndim == 3


def frame(x: Tensor, index: int, timed: bool) -> Tensor:
    return x[:, index] if timed else x


def first_present(batch: dict, keys: tuple[str, ...]) -> Tensor | None:
    for key in keys:
        if key in batch:
            return torch.as_tensor(batch[key])
    return None


def advantage_labels(batch: dict, batch_size: int, timed: bool) -> Tensor:
    """Boolean [B]; demonstration-only data has no labels and counts as positive (paper)."""
    value = first_present(batch, ADVANTAGE_KEYS)
    if value is None:
        return torch.ones(batch_size, dtype=torch.bool)
    value = frame(value, 0, timed and value.ndim >= 2 and value.shape[1] == 2)
    return value.reshape(batch_size, -1)[:, 0].float().cpu() > 0.5


def data_type_weights(
    batch: dict, batch_size: int, weights: tuple[float, ...], balance: bool, timed: bool
) -> Tensor:
    """Per-sample loss weights from the data type; ones when the batch has no data type.

    With `balance`, each type present in the batch gets the same total mass (times its weight), so a
    batch dominated by autonomous frames does not drown the few intervention frames.
    """
    value = first_present(batch, DATA_TYPE_KEYS)
    if value is None:
        return torch.ones(batch_size)
    value = frame(value, 0, timed and value.ndim >= 2 and value.shape[1] == 2)
    ids = value.reshape(batch_size, -1)[:, 0].round().long().cpu().clamp(0, len(weights) - 1)
    w = torch.tensor(weights, dtype=torch.float32)[ids]
    if balance:
        counts = torch.bincount(ids, minlength=len(weights)).float()
        present = (counts > 0).sum()
        w = w * batch_size / (present * counts[ids])
    return w


def camera_images(
    batch: dict, keys: list[str], size: int, timed: bool, device: torch.device
) -> tuple[list[Tensor], list[Tensor]]:
    """Images in [-1, 1] at size x size (SigLIP's input), and per-camera presence masks.

    A camera missing from the batch becomes a -1 image with mask False (as pi0.5 does), so the
    policy still runs when a deployment lacks one of the training cameras.
    """
    present = [k for k in keys if k in batch]
    if not present:
        return [], []
    ref = frame(batch[present[0]], 0, timed)
    images, masks = [], []
    for key in keys:
        if key in batch:
            img = frame(batch[key], 0, timed).to(device=device, dtype=torch.float32)
            if img.shape[-2:] != (size, size):
                img = F.interpolate(img, size=(size, size), mode="bilinear", align_corners=False)
            images.append(img * 2.0 - 1.0)
            masks.append(torch.ones(img.shape[0], dtype=torch.bool, device=device))
        else:
            images.append(torch.full((ref.shape[0], 3, size, size), -1.0, device=device))
            masks.append(torch.zeros(ref.shape[0], dtype=torch.bool, device=device))
    return images, masks


def tasks_of(batch: dict, batch_size: int) -> list[str]:
    task = batch.get("task")
    if task is None:
        return [""] * batch_size
    if isinstance(task, str):
        return [task] * batch_size
    return list(task)
