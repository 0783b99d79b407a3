#!/usr/bin/env bash
# Times the pi05 preset on the accelerator of this machine (see benchmarks/gpu.py); writes
# outputs/bench/gpu.json. Extra arguments go to benchmarks/gpu.py (`bash benchmarks/gpu.sh --help`).
#
# On a machine with an NVIDIA GPU, every phase at the full pi05 size (3.4B parameters, bf16, cuda),
# among them `served` (the preset through `flywheel serve` in a second process against the same
# checkpoint in-process) and `lerobot_pi05` (LeRobot 0.6's own PI05Policy at the same sizes):
#   bash benchmarks/gpu.sh --preset=pi05 --device=cuda --lerobot.dtype=bfloat16
# Only those two comparisons (with construct, which `served` needs):
#   bash benchmarks/gpu.sh --preset=pi05 --device=cuda --lerobot.dtype=bfloat16 --phases=[served,lerobot_pi05]
# Add --lerobot.compile=true for LeRobot's torch.compile figure (max-autotune: many minutes more).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec .venv/bin/python -m benchmarks.gpu "$@"
