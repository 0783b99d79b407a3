#!/usr/bin/env bash
# Times the pi05 preset on the accelerator of this machine (see benchmarks/gpu.py); writes
# outputs/bench/gpu.json. Extra arguments go to benchmarks/gpu.py (e.g. --base_model_path=DIR).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/bootstrap.sh
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true
exec .venv/bin/python -m benchmarks.gpu "$@"
