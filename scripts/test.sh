#!/usr/bin/env bash
# The test suite: sets up (or reuses) .venv, checks lint, runs pytest. Extra arguments go to pytest.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
bash scripts/bootstrap.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# The architecture (docs/architecture.md, [tool.importlinter] in pyproject.toml): layers, no cycles.
.venv/bin/lint-imports --no-cache
# Headless: no display for pygame, software EGL for MuJoCo.
export SDL_VIDEODRIVER=dummy SDL_AUDIODRIVER=dummy MUJOCO_GL=egl
set +e
.venv/bin/python -m pytest -m "not slow" "$@"
code=$?
set -e
if [ "$code" = 5 ]; then
  echo "pytest collected no tests: that is a failure here" >&2
  exit 1
fi
exit "$code"
