"""Memory: decoder checkpointing and what guidance does when memory runs out.

Decoder checkpointing (`decode_for_grad(..., checkpoint=True)`): the gradient modes need
grad_z0 of an objective of D(z0). Plain autograd keeps every activation of the decoder alive while
the INN (and LPIPS) run their own forward and backward on top; with checkpointing the decoder
keeps only its input and runs its forward a second time during the backward pass, so the peak is
about max(decoder, objective) instead of their sum, at the price of one more decoder forward.
Same gradient to float rounding (tests/core/test_perf_equivalence.py).

Out of memory (`OutOfMemoryGuard`): a VAE pass or a gradient step that raises
torch.OutOfMemoryError (or a RuntimeError saying "out of memory" / "can't allocate memory", as
CPU and older CUDA builds do) is retried once with the VAE tile by tile (and, for gradients, each
tile checkpointed, and the INN's blocks checkpointed), after dropping the failed attempt's tensors
and emptying the allocator's cache through the host's callback. If that fails too, `GuidanceMemoryError` names the settings to change.
It subclasses torch.OutOfMemoryError, so a host that recovers from OOM (ComfyUI unloads its models)
still does.
"""

from __future__ import annotations

import gc
import logging
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..errors import IndigoError
from .autoencoder import Autoencoder, ae_decode, ae_encode
from .tiling import tiled_apply

log = logging.getLogger(__name__)

#: VAE tiles (latent pixels: tile, overlap) of the out-of-memory fallback: 256-pixel tiles for the
#: SD family, small enough to fit where a whole 1024-pixel pass did not. Ours.
FALLBACK_TILE = (32, 8)

#: What a user can change, quoted by GuidanceMemoryError, by the kind of action that failed
#: (`OutOfMemoryGuard.run(..., kind=...)`).
_VAE_ADVICE = ("enable Tiled INDIGO (or lower its vae_tile_size), run the VAE in fp16/bf16 "
               "(ComfyUI --fp16-vae / --bf16-vae)")
ADVICE = {
    "denoiser_gradient": "use grad_wrt 'z0' (no gradient through the model), " + _VAE_ADVICE
                         + ", or use mode 'latent_inn' (no gradient at all)",
    "gradient": _VAE_ADVICE + ", or use mode 'latent_inn' (no decoder gradient)",
    "inn": "the INN runs on the whole latent: restore a smaller image, leave the refine input "
           "(INN Refine) unconnected, or free memory for it (ComfyUI --lowvram, fewer models loaded)",
    "reencode": _VAE_ADVICE + ", or leave the regulariser input unconnected (no re-encoding)",
    "vae": _VAE_ADVICE,
}


class GuidanceMemoryError(IndigoError, torch.OutOfMemoryError):
    """Guidance ran out of memory even after its tiled fallback; the message says what to change."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether `exc` is an allocation failure (CUDA, MPS, XPU or the CPU allocator)."""
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    if isinstance(exc, RuntimeError):
        text = str(exc).lower()
        return "out of memory" in text or "can't allocate memory" in text
    return False


def decode_for_grad(ae: Autoencoder, z: Tensor, checkpoint_decoder: bool = False) -> Tensor:
    """D(z) in z's dtype with autograd; `checkpoint_decoder` recomputes the decoder in backward."""
    if checkpoint_decoder and torch.is_grad_enabled() and z.requires_grad:
        return checkpoint(ae_decode, ae, z, use_reentrant=False)
    return ae_decode(ae, z)


def tiled_decode_for_grad(ae: Autoencoder, z: Tensor, tile: Sequence[int] = FALLBACK_TILE,
                          checkpoint_tiles: bool = True) -> Tensor:
    """D(z) tile by tile (feathered blend, tiling.tiled_apply), each tile checkpointed when a
    gradient is being recorded, so backward holds one tile's activations at a time."""
    d = int(ae.downscale)

    def one(t: Tensor, _region) -> Tensor:
        if checkpoint_tiles and torch.is_grad_enabled() and t.requires_grad:
            return checkpoint(ae_decode, ae, t, use_reentrant=False)
        return ae_decode(ae, t)

    return tiled_apply(one, z, tile[0], tile[1], in_scale=1, out_scale=d, window="feather")


def tiled_encode_plain(ae: Autoencoder, x: Tensor, tile: Sequence[int] = FALLBACK_TILE) -> Tensor:
    """E(x) tile by tile (no gradient needed by any caller)."""
    d = int(ae.downscale)
    return tiled_apply(lambda t, _r: ae_encode(ae, t), x, tile[0], tile[1], in_scale=d, out_scale=1,
                       window="feather")


def release_memory(free_cache: Optional[Callable[[], None]] = None) -> None:
    """Collect garbage (the failed attempt's tensors) and empty the allocator's cache: the host's
    callback when given (ComfyUI's soft_empty_cache), else torch's for CUDA."""
    gc.collect()
    if free_cache is not None:
        free_cache()
    elif torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()


class OutOfMemoryGuard:
    """Runs a guidance action; on an allocation failure switches the run to tiled VAE passes once
    and retries, else raises GuidanceMemoryError.

    free_cache: the host's cache-emptying callback (or None). tile: (tile, overlap) in latent
    pixels for the fallback. `tiled` tells the run to use tiled VAE passes from now on (set by the
    first failure, kept for the rest of the run: the next steps would fail the same way).
    The guard holds no reference to its run (no reference cycle: a finished run's tensors are
    freed as soon as the host drops it, not at the next garbage collection).
    """

    def __init__(self, free_cache: Optional[Callable[[], None]] = None,
                 tile: Sequence[int] = FALLBACK_TILE, has_inn: bool = True) -> None:
        self.free_cache = free_cache
        self.has_inn = bool(has_inn)
        self.tile = (int(tile[0]), int(tile[1]))
        self.tiled = False
        self.fallbacks = 0

    def run(self, what: str, shape: Sequence[int], fn: Callable[[], object],
            on_fallback: Optional[Callable[[], None]] = None, kind: str = "vae"):
        """`fn()` (a pure action: no state changed before it can fail), retried as described;
        `on_fallback()` runs once when the run switches (the run turns on INN checkpointing).
        kind: what the action is, a key of ADVICE (the settings the final error suggests)."""
        advice = ADVICE[kind]
        for attempt in range(2):
            failed = None
            try:
                return fn()
            except Exception as exc:  # only allocation failures are handled; others propagate
                if not is_out_of_memory(exc):
                    raise
                failed = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
            # Outside the except block: the traceback (and the tensors its frames hold) is gone.
            release_memory(self.free_cache)
            if attempt == 0 and not self.tiled:
                self.tiled = True
                self.fallbacks += 1
                if on_fallback is not None:
                    on_fallback()
                log.warning("INDIGO guidance ran out of memory while %s (latent %s): retrying with the VAE in "
                            "tiles of %d latent pixels and checkpointed gradients for the rest of the run (%s)",
                            what, "x".join(str(v) for v in shape[-2:]), self.tile[0], failed)
                continue
            h, w = int(shape[-2]), int(shape[-1])
            raise GuidanceMemoryError(
                f"INDIGO guidance ran out of memory while {what} (latent {h}x{w}) even with the VAE in tiles of "
                f"{self.tile[0]} latent pixels{' and the INN checkpointed' if self.has_inn else ''} ({failed}). "
                f"To fit: {advice}.") from None
        raise AssertionError("unreachable")  # pragma: no cover
