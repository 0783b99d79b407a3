#!/usr/bin/env bash
# The main job: sets up (or reuses) .venv, then runs `flywheel demo`: the whole flywheel on the
# simulated arm (demonstrations, SFT, rollouts with takeovers, RECAP iterations with hot-swaps)
# against the baselines, with a report in outputs/demo. Extra arguments go to `flywheel demo`
# (e.g. --quick for the 5-minute version).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
export MUJOCO_GL=egl
# A new folder per run: a finished report is never overwritten, and the command can run again.
exec .venv/bin/flywheel demo --out_dir="outputs/demo/$(date +%Y%m%d-%H%M%S)" "$@"
