#!/usr/bin/env bash
# The demo: restores a bundled photo through a real, headless ComfyUI with the pack's own models.
#   ./scripts/demo.sh [--photo FILE] [--crop N] [--out DIR]     (outputs: runs/demo/)
# The first run prepares .venv and the ComfyUI host (scripts/setup_env.sh, cached afterwards).
# No network is used after the set-up; nothing is downloaded at run time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
printf '[demo] preparing the environment (cached after the first run)\n'
. scripts/setup_env.sh
exec "$root/.venv/bin/python" scripts/demo.py "$@"
