"""Value inference speed: batched (as `flywheel label` runs it) vs one frame at a time.

python -m benchmarks.value_inference DATASET MODEL_DIR   (MODEL_DIR: OUT/meta/recap_value)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from flywheel.recap.source import STATE, load_source
from flywheel.recap.train_value import load_value_model, predict, preprocess_all


@torch.no_grad()
def one_at_a_time(fitted, source, n: int, through_preprocessor: bool) -> float:
    """Frames per second, one forward pass per frame."""
    tasks = source.task_of_frames()
    states = preprocess_all(fitted, source)
    raw = torch.from_numpy(source.frames.state)
    start = time.perf_counter()
    for i in range(n):
        if through_preprocessor:  # as a policy server would: LeRobot's pipeline on each frame
            batch = fitted.preprocessor({STATE: raw[i], "task": tasks[i]})
        else:
            batch = {STATE: states[i : i + 1], "task": [tasks[i]]}
        fitted.policy.predict_value(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("model")
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = load_source(args.dataset)
    fitted = load_value_model(args.model)
    frames = np.arange(len(source.frames))
    for batch_size in (2048, 256):
        start = time.perf_counter()
        predict(fitted, source, frames, batch_size)
        print(f"batched ({batch_size}): {len(frames) / (time.perf_counter() - start):.0f} frames/s")
    n = min(500, len(frames))
    print(f"one at a time, model only: {one_at_a_time(fitted, source, n, False):.0f} frames/s")
    print(f"one at a time, preprocessor + model: {one_at_a_time(fitted, source, n, True):.0f} frames/s")


if __name__ == "__main__":
    main()
