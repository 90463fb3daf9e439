"""Test-time refinement of the INN (paper Eq. 16, Alg. 1 line 11) and private module copies.

The user's INN is never modified: each run builds a private copy (fresh module of the same
config, cloned parameters) outside inference mode, so it works even when the loaded INN holds
inference tensors (ComfyUI runs prompts under torch.inference_mode()).
"""

from __future__ import annotations

import copy
from typing import Iterable, Optional

import torch
from torch import Tensor, nn

from .settings import RefineSettings


def inn_config(inn):
    """The INNConfig of a WaveletINN (`.config`, or `.cfg`), or None."""
    cfg = getattr(inn, "config", None)
    if cfg is None or not hasattr(cfg, "coarse_shape"):
        cfg = getattr(inn, "cfg", None)
    return cfg if cfg is not None and hasattr(cfg, "coarse_shape") else None


def private_inn_copy(inn: nn.Module, device=None) -> nn.Module:
    """A trainable float32 copy of a WaveletINN-like module (rebuilt as type(inn)(config)),
    with normal (non-inference) tensors, in eval mode, parameters not requiring grad."""
    with torch.inference_mode(False):
        cfg = inn_config(inn)
        new = None
        if cfg is not None:
            backend = getattr(getattr(inn, "split_op", None), "backend", None)
            try:  # the same Haar backend as the original (the two agree only to float rounding)
                new = type(inn)(cfg, haar_backend=backend) if backend else type(inn)(cfg)
            except (TypeError, AttributeError):
                new = None
        state = {k: v.detach().clone() for k, v in inn.state_dict().items()}
        if new is None:
            new = copy.deepcopy(inn)
        new.load_state_dict(state)
        new = new.to(device=device if device is not None else next(iter(state.values())).device,
                     dtype=torch.float32)
        new.eval()
        for p in new.parameters():
            p.requires_grad_(False)
    return new


def private_module_copy(module: nn.Module, device=None) -> nn.Module:
    """A frozen copy (eval, no grad) of any module with normal tensors (e.g. the LPIPS network),
    so autograd can pass through it even if the original holds inference tensors."""
    with torch.inference_mode(False):
        new = copy.deepcopy(module)
        for name, p in list(new.named_parameters(recurse=True)):
            p.requires_grad_(False)
        if device is not None:
            new = new.to(device)
        new.eval()
    return new


def set_trainable(params: Iterable[Tensor], flag: bool) -> None:
    for p in params:
        if p.requires_grad != flag:
            p.requires_grad_(flag)


def make_optimizer(params: list, settings: RefineSettings) -> torch.optim.Optimizer:
    """Adam over the private INN's parameters (one step per scheduled sampling step)."""
    return torch.optim.Adam(params, lr=settings.lr, betas=tuple(settings.betas))


def refine_step(optimizer: torch.optim.Optimizer, params: list, loss: Tensor,
                retain_graph: bool = False) -> None:
    """One optimiser step minimising `loss` (a scalar with graph to `params`)."""
    grads = torch.autograd.grad(loss, params, retain_graph=retain_graph, allow_unused=True)
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.detach()
    optimizer.step()
    for p in params:
        p.grad = None


def params_of(module: nn.Module) -> list:
    return [p for p in module.parameters()]


def maybe_optimizer(module: nn.Module, settings: Optional[RefineSettings]):
    if settings is None:
        return None, []
    params = params_of(module)
    return make_optimizer(params, settings), params
