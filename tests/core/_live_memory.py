"""A probe for the peak bytes of tensors alive at once while a block of code runs (any device).

Counts every tensor an operator returns, by storage, from its creation until its last Python
reference goes; tensors that existed before the block (weights, inputs) are not counted. This is
what an allocator must hold for the block's own results, without its caches or workspaces.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


class PeakLiveBytes(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._sizes: dict[int, int] = {}

    def _release(self, ptr: int) -> None:
        self.live -= self._sizes.pop(ptr, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor):
                continue
            storage = t.untyped_storage()
            ptr, n = storage.data_ptr(), storage.nbytes()
            if n == 0 or ptr in self._sizes:  # a view of a storage already counted
                continue
            self._sizes[ptr] = n
            self.live += n
            self.peak = max(self.peak, self.live)
            weakref.finalize(t, self._release, ptr)
        return out
