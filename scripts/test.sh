#!/usr/bin/env bash
# The one test command: sets up everything on a fresh machine, then runs the whole suite.
#   ./scripts/test.sh [pytest args...]
# Creates .venv/ at the repo root (torch 2.14.1 + torchvision 0.29.1 + the pack's dependencies),
# obtains the real ComfyUI 0.3.75 host into a cache outside the repo, then runs pytest.
# Idempotent: a second run only checks stamps and goes straight to pytest.
# Environment:
#   COMFYUI_PATH   use this ComfyUI checkout instead of the cached 0.3.75 host
#   INDIGO_CACHE   where the host is cached (default: ~/.cache/comfyui-indigo)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
INDIGO_SETUP_BROWSER=1 . scripts/setup_env.sh
exec "$root/.venv/bin/python" -m pytest "$@"
