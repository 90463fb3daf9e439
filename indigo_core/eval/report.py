"""Evaluation outputs: the per-image CSV, the markdown tables, the comparison grid.

CSV (`results.csv`): one row per (level, method, image) with PSNR (RGB), PSNR-Y, SSIM, LPIPS,
DISTS and the network that scored LPIPS (`lpips_net`); plus one row per (level, method) with file
`*` holding the set-level FID (or, in `note`, why it is not available). Floats are written with repr(), so reading the CSV back gives the same
numbers bit for bit and the table rebuilt from it (`--from-csv`) is identical to the one written
by the evaluation itself: both are made by `markdown_table` from the rows.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable
from pathlib import Path

from ..errors import DatasetError
from ..io.atomic import atomic_write, atomic_write_bytes

__all__ = ["COLUMNS", "METRICS", "SET_ROW", "write_csv", "read_csv", "summarise", "markdown_table",
           "comparison_grid", "LEVEL_ORDER"]

METRICS = ("psnr", "psnr_y", "ssim", "lpips", "dists")
COLUMNS = ("level", "method", "file") + METRICS + ("fid", "note", "lpips_net")
# CSVs written before LPIPS's network was recorded lack `lpips_net`; they still read
_OPTIONAL = ("lpips_net",)
SET_ROW = "*"
LEVEL_ORDER = ("mild", "medium", "severe")
_HEADERS = {"psnr": "PSNR", "psnr_y": "PSNR-Y", "ssim": "SSIM", "lpips": "LPIPS", "dists": "DISTS", "fid": "FID"}


def _fmt_value(v) -> str:
    if v is None:
        return ""
    return repr(float(v))


def write_csv(rows: Iterable[dict], path: Path) -> None:
    """The rows as `path` (written whole or not at all)."""
    buf = io.StringIO(newline="")
    w = csv.DictWriter(buf, fieldnames=COLUMNS)
    w.writeheader()
    for r in rows:
        w.writerow({k: (_fmt_value(r.get(k)) if k in METRICS + ("fid",) else r.get(k, "") or "")
                    for k in COLUMNS})
    atomic_write_bytes(path, buf.getvalue().encode("utf-8"))


def read_csv(path: str | Path) -> list[dict]:
    """Rows of a results CSV, numbers as floats (None where empty)."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"results CSV {path}: not found")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = set(COLUMNS) - set(_OPTIONAL) - set(reader.fieldnames or [])
        if missing:
            raise DatasetError(f"results CSV {path}: expected columns {list(COLUMNS)}, missing {sorted(missing)}")
        rows = []
        for i, r in enumerate(reader, start=2):
            row = {"level": r["level"], "method": r["method"], "file": r["file"], "note": r["note"],
                   "lpips_net": r.get("lpips_net") or ""}
            for k in METRICS + ("fid",):
                try:
                    row[k] = float(r[k]) if r[k] != "" else None
                except ValueError as exc:
                    raise DatasetError(f"results CSV {path}, line {i}: column {k} holds {r[k]!r}, not a number") from exc
            rows.append(row)
    return rows


def _level_key(level: str):
    return (LEVEL_ORDER.index(level), "") if level in LEVEL_ORDER else (len(LEVEL_ORDER), level)


def summarise(rows: list[dict]) -> tuple[list[str], list[str], dict[tuple[str, str], dict]]:
    """(levels in paper order, methods in first-seen order, {(level, method): {metric: mean, n, fid, note}})."""
    levels, methods = [], []
    acc: dict[tuple[str, str], dict] = {}
    for r in rows:
        key = (r["level"], r["method"])
        if r["level"] not in levels:
            levels.append(r["level"])
        if r["method"] not in methods:
            methods.append(r["method"])
        s = acc.setdefault(key, {"n": 0, "fid": None, "note": "", **{m: [] for m in METRICS}})
        if r["file"] == SET_ROW:
            s["fid"], s["note"] = r.get("fid"), r.get("note") or ""
            continue
        s["n"] += 1
        for m in METRICS:
            if r.get(m) is not None:
                s[m].append(r[m])
    for s in acc.values():
        for m in METRICS:
            vals = s[m]
            s[m] = math.fsum(vals) / len(vals) if vals else None
    return sorted(levels, key=_level_key), methods, acc


def _cell(v, digits: int) -> str:
    if v is None:
        return "-"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}"


def lpips_label(rows: list[dict]) -> str:
    """The LPIPS header, naming the network that scored the values, e.g. "LPIPS (alex)": values differ
    by network, so rows scored by different networks cannot be averaged into one table."""
    scored = [r for r in rows if r.get("lpips") is not None]
    first: dict[str, str] = {}  # network -> the first (level/method) it scored
    for r in scored:
        if r.get("lpips_net"):
            first.setdefault(r["lpips_net"], f"{r['level']}/{r['method']}")
    nets = sorted(first)
    if len(nets) > 1:
        where = "; ".join(f"{n} in {first[n]}" for n in nets)
        raise DatasetError(f"results: LPIPS was scored with different networks ({where}); expected one network "
                           f"per table (score every result with the same --lpips-net)")
    if not nets:
        return "LPIPS"
    unrecorded = sum(1 for r in scored if not r.get("lpips_net"))
    return f"LPIPS ({nets[0]})" if not unrecorded else f"LPIPS ({nets[0]}; {unrecorded} rows do not record it)"


def markdown_table(rows: list[dict]) -> str:
    """The paper's layout (levels x methods, cells "PSNR / LPIPS"), then every metric per method;
    the LPIPS headers name the network that scored it."""
    levels, methods, acc = summarise(rows)
    lpips = lpips_label(rows)
    out = ["# Evaluation", "", f"## PSNR (dB) / {lpips}, the paper's layout", "",
           "| Degradation | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for lv in levels:
        cells = []
        for m in methods:
            s = acc.get((lv, m))
            cells.append("" if s is None else f"{_cell(s['psnr'], 2)} / {_cell(s['lpips'], 4)}")
        out.append(f"| {lv} | " + " | ".join(cells) + " |")
    out += ["", "## All metrics (means over images; FID over the set)", "",
            "| Degradation | Method | Images | " + " | ".join(lpips if k == "lpips" else _HEADERS[k]
                                                             for k in METRICS + ("fid",)) + " |",
            "|---|---|---|" + "---|" * (len(METRICS) + 1)]
    notes = []
    for lv in levels:
        for m in methods:
            s = acc.get((lv, m))
            if s is None:
                continue
            digits = {"psnr": 2, "psnr_y": 2, "ssim": 4, "lpips": 4, "dists": 4}
            vals = [_cell(s[k], digits[k]) for k in METRICS]
            fid = _cell(s["fid"], 2) if s["fid"] is not None else "n/a"
            if s["fid"] is None and s["note"]:
                notes.append(s["note"])
            out.append(f"| {lv} | {m} | {s['n']} | " + " | ".join(vals) + f" | {fid} |")
    for note in dict.fromkeys(notes):
        out += ["", f"FID: {note}"]
    return "\n".join(out) + "\n"


def comparison_grid(columns: list[tuple[str, list]], path: Path, *, cell: int = 160,
                    captions: dict[tuple[int, int], str] | None = None) -> None:
    """Write a labelled PNG grid: one column per (label, [image (1,3,H,W) in [0,1] per row]),
    one row per image; each cell resized to `cell` px high (aspect kept, nearest for small
    inputs so their pixels stay visible). captions[(row, col)] is drawn under a cell."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    n_rows = len(columns[0][1])
    thumbs: list[list[Image.Image]] = []
    width = 0
    for _, images in columns:
        col = []
        for img in images:
            arr = (img[0].clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
            pil = Image.fromarray(np.ascontiguousarray(arr))
            w = max(1, round(pil.width * cell / pil.height))
            resample = Image.NEAREST if pil.height < cell // 2 else Image.BICUBIC
            col.append(pil.resize((w, cell), resample))
        thumbs.append(col)
    col_w = [max(t.width for t in col) for col in thumbs]
    head, cap, pad = 20, 16 if captions else 0, 4
    width = sum(col_w) + pad * (len(columns) + 1)
    height = head + n_rows * (cell + cap + pad) + pad
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    x = pad
    for c, ((label, _), col) in enumerate(zip(columns, thumbs)):
        draw.text((x, 4), label, fill=(0, 0, 0), font=font)
        y = head
        for r, t in enumerate(col):
            canvas.paste(t, (x, y))
            if captions and (r, c) in captions:
                draw.text((x, y + cell + 2), captions[(r, c)], fill=(0, 0, 0), font=font)
            y += cell + cap + pad
        x += col_w[c] + pad
    atomic_write(path, lambda fh: canvas.save(fh, format="PNG"))
