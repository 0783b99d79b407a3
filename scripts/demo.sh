#!/usr/bin/env bash
# The main job: sets up (or reuses) .venv, then runs the flywheel on the simulated arm.
# Until `flywheel demo` exists (issue 7), this is a short supervised sim run: 5 episodes of a
# drifting policy corrected by a simulated operator, recorded into outputs/datasets/sim-demo.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export MUJOCO_GL=egl
exec .venv/bin/flywheel run --robot sim --episodes 5 --dataset.root="outputs/datasets/sim-demo-$(date +%Y%m%d-%H%M%S)" "$@"
