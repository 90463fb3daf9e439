"""CUDA-graph replay of the LatentINN guidance update (Alg. 2 lines 4-6, no gradients).

The INN is small in FLOPs but issues over a thousand small kernels per forward (Swin windows,
masks, layer norms), so on a GPU its cost is CPU launch overhead, not arithmetic (an H100 ran
the latent-paper INN forward at a 64x64 latent in ~40 ms of launch time for ~4 ms of GPU work).
Within one run the shapes never change, so the update is captured once and replayed each step.

Refinement updates the INN's parameters in place (Adam), so a captured graph keeps reading the
current weights. Refinement steps themselves run eagerly (they need autograd).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import Tensor

log = logging.getLogger(__name__)

Body = Callable[[Tensor], tuple]


class GraphedUpdate:
    """Capture `body(z) -> (z_new, residual)` for a fixed input shape on a CUDA device and replay it.

    `__call__(z)` copies z into the static input, replays, and returns clones of the outputs.
    If capture fails (an op that cannot be captured), `ok` is False and callers run eagerly.
    """

    def __init__(self, body: Body, example: Tensor, warmup: int = 2) -> None:
        self.ok = False
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        try:
            self.static_in = example.detach().clone()
            side = torch.cuda.Stream(device=example.device)
            side.wait_stream(torch.cuda.current_stream(example.device))
            with torch.cuda.stream(side), torch.no_grad():
                for _ in range(warmup):
                    body(self.static_in)
            torch.cuda.current_stream(example.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.no_grad(), torch.cuda.graph(graph):
                self.static_out = body(self.static_in)
            self.graph = graph
            self.ok = True
        except Exception as exc:  # capture is an optimisation: fall back to eager on any failure
            log.warning("LatentINN guidance: CUDA graph capture failed (%s); running eagerly", exc)
            self.graph = None
            self.ok = False

    def __call__(self, z: Tensor) -> tuple:
        self.static_in.copy_(z)
        self.graph.replay()
        return tuple(t.clone() for t in self.static_out)


class GraphedObjective:
    """A gradient mode's objective `fn(x0) -> (h, residual)` as CUDA graphs (forward and backward,
    torch.cuda.make_graphed_callables) for a fixed x0 shape; the decoder stays eager around it.

    Used on guidance steps without refinement (the INN's parameters do not require grad there).
    The outputs alias static buffers until the next call. `ok` False -> run eagerly.
    """

    def __init__(self, fn: Body, example: Tensor, warmup: int = 3) -> None:
        self.ok = False
        self.fn = None
        try:
            x = example.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                self.fn = torch.cuda.make_graphed_callables(fn, (x,), num_warmup_iters=warmup)
            self.ok = True
        except Exception as exc:
            log.warning("guidance objective: CUDA graph capture failed (%s); running eagerly", exc)

    def __call__(self, x0: Tensor) -> tuple:
        return self.fn(x0)
