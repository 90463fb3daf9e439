"""Copy trained models into the pack's models/ folder as small fp16 files with their model cards.

    .venv/bin/python scripts/package_models.py inn runs/defaults/pixel/indigo-pixel-inn-x4.safetensors
    .venv/bin/python scripts/package_models.py estimator runs/defaults/est/indigo-estimator.safetensors
    .venv/bin/python scripts/package_models.py restorer runs/restorer/r1/indigo-restorer-x4.safetensors

Writes models/<same name>.safetensors (floating-point tensors in fp16; the file keeps its format,
config and embedded model card) and models/<name>.card.json: the training CLI's card plus a
"bundled" section (precision, size, SHA-256, and the largest output change fp16 causes on a fixed
random input, measured here). Refuses to replace files unless --overwrite, and to write over the
source itself (--out its own folder) in any case.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

import torch  # noqa: E402

from output_files import refuse_existing, write_text  # noqa: E402  (scripts/output_files.py)


def _half(sd: dict) -> dict:
    return {k: (v.half() if v.is_floating_point() else v) for k, v in sd.items()}


def package(kind: str, src: Path, out_dir: Path, overwrite: bool, note: str = "",
            for_vae: Path | None = None) -> Path:
    from indigo_core.io.weights import read_weights_file, write_weights_file

    fmt = {"inn": "indigo-inn", "estimator": "indigo-estimator", "restorer": "indigo-restorer"}[kind]
    dst = out_dir / src.name
    card_src = src.with_name(src.name.replace(".safetensors", ".card.json"))
    card_dst = out_dir / card_src.name
    if dst.exists() and dst.resolve() == src.resolve():
        raise SystemExit(f"{dst} is the source file itself: choose another --out")
    refuse_existing([dst, card_dst], overwrite)
    tensors, metadata = read_weights_file(src, fmt)
    write_weights_file(dst, _half(tensors), metadata, overwrite=overwrite)

    g = torch.Generator().manual_seed(0)
    if kind == "inn":
        from indigo_core.io.weights import load_inn

        a, b = load_inn(src), load_inn(dst)
        c = a.config.channels
        x = torch.rand(1, c, 64, 64, generator=g)
        gamma = torch.randn(1, a.config.emb_dim, generator=g)
        with torch.no_grad():
            (ca, da), (cb, db) = a(x, gamma), b(x, gamma)
            diff = max([(ca - cb).abs().max().item()] + [(u - v).abs().max().item() for u, v in zip(da, db)])
            inv = (b.inverse(cb, db, gamma) - x).abs().max().item()
        check = {"input": f"uniform random (1,{c},64,64), random gamma", "max_abs_forward_change": diff,
                 "fp16_file_inverse_max_abs_error": inv}
    elif kind == "restorer":
        from indigo_core.restorer import load_restorer

        a, b = load_restorer(src), load_restorer(dst)
        y = torch.rand(1, 3, 32, 32, generator=g)
        with torch.no_grad():
            diff = (a.restore(y) - b.restore(y)).abs().max().item()
        check = {"input": "uniform random (1,3,32,32)", "max_abs_output_change": diff}
    else:
        from indigo_core.estimator import load_estimator

        a, b = load_estimator(src), load_estimator(dst)
        y = torch.rand(2, 3, 32, 32, generator=g)
        with torch.no_grad():
            ga, gb = a(y), b(y)
        check = {"input": "uniform random (2,3,32,32)", "max_abs_embedding_change": (ga - gb).abs().max().item(),
                 "embedding_abs_max": ga.abs().max().item()}
    card = json.loads(card_src.read_text()) if card_src.is_file() else {}
    card["bundled"] = {
        "file": f"models/{dst.name}",
        "precision": "float16 (converted from the float32 training export; loaders cast back to float32)",
        "bytes": dst.stat().st_size,
        "sha256": hashlib.sha256(dst.read_bytes()).hexdigest(),
        "fp16_check": check,
        "packaged_with": f"scripts/package_models.py {kind} {src}",
        "packaged_on": platform.platform(),
    }
    if note:
        card["bundled"]["note"] = note
    if for_vae is not None:
        card["bundled"]["for_autoencoder"] = {"file": for_vae.name,
                                              "sha256": hashlib.sha256(for_vae.read_bytes()).hexdigest()}
    write_text(card_dst, json.dumps(card, indent=2, default=str) + "\n")
    return dst


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("inn", "estimator", "restorer"))
    ap.add_argument("src", type=Path, help="the training run's exported .safetensors (card.json next to it)")
    ap.add_argument("--out", type=Path, default=REPO_ROOT / "models")
    ap.add_argument("--overwrite", action="store_true")
    ap.add_argument("--note", default="", help="a remark on the measured quality, kept in the card")
    ap.add_argument("--for-vae", type=Path, default=None,
                    help="a LatentINN's autoencoder file: its name and SHA-256 go into the card")
    args = ap.parse_args(argv)
    if args.src.suffix != ".safetensors":  # its card is found, and written, by replacing that suffix
        ap.error(f"src {args.src}: expected a .safetensors file")
    if args.for_vae is not None and not args.for_vae.is_file():
        ap.error(f"--for-vae {args.for_vae}: no such file")
    dst = package(args.kind, args.src, args.out, args.overwrite, args.note, args.for_vae)
    print(f"wrote {dst} ({dst.stat().st_size / 1e6:.2f} MB) and its card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
