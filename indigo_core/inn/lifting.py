"""Predict/update modules (PM/UM) and one lifting pair.

Sign convention (ours, shared with INDIGO+ so its weights load unchanged):
    forward:  d <- d + P(c);  c <- c + U(d)
    inverse:  c <- c - U(d);  d <- d - P(c)
The inverse undoes the forward exactly whatever P and U compute (only float rounding remains).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as activation_checkpoint

from .config import INNConfig
from .mrstb import MRSTB, ScaledResBlock


#: A fresh PM/UM's output conv starts at this fraction of PyTorch's default init, so a new INN is
#: a mild perturbation of the plain wavelet transform: well conditioned (float32 round trip error
#: ~1e-6 instead of ~1e-4 with unit-gain residual stacks) and a sensible start for training.
OUT_INIT_GAIN = 0.1


class LiftNet(nn.Module):
    """PM or UM: conv (in -> hidden) -> n_mrstb blocks -> conv (hidden -> out).

    `checkpoint` (off by default; WaveletINN.set_checkpointing): while autograd records, each block
    keeps only its input and is run again in backward, instead of keeping every Swin layer's
    activations (for a PixelINN at 512 px several GB) until the backward pass.
    """

    checkpoint: bool = False

    def __init__(self, cfg: INNConfig, in_ch: int, out_ch: int) -> None:
        super().__init__()
        k = cfg.kernel
        self.convin = nn.Conv2d(in_ch, cfg.hidden, k, padding=k // 2, bias=cfg.conv_bias)
        if cfg.block == "mrstb":
            blocks = [MRSTB(cfg.hidden, cfg.heads, cfg.window, cfg.swin_layers, cfg.mlp_ratio,
                            cfg.emb_dim, cfg.mod_hidden) for _ in range(cfg.n_mrstb)]
        else:
            blocks = [ScaledResBlock(cfg.hidden, k, cfg.emb_dim, cfg.mod_hidden) for _ in range(cfg.n_mrstb)]
        self.blocks = nn.ModuleList(blocks)
        self.convout = nn.Conv2d(cfg.hidden, out_ch, k, padding=k // 2, bias=cfg.conv_bias)
        with torch.no_grad():
            self.convout.weight.mul_(OUT_INIT_GAIN)
            if self.convout.bias is not None:
                self.convout.bias.mul_(OUT_INIT_GAIN)

    def forward(self, x: Tensor, gamma: Optional[Tensor] = None) -> Tensor:
        """x (B,in,H,W), gamma (B,emb_dim) or None -> (B,out,H,W)."""
        h = self.convin(x)
        for block in self.blocks:
            if self.checkpoint and torch.is_grad_enabled() and h.requires_grad:
                h = activation_checkpoint(block, h, gamma, use_reentrant=False)
            else:
                h = block(h, gamma)
        return self.convout(h)


class LiftingPair(nn.Module):
    """One predict/update pair acting on coarse c (B,C,h,w) and detail d (B,3C,h,w)."""

    def __init__(self, cfg: INNConfig) -> None:
        super().__init__()
        c = cfg.channels
        self.channels = c
        self.overlap_slices = cfg.overlap_slices
        self.predict = LiftNet(cfg, c, 3 * c)
        self.update = LiftNet(cfg, 3 * c, c)

    def _prediction(self, c: Tensor, gamma: Optional[Tensor]) -> Tensor:
        p = self.predict(c, gamma)
        if self.overlap_slices:
            # INDIGO+ quirk: band k receives channels [k : k + C] of the 3C predictor outputs.
            n = self.channels
            p = torch.cat([p[:, k:k + n] for k in range(3)], dim=1)
        return p

    def forward(self, c: Tensor, d: Tensor, gamma: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        d = d + self._prediction(c, gamma)
        c = c + self.update(d, gamma)
        return c, d

    def inverse(self, c: Tensor, d: Tensor, gamma: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
        c = c - self.update(d, gamma)
        d = d - self._prediction(c, gamma)
        return c, d
