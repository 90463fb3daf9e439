"""Optional torch.compile of the INN for a guidance run (off by default).

`CompiledINN(inn)` behaves like the INN for the guidance algorithms (`g(x, gamma)` and
`g.inverse(coarse, details, gamma)`) with both directions compiled by torch.compile (shapes are
fixed within a run, so one graph each). The module itself is untouched: its parameters are the
ones the refinement's optimiser updates, and the compiled code reads them on every call.

Compilation happens at the first call and can take a minute on a CPU; a failure there (no C++
compiler, an unsupported op) is logged once and the run continues eagerly with the same module.
"""

from __future__ import annotations

import logging
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class CompiledINN:
    """A WaveletINN-like callable whose forward and inverse run through torch.compile."""

    def __init__(self, inn: nn.Module, mode: Optional[str] = None) -> None:
        self.module = inn
        self.config = getattr(inn, "config", None)
        self._forward = torch.compile(inn.forward, mode=mode, dynamic=False)
        self._inverse = torch.compile(inn.inverse, mode=mode, dynamic=False)
        self.eager = False

    def _call(self, compiled, eager, *args):
        if not self.eager:
            try:
                return compiled(*args)
            except Exception as exc:  # compilation is an optimisation: any failure -> eager
                from ..errors import IndigoError
                from .memory import is_out_of_memory

                if is_out_of_memory(exc) or isinstance(exc, IndigoError):
                    raise  # out of memory, or a bad input the eager INN refuses as well
                log.warning("torch.compile of the INN failed (%s: %s); running it eagerly",
                            type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "")
                self.eager = True
        return eager(*args)

    def __call__(self, x: Tensor, degradation: Optional[Tensor] = None):
        return self._call(self._forward, self.module.forward, x, degradation)

    def inverse(self, coarse: Tensor, details: Sequence[Tensor], degradation: Optional[Tensor] = None) -> Tensor:
        return self._call(self._inverse, self.module.inverse, coarse, list(details), degradation)

    def parameters(self):
        return self.module.parameters()
