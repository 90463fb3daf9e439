"""The evaluation: per-image metrics of one or more result folders against ground truths.

Writes into <out>/<level>/: results.csv (per image + set-level FID rows), table.md (the paper's
levels x methods layout and a full metrics table), grid.png (input, each method, ground truth for
the first few images, labelled). Existing outputs are never replaced unless `overwrite`.
Optional steps before it: synthesise the degraded inputs from the ground truths with the level's
preset (`make_inputs`), and run a restore command per method (`restore`) that turns the input
folder into a results folder.
"""

from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..device import resolve_device
from ..errors import ConfigError, DatasetError, IndigoError
from ..io.atomic import atomic_write_text
from .distributed import DistContext, init_distributed
from .folders import list_images, load_image, match_folders
from .report import SET_ROW, comparison_grid, markdown_table, write_csv

__all__ = ["EvalOptions", "EvalOutcome", "OutputExistsError", "RestoreCommandError", "evaluate", "rebuild_table",
           "ALL_METRICS", "OUTPUT_FILES"]

log = logging.getLogger("indigo_core.eval")

ALL_METRICS = ("psnr", "ssim", "lpips", "dists", "fid")
OUTPUT_FILES = ("results.csv", "table.md", "grid.png")


class OutputExistsError(IndigoError, FileExistsError):
    """An output file already exists and overwrite was not asked for."""


class RestoreCommandError(IndigoError, RuntimeError):
    """A restore command failed or left its output folder empty."""


@dataclass
class EvalOptions:
    """gt: ground-truth folder; results: {method name: folder} (in table order); inputs: degraded
    inputs (for the grid and the restore hook); level: row label (a preset name for make_inputs);
    metrics: subset of ALL_METRICS ("psnr" gives RGB and Y); fid_min_images: fewer images ->
    FID "not available"; restore: {method name: command with {input} and {output}}."""

    gt: Path
    out: Path
    results: dict[str, Path] = field(default_factory=dict)
    inputs: Path | None = None
    level: str = "custom"
    metrics: tuple[str, ...] = ALL_METRICS
    lpips_net: str = "alex"
    weights_dir: Path | None = None
    crop_border: int = 0
    fid_min_images: int = 50
    inception_weights: Path | None = None
    device: str | None = None
    grid_rows: int = 4
    grid_cell: int = 160
    overwrite: bool = False
    make_inputs: bool = False
    seed: int = 0
    restore: dict[str, str] = field(default_factory=dict)


@dataclass
class EvalOutcome:
    rows: list[dict]
    table: str
    files: dict[str, Path]


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"refusing to overwrite {', '.join(existing)} (pass --overwrite)")


def _make_inputs(opts: EvalOptions, folder: Path) -> int:
    """Degrade the ground truths with the --level preset into `folder`; returns how many. The caller
    reports it (once: the printed line of --make-inputs alone, else a log line)."""
    from PIL import Image

    from ..degradations import degrade, preset

    params = preset(opts.level)
    gt = list_images(opts.gt, "ground-truth folder")
    _fresh_folder(folder)
    g = torch.Generator().manual_seed(opts.seed)
    for name in sorted(gt):
        x = load_image(gt[name])
        y, _ = degrade(x, params, generator=g)
        arr = (y[0] * 255).round().byte().permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(folder / f"{name}.png")
    return len(gt)


def _fresh_folder(folder: Path) -> None:
    """An empty `folder`: an earlier run's folder (replaced under --overwrite, already checked) is
    removed first, so none of its files can be read as this run's."""
    if folder.is_dir():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)


def _run_restore(name: str, command: str, inputs: Path, output: Path) -> None:
    if "{input}" not in command or "{output}" not in command:
        raise ConfigError(f"restore command for {name!r}: expected {{input}} and {{output}} placeholders, got {command!r}")
    _fresh_folder(output)
    argv = [a.replace("{input}", str(inputs)).replace("{output}", str(output)) for a in shlex.split(command)]
    log.info("restoring with %s: %s", name, " ".join(argv))
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RestoreCommandError(f"restore command for {name!r} exited with {proc.returncode}: "
                                  f"{(proc.stderr or proc.stdout).strip()[-500:]}")
    if not any(output.iterdir()):
        raise RestoreCommandError(f"restore command for {name!r} wrote nothing into {output}")


class _Metrics:
    """The metric networks, loaded once, before any image is read (so missing weights fail fast)."""

    def __init__(self, opts: EvalOptions, device: torch.device, fid_extractor):
        from ..metrics import psnr, ssim

        self.opts, self.device = opts, device
        self.psnr, self.ssim = psnr, ssim
        self.lpips = self.dists = None
        if "lpips" in opts.metrics:
            from ..metrics.lpips import load_lpips

            self.lpips = load_lpips(opts.lpips_net, opts.weights_dir, device)
        if "dists" in opts.metrics:
            from ..metrics.dists import load_dists

            self.dists = load_dists(opts.weights_dir, device)
        self.fid_features: Callable | None = None
        self.fid_reason = ""
        self.fid_net = "inception-v3"
        if "fid" in opts.metrics:
            if fid_extractor is not None:
                self.fid_features, self.fid_net = fid_extractor, getattr(fid_extractor, "name", "custom")
            else:
                from ..metrics.fid import InceptionFeatures, find_inception_weights

                path, why = find_inception_weights(opts.inception_weights)
                if path is None:
                    self.fid_reason = why
                else:
                    self.fid_features = InceptionFeatures(path).to(device)

    @torch.no_grad()
    def row(self, gt: torch.Tensor, res: torch.Tensor) -> dict:
        cb = self.opts.crop_border
        r: dict = {}
        if "psnr" in self.opts.metrics:
            r["psnr"] = self.psnr(res, gt, crop_border=cb).item()
            r["psnr_y"] = self.psnr(res, gt, crop_border=cb, y_channel=True).item()
        if "ssim" in self.opts.metrics:
            a, b = (res, gt) if cb == 0 else (res[..., cb:-cb, cb:-cb], gt[..., cb:-cb, cb:-cb])
            r["ssim"] = self.ssim(a, b).item()
        if self.lpips is not None:
            r["lpips"] = self.lpips(res.to(self.device), gt.to(self.device)).item()
            r["lpips_net"] = self.opts.lpips_net
        if self.dists is not None:
            r["dists"] = self.dists(res.to(self.device), gt.to(self.device)).item()
        return r

    @torch.no_grad()
    def features(self, img: torch.Tensor) -> np.ndarray | None:
        if self.fid_features is None:
            return None
        return self.fid_features(img.to(self.device)).reshape(-1).double().cpu().numpy()


def evaluate(opts: EvalOptions, *, fid_extractor: Callable | None = None,
             ctx: DistContext | None = None) -> EvalOutcome | None:
    """Run the evaluation (sharded when started by torchrun). Returns the outcome on rank 0,
    None on the other ranks. fid_extractor: an optional callable (1,3,H,W) in [0,1] -> (1,d)
    features used instead of Inception-V3 (tests, custom feature nets)."""
    unknown = set(opts.metrics) - set(ALL_METRICS)
    if unknown:
        raise ConfigError(f"metrics: expected a subset of {ALL_METRICS}, got {sorted(unknown)}")
    if not opts.results and not opts.restore and not opts.make_inputs:
        raise ConfigError("expected at least one results folder (--results) or restore command (--restore), "
                          "or --make-inputs alone to write the degraded inputs")
    clash = set(opts.results) & set(opts.restore)
    if clash:
        raise ConfigError(f"method names must be unique; {sorted(clash)} name both a results folder and a restore command")
    if opts.grid_cell < 16 or opts.grid_rows < 0 or opts.crop_border < 0 or opts.fid_min_images < 2:
        raise ConfigError(f"expected --grid-cell >= 16, --grid-rows >= 0, --crop-border >= 0 and --fid-min-images >= 2, "
                          f"got {opts.grid_cell}, {opts.grid_rows}, {opts.crop_border} and {opts.fid_min_images}")
    own_ctx = ctx is None
    ctx = ctx or init_distributed()
    try:
        return _evaluate(opts, ctx, fid_extractor)
    finally:
        if own_ctx:
            ctx.close()


def _evaluate(opts: EvalOptions, ctx: DistContext, fid_extractor) -> EvalOutcome | None:
    level_dir = Path(opts.out) / opts.level
    if not opts.results and not opts.restore:  # --make-inputs alone: the degraded inputs, nothing to score
        inputs = level_dir / "inputs"
        if ctx.is_main:
            _check_outputs([inputs], opts.overwrite)
            _make_inputs(opts, inputs)
        ctx.barrier()
        return EvalOutcome(rows=[], table=f"wrote the {opts.level} inputs to {inputs}\n", files={"inputs": inputs}) \
            if ctx.is_main else None
    files = {name: level_dir / name for name in OUTPUT_FILES}
    _check_outputs(list(files.values()), opts.overwrite)
    results = dict(opts.results)
    inputs = opts.inputs
    # the device and the metric networks first: a bad device or missing weights fail before any
    # input is made or restore command runs
    device = resolve_device(opts.device, ctx.local_rank)
    metrics = _Metrics(opts, device, fid_extractor)
    error = None
    if ctx.is_main:
        try:
            if opts.make_inputs:
                inputs = level_dir / "inputs"
                _check_outputs([inputs], opts.overwrite)
                log.info("wrote %d %s inputs to %s", _make_inputs(opts, inputs), opts.level, inputs)
            for name, command in opts.restore.items():
                if inputs is None:
                    raise ConfigError(f"restore command for {name!r} needs an input folder (--input or --make-inputs)")
                results[name] = level_dir / "restored" / name
                _check_outputs([results[name]], opts.overwrite)
                _run_restore(name, command, inputs, results[name])
        except IndigoError as exc:
            error = exc
    # every rank learns the folders (or the failure) rank 0 prepared
    failure = None if error is None else f"{type(error).__name__}: {error}"
    failure, results, inputs = ctx.broadcast((failure, results, inputs))
    if error is not None:
        raise error
    if failure is not None:
        raise IndigoError(f"rank 0 failed: {failure}")
    names, gt_files, res_files, in_files = match_folders(opts.gt, results, inputs)
    methods = list(results)

    from tqdm import tqdm

    rows, feats = [], {m: {} for m in ["__gt__"] + methods}
    local_error: Exception | None = None
    try:
        for name in tqdm(ctx.shard(names), desc=f"eval {opts.level}", disable=not ctx.is_main, unit="img"):
            gt = load_image(gt_files[name])
            f = metrics.features(gt)
            if f is not None:
                feats["__gt__"][name] = f
            for m in methods:
                res = load_image(res_files[m][name])
                try:
                    row = metrics.row(gt, res)
                except IndigoError as exc:
                    raise DatasetError(f"{res_files[m][name]}: {exc}") from exc
                rows.append({"level": opts.level, "method": m, "file": res_files[m][name].name, "_name": name, **row})
                f = metrics.features(res)
                if f is not None:
                    feats[m][name] = f
    except IndigoError as exc:
        local_error = exc
    # a failure on any rank stops every rank (instead of leaving the others waiting in a collective)
    gathered = ctx.gather((rows, feats, None if local_error is None else f"{type(local_error).__name__}: {local_error}"))
    failure = next((g[2] for g in gathered if g[2] is not None), None) if ctx.is_main else None
    failure = ctx.broadcast(failure)
    if local_error is not None:
        raise local_error
    if failure is not None:
        raise IndigoError(f"another rank failed: {failure}")
    if not ctx.is_main:
        ctx.barrier()
        return None
    all_rows, all_feats = [], {k: {} for k in feats}
    for part_rows, part_feats, _ in gathered:
        all_rows += part_rows
        for k, v in part_feats.items():
            all_feats[k].update(v)
    order = {m: i for i, m in enumerate(methods)}
    all_rows.sort(key=lambda r: (order[r["method"]], r["_name"]))
    set_rows = []
    for m in methods:
        fid_row = {"level": opts.level, "method": m, "file": SET_ROW, "fid": None, "note": ""}
        if "fid" in opts.metrics:
            if metrics.fid_features is None:
                fid_row["note"] = f"not available: {metrics.fid_reason}"
            else:
                from ..metrics.fid import fid_from_features

                real = np.stack([all_feats["__gt__"][n] for n in names])
                fake = np.stack([all_feats[m][n] for n in names])
                res = fid_from_features(real, fake, min_images=opts.fid_min_images, feature_net=metrics.fid_net)
                fid_row["fid"] = res.value
                fid_row["note"] = "" if res.available else f"not available: {res.reason}"
        set_rows.append(fid_row)
    out_rows = [{k: v for k, v in r.items() if k != "_name"} for r in all_rows] + set_rows
    table = markdown_table(out_rows)
    level_dir.mkdir(parents=True, exist_ok=True)
    # each file appears whole or not at all; the grid (the step most likely to fail) first
    _write_grid(opts, names, methods, gt_files, res_files, in_files, all_rows, files["grid.png"])
    write_csv(out_rows, files["results.csv"])
    atomic_write_text(files["table.md"], table)
    log.info("wrote %s", ", ".join(str(p) for p in files.values()))
    ctx.barrier()
    return EvalOutcome(rows=out_rows, table=table, files=files)


def _write_grid(opts, names, methods, gt_files, res_files, in_files, rows, path: Path) -> None:
    pick = names[: max(1, opts.grid_rows)]
    by_key = {(r["method"], r["_name"]): r for r in rows}
    columns, captions = [], {}
    if in_files is not None:
        columns.append(("input", [load_image(in_files[n]) for n in pick]))
    for m in methods:
        c = len(columns)
        columns.append((m, [load_image(res_files[m][n]) for n in pick]))
        for i, n in enumerate(pick):
            r = by_key[(m, n)]
            bits = []
            if r.get("psnr") is not None:
                bits.append(f"{r['psnr']:.2f} dB")
            if r.get("lpips") is not None:
                bits.append(f"| LPIPS {r['lpips']:.3f}")
            captions[(i, c)] = " ".join(bits)
    columns.append(("ground truth", [load_image(gt_files[n]) for n in pick]))
    comparison_grid(columns, path, cell=opts.grid_cell, captions=captions)


def rebuild_table(csv_paths: list[Path], out: Path | None = None, overwrite: bool = False) -> str:
    """The markdown table from saved results CSVs (any levels); written to out/table.md if given."""
    from .report import read_csv

    rows = []
    seen: dict[tuple[str, str, str], Path] = {}
    for p in csv_paths:
        for r in read_csv(p):
            # the same (level, method, image) twice (the same CSV given twice, or two runs of one
            # level and method) would be averaged in silently: counted twice, or two runs blended
            key = (r["level"], r["method"], r["file"])
            if key in seen:
                what = "its FID row" if r["file"] == "*" else f"image {r['file']!r}"
                where = f"twice in {p} (a CSV given twice?)" if seen[key] == Path(p) else f"in both {seen[key]} and {p}"
                raise DatasetError(f"results CSVs: level {r['level']!r}, method {r['method']!r}, {what} appears "
                                   f"{where}; each (level, method, image) must appear once")
            seen[key] = Path(p)
            rows.append(r)
    if not rows:
        raise DatasetError(f"results CSV(s) {', '.join(map(str, csv_paths))}: no rows")
    table = markdown_table(rows)
    if out is not None:
        target = Path(out) / "table.md"
        _check_outputs([target], overwrite)
        atomic_write_text(target, table)
    return table
