"""GuidanceRun: the explicit per-run state of a guided sampling run.

Created once per sampling run (validates inputs first, then builds the private INN copy, the
optimiser, z_y = E(up(y)) and the other per-run constants), then called once per model
evaluation with the current clean-latent estimate:

    run = GuidanceRun(settings, measurement=y, latent_shape=(B, C, h, w), autoencoder=ae, inn=inn)
    for each model evaluation:                       # sigma -> step_index_from_sigmas(...)
        z0 = run.step(z0, step_index, n_steps)       # VAE-space latents
    image = run.finish(decoded_image)                # colour fix

Per call, in order (Alg. 1 / Alg. 2): guidance update (if its schedule is active), regulariser
E(D(z0)) (first call of a scheduled step), refinement of the private INN (first call of a
scheduled step, one optimiser step, from the same INN forward the guidance used).

Everything is float32 inside except the autoencoder, which may run in fp16/bf16 (cast at the
boundary, see autoencoder.py). Nothing in `step` reads tensors back to the host: records keep
tensors and convert only when read. Memory (memory.py): optional decoder checkpointing; an action
that runs out of memory is retried once with the VAE in tiles, else GuidanceMemoryError says
which setting to change.

Samplers that evaluate the model more than once per step: the guidance update runs on every
evaluation (each evaluation's z0 is what the sampler uses); the regulariser and the refinement
run once per step index. A caveat for second-order samplers (heun, dpm_2): the change made to
z0 at the corrector evaluation (at sigma_{i+1}) reaches x scaled by about sigma_i / (2 sigma_{i+1}),
so with sigma schedules whose last steps shrink sigma sharply (e.g. a linear ramp ending at
sigma_min) a guidance step there overshoots. Karras-like schedules keep that ratio small; the
single-evaluation samplers (euler, euler_ancestral, dpmpp_2m, ddim, uni_pc) are not affected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..checks import is_bchw
from ..errors import ConfigError, DomainError, InputValueError, ShapeError
from .accel import CompiledINN
from .autoencoder import Autoencoder, ae_encode
from .baselines import hgs_objective, ldps_objective, pgdiff_objective, sobel_magnitude
from .checks import check_aspect
from .colour import colour_fix
from .graphs import GraphedObjective, GraphedUpdate
from .latent_inn import latent_inn_guide, upsample_measurement
from .memory import FALLBACK_TILE, OutOfMemoryGuard, decode_for_grad, tiled_decode_for_grad, tiled_encode_plain
from .pixel_inn import Objective, pixel_inn_objective
from .refine import inn_config, maybe_optimizer, private_inn_copy, private_module_copy, refine_step, set_trainable
from .settings import GRADIENT_MODES, GuidanceSettings
from .update import descent_update, dot_per_item, rms_per_item

DenoiseFn = Callable[[Tensor], Tensor]


@dataclass
class StepRecord:
    """What one call of `step`/`step_zt` did. Tensors stay on the device (no sync when written).

    residual: (B,) rms data-consistency residual of the estimate before the update
        (latent_inn: rms(z_c - z_y); pixel_inn/ldps: rms(y - g_c(x0)); hgs: Sobel residual;
        pgdiff: rms(x0 - r)); None when nothing was computed.
    refine_loss: scalar refinement loss before the optimiser step, or None.
    """

    step_index: int
    n_steps: int
    guided: bool
    regularised: bool
    refined: bool
    residual: Optional[Tensor] = None
    refine_loss: Optional[Tensor] = None


def _is_tensor(x, name: str) -> Tensor:
    if not isinstance(x, Tensor):
        raise InputValueError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    return x


def _check_finite(x: Tensor, name: str) -> None:
    if not bool(torch.isfinite(x).all()):
        raise InputValueError(f"{name}: expected finite values, got NaN or inf")


def _check_image(x: Tensor, name: str, batch: int) -> None:
    if not is_bchw(x, 3):
        hint = " (ComfyUI IMAGEs are (B,H,W,3): permute to (B,3,H,W))" if x.dim() == 4 and x.shape[-1] == 3 else ""
        raise ShapeError(f"{name}: expected (B,3,H,W), got {tuple(x.shape)}{hint}")
    if x.shape[0] not in (1, batch):
        raise ShapeError(f"{name}: expected a batch of {batch} (one per latent) or 1, got {x.shape[0]}")
    _check_finite(x, name)
    lo, hi = float(x.min()), float(x.max())
    if lo < -0.5 or hi > 1.5:
        raise InputValueError(f"{name}: expected values in [0, 1], got min {lo:.4g}, max {hi:.4g}"
                              " (0..255 images must be divided by 255)")


def _holds_inference_tensors(module: torch.nn.Module) -> bool:
    return any(t.is_inference() for t in list(module.parameters()) + list(module.buffers()))


def require_perceptual_weights(w_p: float, weights_dir=None) -> None:
    """ConfigError naming w_p when the LPIPS term cannot be loaded (no offline backbone weights in
    `weights_dir` or the metrics module's search order). Reads no weights: cheap, so hosts call it
    before any heavy work."""
    try:
        from ..metrics.weights import PerceptualWeightsMissing, locate_backbone
    except ImportError as exc:
        raise ConfigError(f"w_p={w_p}: the perceptual (LPIPS) term is unavailable ({exc}); "
                          "set w_p to 0 (restore CLI: --w-p 0) to guide without it") from exc
    try:
        locate_backbone("alex", weights_dir)
    except PerceptualWeightsMissing as exc:
        raise ConfigError(f"w_p={w_p}: the LPIPS term needs offline backbone weights, which are missing "
                          f"({exc}); install them or set w_p to 0 (restore CLI: --w-p 0)") from exc


class GuidanceRun:
    """Per-run state and the guidance step. See the module docstring.

    Args:
        settings: GuidanceSettings.
        measurement: y, (B|1,3,h_y,w_y) in [0,1] (None only for mode "none" without colour fix).
            pixel_inn/ldps: (h_y,w_y) must equal inn.cfg.coarse_shape(H, W), H = h*downscale.
            latent_inn/hgs: any size with the image's aspect ratio (y is upsampled).
        latent_shape: (B,C,h,w) of the latents the sampler will pass (VAE space).
        autoencoder: Autoencoder protocol object (encode/decode in [0,1]).
        inn: WaveletINN for latent_inn/pixel_inn/ldps (never modified; a private copy is used).
        degradation: (B|1, emb_dim) embedding (e.g. KDSR) or None.
        perceptual: callable (B,3,H,W),(B,3,H,W) [0,1] -> (B,) (LPIPS); loaded with
            indigo_core.metrics.lpips.load_lpips when None and mode pixel_inn with w_p > 0.
        perceptual_weights_dir: a folder searched first for the LPIPS backbone weights (its
            metrics/ subfolder, then itself; then the metrics module's own search order).
        restoration: r for mode pgdiff, (B|1,3,H_r,W_r) in [0,1] (resized to the image size).
        measurement_latent: optional precomputed z_y = E(up(y)) for latent_inn, (B|1,C,h_c,w_c)
            (e.g. from `tiled_encode` for large images); computed here when None.
        device: where the run's tensors live (default: the measurement's device).
        cuda_graphs: CUDA-graph replay (graphs.py; the INN is launch-bound on GPUs). None (auto):
            the LatentINN update is captured at its first use when the device is CUDA (a few MB;
            H100/H200: ~47-90 -> ~8.5 ms per step for the latent-paper INN at a 64x64 latent).
            True: also the gradient modes' objective, forward and backward (pixel-paper INN at
            512 px: ~88 -> ~38 ms per step) at the price of keeping its activations (~3.7 GB at
            512 px) reserved for the whole run instead of freeing them for the denoiser between
            steps. False: eager. Capture failures fall back to eager.
        checkpoint_decoder: gradient modes recompute the decoder during backward instead of keeping
            its activations (memory.py): one more decoder forward per step, a lower peak.
        checkpoint_inn: the same for the (private) INN's PM/UM blocks (WaveletINN.set_checkpointing):
            for a PixelINN at 512 px several GB less, one more INN forward per gradient step.
        compile_inn: run the INN through torch.compile (accel.py; off by default; replaces the
            CUDA graphs above). Same results to float rounding.
        free_cache: the host's callback that empties the allocator's cache (ComfyUI's
            soft_empty_cache), called when an action runs out of memory before its tiled retry.
        fallback_tile: (tile, overlap) in latent pixels of the VAE tiles that retry uses.
    Raises ShapeError / DomainError / InputValueError / ConfigError (expected vs got) before any
    heavy work.
    """

    def __init__(self, settings: GuidanceSettings, *, measurement: Optional[Tensor],
                 latent_shape: Sequence[int], autoencoder: Autoencoder, inn=None,
                 degradation: Optional[Tensor] = None, perceptual=None, perceptual_weights_dir=None,
                 restoration: Optional[Tensor] = None, measurement_latent: Optional[Tensor] = None,
                 device=None, cuda_graphs: Optional[bool] = None, checkpoint_decoder: bool = False,
                 checkpoint_inn: bool = False, compile_inn: bool = False, free_cache: Optional[Callable[[], None]] = None,
                 fallback_tile: Sequence[int] = FALLBACK_TILE) -> None:
        if not isinstance(settings, GuidanceSettings):
            raise ConfigError(f"settings: expected GuidanceSettings, got {type(settings).__name__}")
        self.settings = s = settings
        z_y = measurement_latent
        self.autoencoder = autoencoder
        self._validate(measurement, latent_shape, autoencoder, inn, degradation, restoration,
                       measurement_latent)
        if device is None:
            device = measurement.device if measurement is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.records: List[StepRecord] = []
        self._last_step: Optional[int] = None
        on_cuda = self.device.type == "cuda" and not compile_inn
        self._use_graphs = on_cuda and cuda_graphs is not False            # LatentINN update
        self._use_objective_graphs = on_cuda and cuda_graphs is True       # gradient modes
        self.checkpoint_decoder = bool(checkpoint_decoder)
        self._oom = OutOfMemoryGuard(free_cache, fallback_tile, has_inn=settings.uses_inn and inn is not None)
        self._graph = None
        self._objective_graph = None

        B, C, h, w = self.latent_shape
        d = self.downscale
        with torch.inference_mode(False):
            # Normal (non-inference) float32 copies of everything autograd may touch.
            self.y = None if measurement is None else \
                measurement.detach().clone().to(self.device, torch.float32).expand(B, -1, -1, -1).contiguous()
            self.degradation = None if degradation is None else \
                degradation.detach().clone().to(self.device, torch.float32).expand(B, -1).contiguous()
            self.inn = private_inn_copy(inn, self.device) if s.uses_inn else None
            self._checkpoint_inn(checkpoint_inn)
            self.optimizer, self._params = maybe_optimizer(self.inn, s.refine) if self.inn is not None else (None, [])
            # g: what the algorithms call (the module, or its compiled form sharing its parameters)
            self.g = CompiledINN(self.inn) if compile_inn and self.inn is not None else self.inn
            self.perceptual = self._load_perceptual(perceptual, perceptual_weights_dir) if s.needs_perceptual else None

            self.z_y = None
            if s.mode == "latent_inn":
                hc, wc = inn_config(self.inn).coarse_shape(h, w)
                if z_y is not None:
                    self.z_y = z_y.detach().clone().to(self.device, torch.float32).expand(B, -1, -1, -1).contiguous()
                else:
                    self.z_y = self._encode_up(self.y, (hc * d, wc * d), "encoding the measurement")
            self.edges = None
            if s.mode == "hgs":
                self.edges = sobel_magnitude(upsample_measurement(self.y, (h * d, w * d)))
            self.restoration = None
            if s.mode == "pgdiff":
                self.restoration = upsample_measurement(
                    restoration.detach().clone().to(self.device, torch.float32), (h * d, w * d)
                ).expand(B, -1, -1, -1).contiguous()
            self.max_step = None
            if s.mode in GRADIENT_MODES and s.max_step is not None:
                z_ref = self._encode_up(self.y, (h * d, w * d), "encoding the measurement")
                self.max_step = s.max_step * rms_per_item(z_ref).clamp_min(1e-6)

    # ------------------------------------------------------------------ validation
    def _validate(self, y, latent_shape, ae, inn, degradation, restoration, z_y=None) -> None:
        s = self.settings
        if len(tuple(latent_shape)) != 4:
            raise ShapeError(f"latent_shape: expected (B,C,h,w), got {tuple(latent_shape)}")
        B, C, h, w = (int(v) for v in latent_shape)
        self.latent_shape = (B, C, h, w)
        lc = getattr(ae, "latent_channels", None)
        d = getattr(ae, "downscale", None)
        if lc is None or d is None or not hasattr(ae, "encode") or not hasattr(ae, "decode"):
            raise ConfigError("autoencoder: expected an object with latent_channels, downscale, "
                              f"encode and decode, got {type(ae).__name__}")
        self.downscale = int(d)
        if C != int(lc):
            raise DomainError(f"latent: expected {lc} channels (the VAE's latent channels), got {C}")
        H, W = h * self.downscale, w * self.downscale
        if y is None:
            if s.mode != "none" or s.colour_fix != "none":
                raise InputValueError(f"measurement: expected an image for mode={s.mode!r}, "
                                      f"colour_fix={s.colour_fix!r}, got None")
        else:
            _check_image(_is_tensor(y, "measurement"), "measurement", B)
        if s.uses_inn:
            if inn is None:
                raise ConfigError(f"inn: mode {s.mode!r} needs an INN, got None")
            cfg = inn_config(inn)
            if cfg is None:
                raise ConfigError(f"inn: expected a WaveletINN (with an INNConfig), got {type(inn).__name__}")
            if cfg.domain != s.inn_domain:
                raise DomainError(f"inn: mode {s.mode!r} expects a {s.inn_domain} INN, got a {cfg.domain} INN")
            want_c = C if s.inn_domain == "latent" else 3
            if cfg.channels != want_c:
                what = "the VAE's latent channels" if s.inn_domain == "latent" else "RGB"
                raise DomainError(f"inn: expected {want_c} channels ({what}), got a {cfg.channels}-channel INN")
            if s.inn_domain == "pixel":
                if H % cfg.scale or W % cfg.scale:
                    raise ShapeError(f"image size {H}x{W} (latent {h}x{w}): expected multiples of the "
                                     f"INN scale {cfg.scale}")
                hc, wc = cfg.coarse_shape(H, W)
                if tuple(y.shape[-2:]) != (hc, wc):
                    raise ShapeError(
                        f"measurement: expected {hc}x{wc} (image {H}x{W} from latent {h}x{w} / INN scale "
                        f"{cfg.scale}), got {y.shape[-2]}x{y.shape[-1]}")
            else:
                if cfg.scale > 1 and (h % cfg.scale or w % cfg.scale):
                    raise ShapeError(f"latent {h}x{w}: expected multiples of the INN scale {cfg.scale}")
                hc, wc = cfg.coarse_shape(h, w)
                check_aspect("measurement", y.shape[-2:], (hc * self.downscale, wc * self.downscale), "the image")
                if z_y is not None:
                    _is_tensor(z_y, "measurement_latent")
                    if z_y.dim() != 4 or tuple(z_y.shape[1:]) != (C, hc, wc) or z_y.shape[0] not in (1, B):
                        raise ShapeError(f"measurement_latent: expected ({B} or 1, {C}, {hc}, {wc}), "
                                         f"got {tuple(z_y.shape)}")
                    _check_finite(z_y, "measurement_latent")
            if degradation is not None:
                _is_tensor(degradation, "degradation")
                if degradation.dim() != 2 or degradation.shape[1] != cfg.emb_dim or degradation.shape[0] not in (1, B):
                    raise ShapeError(f"degradation: expected ({B} or 1, {cfg.emb_dim}), got {tuple(degradation.shape)}")
                _check_finite(degradation, "degradation")
        if s.mode in GRADIENT_MODES and isinstance(ae, torch.nn.Module) and _holds_inference_tensors(ae):
            raise ConfigError("autoencoder: expected weights usable by autograd for mode "
                              f"{s.mode!r}, got inference tensors (loaded under torch.inference_mode()); "
                              "pass a copy made under torch.inference_mode(False)")
        if s.mode == "hgs":
            check_aspect("measurement", y.shape[-2:], (H, W), "the image")
        if s.mode == "pgdiff":
            if restoration is None:
                raise InputValueError("restoration: mode 'pgdiff' needs a restored image, got None")
            _check_image(_is_tensor(restoration, "restoration"), "restoration", B)
            check_aspect("restoration", restoration.shape[-2:], (H, W), "the image")

    def _load_perceptual(self, perceptual, weights_dir):
        if perceptual is None:
            require_perceptual_weights(self.settings.w_p, weights_dir)
            from ..metrics.lpips import load_lpips

            perceptual = load_lpips(net="alex", weights_dir=weights_dir, device=self.device)
        if isinstance(perceptual, torch.nn.Module) and _holds_inference_tensors(perceptual):
            # autograd cannot save inference tensors for backward: use a normal copy
            perceptual = private_module_copy(perceptual, self.device)
        return perceptual

    # ------------------------------------------------------------------ per-step helpers
    def _check_latent(self, z: Tensor, name: str) -> None:
        if tuple(z.shape) != self.latent_shape:
            raise ShapeError(f"{name}: expected {self.latent_shape} (fixed when the run was created), "
                             f"got {tuple(z.shape)}")

    def _first_call(self, step_index: int) -> bool:
        """True the first time a step is reached. Steps only count forward: a sampler whose
        evaluations go back to an earlier step's sigma (heunpp2, dpm_adaptive) does not regularise
        or refine that step again."""
        first = self._last_step is None or step_index > self._last_step
        if first:
            self._last_step = step_index
        return first

    def _checkpoint_inn(self, enabled: bool) -> None:
        if self.inn is not None and hasattr(self.inn, "set_checkpointing"):
            self.inn.set_checkpointing(enabled)

    def _guarded(self, what: str, shape, fn, kind: str = "vae"):
        """fn() under the out-of-memory guard (kind: memory.ADVICE's key); its fallback also
        checkpoints the INN."""
        return self._oom.run(what, shape, fn, on_fallback=lambda: self._checkpoint_inn(True), kind=kind)

    # VAE passes: whole, or tile by tile once a pass has run out of memory (memory.py).
    def _decode(self, z: Tensor) -> Tensor:
        """D(z) as float32, with a gradient when grad mode is on (checkpointed if so chosen)."""
        if self._oom.tiled:
            return tiled_decode_for_grad(self.autoencoder, z, self._oom.tile).float()
        return decode_for_grad(self.autoencoder, z, self.checkpoint_decoder).float()

    def _encode(self, x: Tensor) -> Tensor:
        if self._oom.tiled:
            return tiled_encode_plain(self.autoencoder, x, self._oom.tile).float()
        return ae_encode(self.autoencoder, x).float()

    @torch.no_grad()
    def _encode_up(self, y: Tensor, size: Sequence[int], what: str) -> Tensor:
        """E(up(y)) at image size `size` (H,W), float32."""
        d = self.downscale
        return self._guarded(what, (size[0] // d, size[1] // d),
                             lambda: self._encode(upsample_measurement(y, size)))

    @torch.no_grad()
    def _reencode(self, z: Tensor) -> Tensor:
        """The regulariser E(D(z0)) (regulariser.py's reencode, with the memory fallback)."""
        return self._guarded("re-encoding (regulariser)", z.shape, lambda: self._encode(self._decode(z)),
                             kind="reencode")

    def _objective(self, x0: Tensor) -> Objective:
        s = self.settings
        if s.mode == "pixel_inn":
            return pixel_inn_objective(x0, self.y, self.g, self.degradation, s.w_dc, s.w_p, self.perceptual)
        if s.mode == "ldps":
            return ldps_objective(x0, self.y, self.g, self.degradation, s.w_dc)
        if s.mode == "hgs":
            return hgs_objective(x0, self.edges, s.w_dc)
        return pgdiff_objective(x0, self.restoration, s.w_dc)

    def _objective_for_step(self, x0: Tensor, refine: bool) -> Objective:
        """The objective at x0 (with graph); replayed as CUDA graphs on GPU steps without refinement."""
        if refine or not (self._use_objective_graphs and x0.is_cuda):
            return self._objective(x0)
        if self._objective_graph is None:
            self._objective_graph = GraphedObjective(self._objective_outputs, x0)
        if not self._objective_graph.ok:
            return self._objective(x0)
        h, residual = self._objective_graph(x0)
        return Objective(h=h, residual=residual.detach().clone())

    def _objective_outputs(self, x0: Tensor) -> tuple:
        obj = self._objective(x0)
        return obj.h, obj.residual.detach()

    def _refine_pixel(self, obj: Optional[Objective], z: Tensor, x0: Optional[Tensor], retain: bool):
        """Refinement loss mean((y - g_c(x0))^2) reusing the guidance forward when it has one."""
        if obj is not None and obj.coarse is not None:
            coarse = obj.coarse
        else:
            if x0 is None:
                with torch.no_grad():
                    x0 = self._decode(z)
            coarse, _ = self.g(x0.detach(), self.degradation)
        loss = F.mse_loss(coarse, self.y)
        refine_step(self.optimizer, self._params, loss, retain_graph=retain)
        return loss.detach()

    # ------------------------------------------------------------------ the step
    def step(self, z0: Tensor, step_index: int, n_steps: int) -> Tensor:
        """Guide one clean-latent estimate.

        z0: (B,C,h,w) in the VAE's latent space (any float dtype; may be an inference tensor).
        step_index, n_steps: position in the run (`step_index_from_sigmas`).
        Returns a new tensor (z0's dtype and device, no grad); z0 is not modified.
        """
        _is_tensor(z0, "z0")
        self._check_latent(z0, "z0")
        return self._step(z0, None, None, step_index, n_steps)

    def step_zt(self, z_t: Tensor, denoise_fn: DenoiseFn, step_index: int, n_steps: int) -> Tensor:
        """DPS-style guidance for grad_wrt="zt": the gradient is taken through the denoiser.

        z_t: (B,C,h,w) noisy latent in the VAE's latent space; denoise_fn maps z_t (with grad) to
        z0 (B,C,h,w) in the same space, keeping the graph (the host builds it, e.g. by calling the
        model on process_in(z_t) and applying process_out). Update, per item i, with
        h = the mode's objective at D(z0), d = grad_{z_t} h, slope = <grad_{z0} h, d> (both from
        one backward):
            polyak:   z0_i <- z0_i - step_size * h_i / slope_i * d_i   (no change if slope_i <= 0)
            gradient: z0_i <- z0_i - step_size * d_i                   (DPS / INDIGO+)
        i.e. the direction comes from z_t, the step length is the one that zeroes the linearised
        h in z0 space, and the update is applied to z0 (the sampler then takes its usual step from
        it). Regulariser and refinement as in `step`. Returns the new z0 (no grad).
        """
        _is_tensor(z_t, "z_t")
        self._check_latent(z_t, "z_t")
        return self._step(None, z_t, denoise_fn, step_index, n_steps)

    def _step(self, z0: Optional[Tensor], z_t: Optional[Tensor], denoise_fn: Optional[DenoiseFn],
              step_index: int, n_steps: int) -> Tensor:
        s = self.settings
        first = self._first_call(step_index)
        guide = s.mode != "none" and s.schedule.active(step_index, n_steps)
        regularise = first and s.regulariser.active(step_index, n_steps)
        refine = first and self.optimizer is not None and s.refine.schedule.active(step_index, n_steps)
        rec = StepRecord(step_index, n_steps, guided=guide, regularised=regularise, refined=refine)

        with torch.inference_mode(False):
            # Each action is pure until its optimiser step (its last operation), so an action that
            # runs out of memory can be retried whole (memory.OutOfMemoryGuard).
            guard = self._guarded
            if z_t is not None:
                out_dtype, out_device = z_t.dtype, z_t.device
                if guide:
                    z = guard("computing the guidance gradient through the denoiser", z_t.shape,
                              lambda: self._gradient_step_zt(z_t, denoise_fn, rec, refine), kind="denoiser_gradient")
                else:
                    with torch.no_grad():
                        z = denoise_fn(z_t.detach().clone()).detach().float()
                    if refine:
                        guard("refining the INN", z.shape, lambda: self._refine_only(z, rec), kind="inn")
            else:
                out_dtype, out_device = z0.dtype, z0.device
                z = z0.detach().clone().to(self.device, torch.float32)
                if s.mode == "latent_inn" and (guide or refine):
                    z = guard("running the LatentINN", z.shape, lambda: self._latent_step(z, rec, guide, refine),
                              kind="inn")
                elif s.mode in GRADIENT_MODES and guide:
                    z = guard("computing the guidance gradient", z.shape,
                              lambda: self._gradient_step_z0(z, rec, refine), kind="gradient")
                elif refine:
                    guard("refining the INN", z.shape, lambda: self._refine_only(z, rec), kind="inn")
            if regularise:
                z = self._reencode(z)
            out = z.detach().to(device=out_device, dtype=out_dtype)
        self.records.append(rec)
        return out

    def _latent_step(self, z: Tensor, rec: StepRecord, guide: bool, refine: bool) -> Tensor:
        if refine:
            set_trainable(self._params, True)
            try:
                with torch.enable_grad():
                    z_c, z_d = self.g(z, self.degradation)
                    loss = F.mse_loss(z_c, self.z_y)
                rec.residual = rms_per_item(z_c.detach() - self.z_y)
                details = [t.detach() for t in z_d]
                if guide:
                    z = self._latent_iterate(z, details)
                refine_step(self.optimizer, self._params, loss)
            finally:
                set_trainable(self._params, False)
            rec.refine_loss = loss.detach()
            return z
        if self._use_graphs and z.is_cuda:
            if self._graph is None:
                self._graph = GraphedUpdate(self._latent_update, z)
            if self._graph.ok:
                z, rec.residual = self._graph(z)
                return z
        z, rec.residual = self._latent_update(z)
        return z

    @torch.no_grad()
    def _latent_update(self, z: Tensor) -> tuple:
        """Alg. 2 lines 4-6 (latent_iterations times) -> (new z0, residual before the update)."""
        z_c, z_d = self.g(z, self.degradation)
        residual = rms_per_item(z_c - self.z_y)
        return self._latent_iterate(z, z_d), residual

    @torch.no_grad()
    def _latent_iterate(self, z: Tensor, details) -> Tensor:
        s = self.settings
        for k in range(s.latent_iterations):
            if k:
                _, details = self.g(z, self.degradation)
            z = latent_inn_guide(z, self.z_y, self.g, self.degradation, s.zeta, details=details)
        return z

    def _gradient_step_z0(self, z: Tensor, rec: StepRecord, refine: bool) -> Tensor:
        s = self.settings
        if refine:
            set_trainable(self._params, True)
        try:
            with torch.enable_grad():
                zr = z.detach().requires_grad_(True)
                x0 = self._decode(zr)  # decoded once, reused by every term and the refinement
                obj = self._objective_for_step(x0, refine)
                (grad,) = torch.autograd.grad(obj.h.sum(), zr, retain_graph=refine)
                # the new z0 before the refinement: the optimiser step stays the action's last
                # operation, so a retry after running out of memory never refines twice
                new_z = descent_update(z.detach(), grad, obj.h.detach().clone(), dot_per_item(grad, grad),
                                       s.step_size, s.step_rule, self.max_step)
                if refine:
                    rec.refine_loss = self._refine_pixel(obj, z, x0, retain=False)
        finally:
            if refine:
                set_trainable(self._params, False)
        rec.residual = obj.residual.detach()
        return new_z

    def _gradient_step_zt(self, z_t: Tensor, denoise_fn: DenoiseFn, rec: StepRecord, refine: bool) -> Tensor:
        s = self.settings
        if refine:
            set_trainable(self._params, True)
        try:
            with torch.enable_grad():
                zt = z_t.detach().clone().requires_grad_(True)
                z0 = denoise_fn(zt)
                if z0.shape != zt.shape:
                    raise ShapeError(f"denoise_fn: expected an output of {tuple(zt.shape)}, got {tuple(z0.shape)}")
                z0f = z0.to(self.device, torch.float32)
                x0 = self._decode(z0f)
                obj = self._objective_for_step(x0, refine)
                g_zt, g_z0 = torch.autograd.grad(obj.h.sum(), [zt, z0f], retain_graph=refine)
                g_zt = g_zt.to(self.device, torch.float32)
                # the new z0 before the refinement's optimiser step (see _gradient_step_z0)
                new_z = descent_update(z0f.detach(), g_zt, obj.h.detach().clone(), dot_per_item(g_z0, g_zt),
                                       s.step_size, s.step_rule, self.max_step)
                if refine:
                    rec.refine_loss = self._refine_pixel(obj, z0f, x0, retain=False)
        finally:
            if refine:
                set_trainable(self._params, False)
        rec.residual = obj.residual.detach()
        return new_z

    def _refine_only(self, z: Tensor, rec: StepRecord) -> None:
        """Refinement on a step without guidance (its schedule may be wider than the guidance's)."""
        set_trainable(self._params, True)
        try:
            with torch.enable_grad():
                if self.settings.mode == "latent_inn":
                    z_c, _ = self.g(z, self.degradation)
                    loss = F.mse_loss(z_c, self.z_y)
                    refine_step(self.optimizer, self._params, loss)
                    rec.refine_loss = loss.detach()
                else:
                    rec.refine_loss = self._refine_pixel(None, z, None, retain=False)
        finally:
            set_trainable(self._params, False)

    # ------------------------------------------------------------------ outputs
    @torch.no_grad()
    def finish(self, x: Tensor) -> Tensor:
        """Colour fix of the final decoded image x (B,3,H,W) in [0,1] against up(y) (settings'
        colour_fix); returns a new tensor clamped to [0,1] (or x unchanged for "none")."""
        if self.settings.colour_fix == "none":
            return x
        with torch.inference_mode(False):
            xf = x.detach().clone().float()
            ref = self.y.to(xf.device)
            if ref.shape[0] != xf.shape[0]:
                ref = ref[:1]
            return colour_fix(xf, ref, self.settings.colour_fix).to(x.dtype)

    @torch.no_grad()
    def decode(self, z0: Tensor) -> Tensor:
        """D(z0) (B,3,H,W) in [0,1], float32, no gradient, under the out-of-memory guard (whole,
        or tile by tile once a pass has run out of memory): the run's output image."""
        self._check_latent(z0, "z0")
        with torch.inference_mode(False), torch.no_grad():
            z = z0.detach().clone().to(self.device, torch.float32)
            return self._guarded("decoding the output image", z.shape, lambda: self._decode(z)).clamp(0.0, 1.0)

    def preview(self, z0: Tensor) -> Tensor:
        """The INN-inverse preview (B,3,H,W) in [0,1]: pixel INN g^-1(y, g_d(D(z0))), latent INN
        D(g^-1(z_y, g_d(z0))), other modes D(z0)."""
        self._check_latent(z0, "z0")
        s = self.settings
        with torch.inference_mode(False):
            z = z0.detach().clone().to(self.device, torch.float32)
            if s.inn_domain == "latent":
                z = latent_inn_guide(z, self.z_y, self.g, self.degradation, 1.0)
            x = self._guarded("decoding the preview", z.shape, lambda: self._decode(z))
            if s.inn_domain == "pixel":
                _, x_d = self.g(x, self.degradation)
                x = self.g.inverse(self.y, x_d, self.degradation)
            return x.clamp(0.0, 1.0)

    # ------------------------------------------------------------------ records (these sync)
    @property
    def regularised_steps(self) -> list:
        return [r.step_index for r in self.records if r.regularised]

    @property
    def refined_steps(self) -> list:
        return [r.step_index for r in self.records if r.refined]

    def residual_history(self) -> list:
        """[(step_index, [residual per item])] for the calls that computed one (reads tensors)."""
        return [(r.step_index, [float(v) for v in r.residual.cpu()]) for r in self.records
                if r.residual is not None]

    def refine_loss_history(self) -> list:
        return [(r.step_index, float(r.refine_loss)) for r in self.records if r.refine_loss is not None]

    def summary(self) -> dict:
        """Plain-Python summary for UIs and logs (reads tensors back)."""
        return {
            "mode": self.settings.mode,
            "calls": len(self.records),
            "guided_steps": sorted({r.step_index for r in self.records if r.guided}),
            "regularised_steps": self.regularised_steps,
            "refined_steps": self.refined_steps,
            "residual": self.residual_history(),
            "refine_loss": self.refine_loss_history(),
        }
