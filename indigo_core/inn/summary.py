"""`python -m indigo_core.inn.summary`: parameter counts of each INN preset (and the estimators)."""

from __future__ import annotations

import argparse
import logging

import torch

from .config import PRESET_NAMES, INNConfig
from .network import WaveletINN

log = logging.getLogger(__name__)


def count_parameters(module: torch.nn.Module) -> int:
    """Number of trainable parameter values."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def preset_table(include_estimators: bool = True) -> str:
    """A Markdown table: preset, domain, split, levels, pairs, width, blocks, scale, parameters."""
    rows = ["| preset | domain | C | split | levels | pairs (shared) | width | blocks x layers | scale | parameters |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for name in PRESET_NAMES:
        cfg = INNConfig.preset(name)
        with torch.device("meta"):
            n = count_parameters(WaveletINN(cfg, haar_backend="builtin"))
        blocks = f"{cfg.n_mrstb} MRSTB x {cfg.swin_layers} Swin" if cfg.block == "mrstb" else f"{cfg.n_mrstb} res. blocks"
        pairs = f"{cfg.pairs} ({'yes' if cfg.shared_pairs else 'no'})"
        rows.append(f"| {name} | {cfg.domain} | {cfg.channels} | {cfg.split} | {cfg.levels} | {pairs} | "
                    f"{cfg.hidden} | {blocks} | x{cfg.scale} | {n:,} |")
    if include_estimators:
        from ..estimator.kdsr import EstimatorConfig, build_estimator

        rows += ["", "| estimator | role | width | res. blocks | in channels | gamma | parameters |",
                 "|---|---|---|---|---|---|---|"]
        for name in ("kdsr", "kdsr-teacher", "small", "small-teacher"):
            ecfg = EstimatorConfig.preset(name)
            with torch.device("meta"):
                n = count_parameters(build_estimator(ecfg))
            rows.append(f"| {name} | {ecfg.role} | {ecfg.width} | {ecfg.n_res} | {ecfg.in_channels} | "
                        f"{ecfg.emb_dim} | {n:,} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--no-estimators", action="store_true", help="only the INN presets")
    args = parser.parse_args(argv)
    print(preset_table(include_estimators=not args.no_estimators))  # the CLI's output is the table


if __name__ == "__main__":
    main()
