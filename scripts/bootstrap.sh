#!/usr/bin/env bash
# Create or reuse the project's virtualenv at .venv/. Safe to run again; prints what it does.
#
# Two layers, so a fresh clone (CI, a second checkout) does not reinstall several GB:
#   1. a base virtualenv with every pinned dependency of requirements/lock.txt, shared by all
#      checkouts of this machine under $FLYWHEEL_CACHE (default ~/.cache/flywheel), keyed by the
#      lock file's hash;
#   2. the checkout's own thin .venv, which sees the base through a .pth file and holds only this
#      repository (editable) and its LeRobot plugin shims.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${FLYWHEEL_PYTHON:-}
CACHE=${FLYWHEEL_CACHE:-$HOME/.cache/flywheel}
LOCK=$ROOT/requirements/lock.txt
# Shim distributions that let stock LeRobot discover our robots, teleoperators and policies.
PLUGINS=()
for plugin in "$ROOT"/plugins/*/pyproject.toml; do PLUGINS+=("plugins/$(basename "$(dirname "$plugin")")"); done

log() { echo "[bootstrap] $*" >&2; }

# Python 3.12 (lerobot 0.6 needs it): $FLYWHEEL_PYTHON, else python3.12 on PATH, else pyenv's newest
# 3.12 (a pyenv shim on PATH that has no 3.12 selected fails the check and is passed over).
is_312() { [ -n "$1" ] && "$1" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; }
find_python() {
  local candidates=() pyenv_root
  [ -n "$PYTHON" ] && candidates+=("$PYTHON")
  command -v python3.12 >/dev/null && candidates+=("$(command -v python3.12)")
  pyenv_root=$( (command -v pyenv >/dev/null && pyenv root) || echo "$HOME/.pyenv")
  while IFS= read -r found; do candidates+=("$found"); done < <(
    ls -d "$pyenv_root"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -rV)
  for candidate in "${candidates[@]}"; do
    if is_312 "$candidate"; then echo "$candidate"; return; fi
  done
}
PYTHON=$(find_python)
if [ -z "$PYTHON" ]; then
  log "error: no Python 3.12 found (tried \$FLYWHEEL_PYTHON, python3.12 on PATH, \$(pyenv root)/versions/3.12.*)."
  log "       Install one, e.g. 'pyenv install 3.12' or 'apt-get install python3.12 python3.12-venv',"
  log "       or point FLYWHEEL_PYTHON at a python3.12 binary."
  exit 1
fi
log "using $PYTHON ($("$PYTHON" --version))"

# MuJoCo's offscreen camera needs EGL; state-only runs do not. Install it when we can.
if ! ldconfig -p 2>/dev/null | grep -q 'libEGL.so.1'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing EGL for MuJoCo rendering (apt)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libegl1 libgl1 libgl1-mesa-dri >/dev/null
  else
    log "warning: libEGL not found; the sim camera (robot.camera) will not work"
  fi
fi

# LeRobot 0.6 decodes videos with torchcodec, which loads FFmpeg's shared libraries; without them
# every dataset it opens prints a long traceback before it falls back to pyav.
if ! ldconfig -p 2>/dev/null | grep -q 'libavutil.so'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing FFmpeg's libraries for LeRobot's video decoder (apt)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null \
      || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ffmpeg >/dev/null; }
  else
    log "warning: FFmpeg's libraries not found; LeRobot falls back to pyav for video (install ffmpeg)"
  fi
fi

mkdir -p "$CACHE"
lock_hash=$(sha256sum "$LOCK" | cut -c1-16)
BASE=$CACHE/venv-$lock_hash
(
  flock 9
  if [ ! -f "$BASE/.complete" ]; then
    log "creating base virtualenv $BASE (pinned dependencies; several GB, a few minutes the first time)"
    rm -rf "$BASE"
    "$PYTHON" -m venv "$BASE"
    "$BASE/bin/python" -m pip install -q --disable-pip-version-check --upgrade "pip==25.3"
    "$BASE/bin/python" -m pip install --disable-pip-version-check --progress-bar off -q -r "$LOCK"
    touch "$BASE/.complete"
  fi
) 9>"$CACHE/.lock"

VENV=$ROOT/.venv
stamp_files=("$LOCK" "$ROOT/pyproject.toml")
for plugin in "${PLUGINS[@]}"; do stamp_files+=("$ROOT/$plugin/pyproject.toml"); done
stamp=$(cat "${stamp_files[@]}" | sha256sum | cut -c1-16)
if [ "$(cat "$VENV/.flywheel-stamp" 2>/dev/null)" != "$stamp-$BASE" ]; then
  log "creating $VENV on top of $BASE"
  rm -rf "$VENV"
  "$PYTHON" -m venv --without-pip "$VENV"
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  base_site=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  # addsitedir (not a bare path) so the base's own .pth files (rerun_sdk.pth, ...) are processed too.
  echo "import site; site.addsitedir('$base_site')" > "$site/_flywheel_base.pth"
  # Console scripts of the base (pytest, ruff, lerobot-train, accelerate, ...) re-pointed at this
  # interpreter, so they see this checkout's packages too.
  for script in "$BASE"/bin/*; do
    name=$(basename "$script")
    [ -e "$VENV/bin/$name" ] && continue
    if head -n1 "$script" | grep -q "^#!$BASE/bin/python"; then
      { echo "#!$VENV/bin/python"; tail -n +2 "$script"; } > "$VENV/bin/$name"
      chmod +x "$VENV/bin/$name"
    elif [ -x "$script" ] && [ ! -L "$script" ]; then
      ln -s "$script" "$VENV/bin/$name"  # a native tool (ruff)
    fi
  done
  args=(-e "$ROOT")
  for plugin in "${PLUGINS[@]}"; do args+=(-e "$ROOT/$plugin"); done
  (cd "$ROOT" && "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation "${args[@]}")
  echo "$stamp-$BASE" > "$VENV/.flywheel-stamp"
fi
