#!/usr/bin/env bash
# Train the bundled prior (autoencoder, then UNet) in one time-bounded run on a GPU machine.
#
#   bash tools/gpu_train.sh [--overwrite] [STAGED_DATA_DIR]        (default: .gpu_data)
#
# STAGED_DATA_DIR holds train/ and val/ photos and split.json, as written here by
#   .venv/bin/python -m indigo_core.prior.train stage --data ../shared/data/photos --out .gpu_data
# (the GPU machine gets the repository but not ../shared/; .gpu_data is git-ignored, so it must be
# named in the run's carry list).
#
# Needs only python3 with torch, numpy, Pillow and safetensors (no venv, no network). Results go
# to $OUT (default runs/gpu_out): the two fp16 weight files, their model cards, run.log and
# logs.tar.gz (CSV logs, sample/reconstruction PNGs, split.json) - six files. A $OUT that already
# holds one of them is refused before anything runs unless --overwrite (run.log is appended to);
# each is written as a .part file and renamed, so an interrupted run leaves no half-copied file.
#
# Time: the autoencoder loop gets AE_MINUTES, the UNet loop UNET_MINUTES, both capped so that the
# whole script ends within TOTAL_MINUTES of its start (set-up, exports and sampling included).
# Environment: PYTHON (python3), AE_MINUTES (3.75), UNET_MINUTES (3.5), TOTAL_MINUTES (9.3),
# AE_VARIANTS (space-separated PRESET:LR autoencoders trained side by side; default small:5e-4),
# AE_ARGS / UNET_ARGS (extra arguments, e.g. for a CPU check), WORK (scratch folder).
# The bundled autoencoder is now the plain `lean` one, trained on the CPU (its model card has the
# command); to train that design here: AE_VARIANTS=lean:1e-3 AE_ARGS="--mse-weight 1 --ssim-weight 0
# --warmup 50" (not yet run on a GPU).
set -uo pipefail
export PYTHONUNBUFFERED=1
cd "$(dirname "$0")/.."
t0=$(date +%s)
overwrite=0
if [ "${1:-}" = --overwrite ]; then overwrite=1; shift; fi
data=${1:-.gpu_data}
py=${PYTHON:-python3}
out=${OUT:-runs/gpu_out}
work=${WORK:-runs/gpu_work}
ae_min=${AE_MINUTES:-3.75}
unet_min=${UNET_MINUTES:-3.5}
total_min=${TOTAL_MINUTES:-9.3}
outputs="indigo-prior-vae.safetensors indigo-prior-vae.card.json indigo-prior-unet.safetensors
         indigo-prior-unet.card.json logs.tar.gz"
if [ $overwrite = 0 ]; then
  for f in $outputs; do
    [ -e "$out/$f" ] && { echo "gpu_train: $out/$f already exists: pass --overwrite to replace the earlier" \
      "run's files, or set OUT to another folder" >&2; exit 2; }
  done
fi
mkdir -p "$out" "$work"
exec > >(tee -a "$out/run.log") 2>&1

say() { echo "[gpu_train $(($(date +%s) - t0))s] $*"; }
# put FILE...: copy into $out, each through a .part file renamed into place
put() {
  local f part
  for f in "$@"; do
    part="$out/.$(basename "$f").part"
    cp "$f" "$part" && mv -f "$part" "$out/$(basename "$f")" || return 1
  done
}
left_min() { "$py" -c "import sys; print(max(0.0, $total_min - ($(date +%s) - $t0) / 60.0 - float(sys.argv[1])))" "$1"; }
min_of() { "$py" -c "import sys; print(min(float(a) for a in sys.argv[1:]))" "$@"; }

say "data=$data out=$out work=$work ae=${ae_min}min unet=${unet_min}min total<=${total_min}min"
[ -d "$data/train" ] && [ -d "$data/val" ] || { say "no $data/train or $data/val: stage the photos first (see the header)"; exit 2; }
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
"$py" -c "import torch, numpy, PIL, safetensors; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())" || exit 2

pyflags=""
# The prior's training needs only part of indigo_core; if the package's top level cannot import
# here (an optional dependency of another part missing), run it through a view whose top-level
# __init__ is empty.
if ! "$py" -c "import indigo_core.prior.train" 2>"$work/import.err"; then
  say "indigo_core does not import as a whole here:"; tail -3 "$work/import.err"
  view="$work/pkgview"; rm -rf "$view"; mkdir -p "$view/indigo_core"
  : > "$view/indigo_core/__init__.py"
  for entry in indigo_core/*; do
    [ "$(basename "$entry")" = "__init__.py" ] || ln -s "$(pwd)/$entry" "$view/indigo_core/"
  done
  export PYTHONPATH="$view${PYTHONPATH:+:$PYTHONPATH}"
  pyflags="-P"  # keep the working directory (the real package) off sys.path
  "$py" $pyflags -c "import indigo_core.prior.train" || { say "cannot import indigo_core.prior.train"; exit 2; }
  say "using the package view $view"
fi

unet_dir="$work/unet"
# After the AE loop: its export, the UNet set-up (~0.4 min), the UNet loop and its export (~0.5 min).
reserve=$("$py" -c "print(float('$unet_min') + 0.9)")
ae_budget=$(min_of "$ae_min" "$(left_min "$reserve")")
# AE_VARIANTS: space-separated PRESET:LR pairs trained side by side on the one GPU (each gets the
# whole time budget); the one with the best validation PSNR is exported and the UNet trains on it.
# They share the GPU: on an H200 a `small` variant ran at 5.0 steps/s beside a `base` one (3.3),
# against 12.4 for `small` alone in an earlier run, so a second variant costs the first more than
# half its steps.
variants=${AE_VARIANTS:-small:5e-4}
say "autoencoder: ${ae_budget} min; variants: $variants"
pids=(); dirs=()
for v in $variants; do
  preset=${v%%:*}; lr=${v#*:}
  d="$work/ae_${preset}_${lr}"; dirs+=("$d"); mkdir -p "$d"
  timeout $(( ${ae_budget%.*} * 60 + 240 )) "$py" $pyflags -m indigo_core.prior.train autoencoder \
    --data "$data/train" --val-data "$data/val" --out "$d" --overwrite --preset "$preset" --lr "$lr" \
    --max-minutes "$ae_budget" --val-minutes 0.5 --ckpt-minutes 100 --log-every 100 ${AE_ARGS:-} \
    > "$d/train.log" 2>&1 &
  pids+=($!)
done
for i in "${!pids[@]}"; do
  wait "${pids[$i]}"; r=$?
  say "variant ${dirs[$i]}: rc=$r"; tail -2 "${dirs[$i]}/train.log"
done
ae_dir=$("$py" - "${dirs[@]}" <<'PY'
import json, pathlib, sys
best = None
for d in sys.argv[1:]:
    card = pathlib.Path(d) / "indigo-prior-vae.card.json"
    if card.exists():
        q = json.loads(card.read_text())["quality"]["val_psnr_db"]
        print(d, q, file=sys.stderr)
        if best is None or q > best[0]:
            best = (q, d)
print(best[1] if best else "")
PY
)
[ -n "$ae_dir" ] || { say "no autoencoder variant finished"; exit 3; }
say "chosen autoencoder: $ae_dir"
put "$ae_dir"/indigo-prior-vae.safetensors "$ae_dir"/indigo-prior-vae.card.json \
  || say "could not copy the autoencoder into $out"

unet_budget=$(min_of "$unet_min" "$(left_min 0.6)")
say "unet: ${unet_budget} min"
timeout $(( ${unet_budget%.*} * 60 + 180 )) "$py" $pyflags -m indigo_core.prior.train unet \
  --data "$data/train" --val-data "$data/val" --out "$unet_dir" --overwrite \
  --autoencoder "$ae_dir/indigo-prior-vae.safetensors" \
  --max-minutes "$unet_budget" --val-minutes 0.5 --ckpt-minutes 100 --log-every 200 ${UNET_ARGS:-}
rc=$?
[ $rc -eq 0 ] && put "$unet_dir"/indigo-prior-unet.safetensors "$unet_dir"/indigo-prior-unet.card.json \
  || say "unet training failed (rc=$rc)"

files=()
for d in "${dirs[@]}"; do
  for f in "$d"/autoencoder_log.csv "$d"/autoencoder_val_recon.png "$d"/indigo-prior-vae.card.json "$d"/train.log; do
    [ -f "$f" ] && files+=("$f")
  done
done
for f in "$unet_dir"/unet_log.csv "$unet_dir"/unet_samples.png "$data"/split.json; do
  [ -f "$f" ] && files+=("$f")
done
tar -czf "$out/.logs.tar.gz.part" "${files[@]}" && mv -f "$out/.logs.tar.gz.part" "$out/logs.tar.gz"
"$py" - "$out" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
for name in ("indigo-prior-vae.card.json", "indigo-prior-unet.card.json"):
    p = out / name
    if p.exists():
        c = json.loads(p.read_text())
        print(name, "steps", c["training"]["steps"], "s", c["training"]["duration_s"],
              {k: v for k, v in c["quality"].items() if not isinstance(v, (list, dict)) and k.startswith("val")})
PY
say "done (rc=$rc); files in $out:"; ls -la "$out"
exit $rc
