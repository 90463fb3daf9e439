"""INDIGO guidance as a patch on a cloned ComfyUI MODEL.

ComfyUI's own sampler drives the run; the core (`indigo_core.guidance.GuidanceRun`) guides. The
patch touches nothing the user gave us: it is put on ``model.clone()``, and the INN and VAE are
only read (the run works on private copies where autograd needs them).

How it hooks into ComfyUI 0.3.75 (all stackable; no single-slot UNet wrapper is used):

* ``WrappersMP.OUTER_SAMPLE`` (key ``"indigo"``) around ``CFGGuider.outer_sample``: creates the
  per-run state before the first step (validates the inputs against the latent, builds the
  private INN copy, z_y = E(up(y)), the VAE adapter) and tears it down afterwards, also when the
  run is interrupted. The state lives in the guider's per-run ``model_options`` (a fresh copy
  each run), under ``transformer_options["indigo_runs"][<patch token>]``, so several patches can
  be stacked and concurrent runs never share state.
* ``sampler_post_cfg_function``: ComfyUI hands over the post-CFG clean-latent estimate (model
  space); it is converted to the VAE's space with ``latent_format.process_out``, guided by
  ``GuidanceRun.step`` at the step index read from ``transformer_options["sample_sigmas"]``, and
  converted back with ``process_in``. Works with every k-diffusion sampler and with cfg 1 (where
  ComfyUI skips the unconditional pass) and above.
* grad_wrt="zt" (DPS-style, through the denoiser): ``WrappersMP.PREDICT_NOISE`` runs the guider's
  whole prediction (UNet + CFG) inside autograd via ``GuidanceRun.step_zt``; when the loaded
  denoiser holds inference tensors (the server loads weights under ``torch.inference_mode``), a
  ``WrappersMP.DIFFUSION_MODEL`` wrapper routes those differentiable calls to a private
  non-inference copy of the diffusion model, made once per run at the first such step.

ComfyUI's ``ModelPatcher.clone`` deep-copies ``model_options``: the objects stored there
(`GuidanceSpec` and the callables) return themselves from ``__deepcopy__`` so an INN, a VAE and a
measurement are never duplicated by a clone.
"""

from __future__ import annotations

import copy
import logging
import uuid
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from ..indigo_core.errors import ConfigError, DomainError, InputValueError, ShapeError
from ..indigo_core.guidance import GuidanceRun, GuidanceSettings, check_aspect, step_index_from_sigmas
from ..indigo_core.guidance.settings import GRADIENT_MODES
from .host import WrappersMP, executing_ids, frontend_connected, send_event, soft_empty_cache, throw_if_interrupted

log = logging.getLogger("comfyui_indigo")

#: Key of the pack's wrappers in ComfyUI's wrapper dictionaries.
WRAPPER_KEY = "indigo"
#: transformer_options key of the live runs of one sampling call ({patch token: _RunState}).
RUNS_KEY = "indigo_runs"
#: Frontend event with per-step values: {node, step, steps, residual, refine_loss}.
PROGRESS_EVENT = "indigo.progress"


# =========================================================================== tensors in / out


def image_to_bchw(image: Tensor, name: str = "measurement") -> Tensor:
    """A ComfyUI IMAGE (B,H,W,C) in [0,1] -> (B,3,H,W) float32 (alpha dropped), checked finite."""
    if not isinstance(image, Tensor) or image.dim() != 4:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ShapeError(f"{name}: expected an IMAGE (B,H,W,3), got {got}")
    if image.shape[-1] not in (3, 4):
        raise ShapeError(f"{name}: expected 3 colour channels (B,H,W,3), got {image.shape[-1]} channels")
    if image.shape[0] == 0:
        raise ShapeError(f"{name}: expected at least one image, got an empty batch {tuple(image.shape)}")
    if not bool(torch.isfinite(image).all()):
        bad = int((~torch.isfinite(image)).sum())
        raise InputValueError(f"{name}: expected finite pixel values in [0,1], got {bad} NaN/inf values")
    return image[..., :3].movedim(-1, 1).float()


def bchw_to_image(x: Tensor) -> Tensor:
    """(B,3,H,W) -> a ComfyUI IMAGE (B,H,W,3) float32 in [0,1]."""
    return x.detach().float().clamp(0.0, 1.0).movedim(1, -1).contiguous()


# =========================================================================== the VAE adapter


def _has_inference_tensors(module: torch.nn.Module) -> bool:
    return any(t.is_inference() for t in module.parameters()) or any(t.is_inference() for t in module.buffers())


def private_frozen_module(module: torch.nn.Module, device=None, dtype=None) -> torch.nn.Module:
    """``module`` itself when autograd can pass through it as it is (normal tensors, already on
    ``device``/``dtype``); otherwise a frozen copy with normal tensors, made outside inference
    mode. Either way the caller must only call it, never change it."""
    params = list(module.parameters()) + list(module.buffers())
    on_place = all((device is None or t.device == torch.device(device)) and
                   (dtype is None or not t.is_floating_point() or t.dtype == dtype) for t in params)
    if on_place and not _has_inference_tensors(module):
        return module
    with torch.inference_mode(False):
        private = copy.deepcopy(module)
        private.to(device=device, dtype=dtype)
        private.requires_grad_(False)
        private.eval()
    return private


def _clamps_default_output(process_output: Callable[[Tensor], Tensor]) -> bool:
    """Whether a VAE's process_output is ComfyUI's default clamp((x + 1) / 2, 0, 1)."""
    probe = torch.tensor([-3.0, -1.0, 0.0, 0.5, 1.0, 3.0])
    try:
        with torch.inference_mode(False):
            out = process_output(probe.clone())
    except Exception:  # an unusual VAE: use its own mapping
        return False
    return isinstance(out, Tensor) and out.shape == probe.shape and \
        bool(torch.allclose(out.float(), ((probe + 1) / 2).clamp(0, 1)))


class ComfyVAEAutoencoder:
    """The core's Autoencoder protocol over a ComfyUI ``VAE`` (AutoencoderKL, TAESD, ...).

    differentiable=True (gradient modes): ComfyUI's ``VAE.decode`` is not differentiable
    (preallocated output, device moves, clamp), so this calls the underlying ``first_stage_model``
    directly: the module itself when its tensors can take part in autograd, else a private frozen
    copy made once per run (weights loaded by the server are inference tensors). decode maps
    ComfyUI's [-1,1] output to [0,1] without the clamp (a clamp would zero the guidance gradient
    at saturated pixels).
    differentiable=False: ComfyUI's own VAE.encode/decode (memory-managed, no copy, no gradient).

    encode(x): (B,3,H,W) in [0,1] -> (B,C,H/d,W/d) in the VAE's own latent space (what ComfyUI's
    VAE Encode returns). decode(z): the inverse direction, roughly in [0,1].
    """

    def __init__(self, vae: Any, device=None, differentiable: bool = True) -> None:
        fsm = getattr(vae, "first_stage_model", None)
        if fsm is None:
            raise ConfigError("vae: expected a VAE with weights, got an empty VAE (the checkpoint holds no VAE?)")
        if int(getattr(vae, "latent_dim", 2)) != 2:
            raise DomainError(f"vae: expected an image VAE (2-D latents), got a VAE with {vae.latent_dim}-D latents")
        self.latent_channels = int(vae.latent_channels)
        self.downscale = int(vae.spacial_compression_encode())
        self.dtype = getattr(vae, "vae_dtype", None)
        self.device = torch.device(device if device is not None else vae.device)
        self._process_input = vae.process_input
        self._process_output = vae.process_output
        self._linear_output = _clamps_default_output(vae.process_output)
        self.differentiable = bool(differentiable)
        if self.differentiable:
            self.module = private_frozen_module(fsm, self.device, self.dtype)
        else:
            # No gradient needed (LatentINN guidance, regulariser, previews): go through ComfyUI's
            # own VAE.encode/decode, which load and offload the VAE under ComfyUI's memory
            # management, so no second copy of the VAE is held.
            self._vae = vae
            self.module = None
            self.dtype = None  # ComfyUI casts at its own boundary

    def encode(self, x: Tensor) -> Tensor:
        if not self.differentiable:
            with torch.no_grad():
                z = self._vae.encode(x.detach().movedim(1, -1).float())
            return z.to(self.device, torch.float32)
        return self.module.encode(self._process_input(x.to(self.device)))

    def decode(self, z: Tensor) -> Tensor:
        if not self.differentiable:
            with torch.no_grad():
                x = self._vae.decode(z.detach())
            return x.movedim(-1, 1).to(self.device, torch.float32)
        raw = self.module.decode(z.to(self.device))
        return (raw + 1.0) * 0.5 if self._linear_output else self._process_output(raw)


class TiledAutoencoder:
    """An Autoencoder that encodes/decodes tile by tile (Gaussian-blended, core ``tiling``)."""

    def __init__(self, ae: ComfyVAEAutoencoder, tile: int, overlap: int) -> None:
        from ..indigo_core.guidance import tiled_decode, tiled_encode

        self._ae, self._tile, self._overlap = ae, int(tile), int(overlap)
        self._enc, self._dec = tiled_encode, tiled_decode
        self.latent_channels, self.downscale, self.dtype = ae.latent_channels, ae.downscale, ae.dtype
        self.device = ae.device

    def encode(self, x: Tensor) -> Tensor:
        return self._enc(self._ae, x, self._tile, self._overlap)

    def decode(self, z: Tensor) -> Tensor:
        return self._dec(self._ae, z, self._tile, self._overlap)


# =========================================================================== what a patch carries


class GuidanceSpec:
    """Everything one guidance patch needs, fixed when the node runs (read-only afterwards).

    settings: GuidanceSettings. inn: the user's INN (never modified). measurement: (B|1,3,h,w)
    in [0,1]. vae: the ComfyUI VAE. degradation: (B|1,128) or None. restoration: (B|1,3,H,W) for
    mode pgdiff. vae_tile: (tile, overlap) in latent pixels for a tiled autoencoder, or None.
    node_id: the node's id for frontend events. on_finish: optional callable(run, samples)
    called with the finished run and the final VAE-space latent, before the run is torn down
    (the sampler nodes compute their preview there).
    """

    def __init__(self, settings: GuidanceSettings, *, inn: Any, measurement: Optional[Tensor], vae: Any,
                 degradation: Optional[Tensor] = None, restoration: Optional[Tensor] = None,
                 vae_tile: Optional[tuple[int, int]] = None, node_id: Optional[str] = None,
                 on_finish: Optional[Callable[[GuidanceRun, Tensor], None]] = None) -> None:
        if not isinstance(settings, GuidanceSettings):
            raise ConfigError(f"settings: expected GuidanceSettings, got {type(settings).__name__}")
        self.token = uuid.uuid4().hex
        self.settings = settings
        self.inn = inn
        self.measurement = measurement
        self.vae = vae
        self.degradation = degradation
        self.restoration = restoration
        self.vae_tile = vae_tile
        self.node_id = node_id
        self.on_finish = on_finish
        #: Extra GuidanceRun keyword arguments (performance options such as checkpoint_decoder,
        #: compile_inn, cuda_graphs); empty by default.
        self.run_options: dict = {}
        #: Summary of the last finished (or interrupted) run: GuidanceRun.summary() plus "completed".
        self.last_summary: Optional[dict] = None

    def __deepcopy__(self, memo):  # shared by ModelPatcher clones (read-only)
        return self

    # ------------------------------------------------------------------ validation
    def check_model(self, model_latent_channels: int) -> None:
        """What can be checked knowing only the model's latent channels: VAE and INN must match."""
        c = int(model_latent_channels)
        vae_c = int(getattr(self.vae, "latent_channels", -1))
        if vae_c != c:
            raise DomainError(f"vae: expected a VAE with {c} latent channels (the model's latent format), "
                              f"got a VAE with {vae_c}")
        self._check_inn(c)

    def _check_inn(self, latent_channels: int) -> None:
        s = self.settings
        cfg = getattr(self.inn, "config", None) if self.inn is not None else None
        if not s.uses_inn or cfg is None:
            return
        if cfg.domain != s.inn_domain:
            raise DomainError(f"inn: mode {s.mode!r} expects a {s.inn_domain} INN, got a {cfg.domain} INN "
                              f"({cfg.channels} channels)")
        if cfg.domain == "latent" and cfg.channels != latent_channels:
            raise DomainError(f"inn: expected a LatentINN with {latent_channels} channels (the model's and VAE's "
                              f"latent channels), got a {cfg.channels}-channel LatentINN")
        if cfg.domain == "pixel" and cfg.channels != 3:
            raise DomainError(f"inn: expected a 3-channel (RGB) PixelINN, got {cfg.channels} channels")

    def check(self, latent_shape, model_latent_channels: Optional[int] = None) -> None:
        """Refuse inputs that cannot work, naming expected vs got, before any heavy work.

        latent_shape: (B,C,h,w) of the latent to be sampled. The core repeats the INN/measurement
        checks when the run is created; these are the ones that need the host's objects (model,
        VAE) to be phrased well.
        """
        shape = tuple(int(v) for v in latent_shape)
        if len(shape) != 4:
            raise ShapeError(f"latent: expected an image latent (B,C,h,w), got shape {shape}")
        B, C, h, w = shape
        if B == 0:
            raise ShapeError(f"latent: expected at least one item, got an empty batch {shape}")
        if model_latent_channels is not None:
            self.check_model(model_latent_channels)
            if C != int(model_latent_channels):
                raise DomainError(f"latent: expected {model_latent_channels} channels (the model's latent format), "
                                  f"got {C}")
        vae_c = int(getattr(self.vae, "latent_channels", -1))
        if C != vae_c:
            raise DomainError(f"latent: expected {vae_c} channels (the VAE's latent channels), got {C}")
        self._check_inn(C)
        s = self.settings
        cfg = getattr(self.inn, "config", None) if self.inn is not None else None
        y = self.measurement
        if y is not None:
            if y.shape[0] not in (1, B):
                raise ShapeError(f"measurement: expected a batch of {B} (one per latent) or 1, got {y.shape[0]}")
            if not bool(torch.isfinite(y).all()):
                raise InputValueError("measurement: expected finite values, got NaN or inf")
            if s.uses_inn and cfg is not None:
                d = int(self.vae.spacial_compression_encode())
                H, W = h * d, w * d
                if cfg.domain == "pixel":
                    want = cfg.coarse_shape(H, W)
                    if tuple(y.shape[-2:]) != tuple(want):
                        raise ShapeError(
                            f"measurement: expected {want[0]}x{want[1]} pixels (latent {h}x{w} -> image {H}x{W}, "
                            f"PixelINN scale x{cfg.scale}), got {y.shape[-2]}x{y.shape[-1]}")
                else:
                    check_aspect("measurement", y.shape[-2:], (H, W), "the image")
        g = self.degradation
        if g is not None:
            if g.shape[0] not in (1, B):
                raise ShapeError(f"degradation: expected a batch of {B} or 1, got {g.shape[0]}")
            emb = getattr(cfg, "emb_dim", None)
            if s.uses_inn and emb is not None and g.shape[1] != emb:
                rows = f"{B} or 1" if B > 1 else "1"
                raise ShapeError(f"degradation: expected ({rows}, {emb}) (the INN's degradation embedding), "
                                 f"got {tuple(g.shape)}")

    # ------------------------------------------------------------------ runs
    def autoencoder(self, device=None, differentiable: Optional[bool] = None):
        """The VAE as the core sees it; differentiable by default only for the gradient modes."""
        if differentiable is None:
            differentiable = self.settings.mode in GRADIENT_MODES
        ae = ComfyVAEAutoencoder(self.vae, device=device, differentiable=differentiable)
        if self.vae_tile is not None:
            ae = TiledAutoencoder(ae, *self.vae_tile)
        return ae

    def new_run(self, latent_shape, device=None) -> GuidanceRun:
        """A fresh GuidanceRun for a (VAE-space) latent of ``latent_shape``."""
        ae = self.autoencoder(device)
        dev = torch.device(device) if device is not None else ae.device
        # On running out of memory the run empties ComfyUI's cache before its tiled retry, and its
        # final error is an OOM error, after which ComfyUI unloads its models as for any OOM.
        options = {"free_cache": soft_empty_cache, **self.run_options}
        with torch.inference_mode(False):
            return GuidanceRun(self.settings, measurement=self.measurement, latent_shape=tuple(latent_shape),
                               autoencoder=ae, inn=self.inn, degradation=self.degradation,
                               restoration=self.restoration, device=dev, **options)


class _RunState:
    """One sampling run of one patch: the core's GuidanceRun and what the hooks need around it."""

    def __init__(self, spec: GuidanceSpec, run: GuidanceRun, latent_format: Any, diffusion_model: Any) -> None:
        self.spec = spec
        self.run = run
        self.latent_format = latent_format
        self.diffusion_model = diffusion_model
        self.in_zt = False  # inside a differentiable denoiser call (z_t mode)
        self.swapping = False  # a private denoiser copy is running (re-entrancy guard)
        self.denoiser_copy = None
        self.events = frontend_connected()
        self.calls = 0

    def denoiser_for_grad(self):
        """The diffusion model autograd can pass through: itself, or a private copy (made once)."""
        if self.denoiser_copy is None:
            dm = self.diffusion_model
            if _has_inference_tensors(dm):
                n = sum(p.numel() for p in dm.parameters())
                log.warning("comfyui-indigo: grad_wrt='zt' makes a private copy of the diffusion model "
                            "(%.0fM parameters) because its weights are inference tensors", n / 1e6)
                self.denoiser_copy = private_frozen_module(dm)
            else:
                self.denoiser_copy = dm
        return self.denoiser_copy

    def after_call(self) -> None:
        self.calls += 1
        rec = self.run.records[-1] if self.run.records else None
        if rec is None or not self.events:
            return
        data = {
            "node": self.spec.node_id,
            **executing_ids(self.spec.node_id),  # prompt_id, display_node: which prompt's node it is
            "step": rec.step_index,
            "steps": rec.n_steps,
            "residual": None if rec.residual is None else [float(v) for v in rec.residual.detach().cpu()],
            "refine_loss": None if rec.refine_loss is None else float(rec.refine_loss),
            "regularised": rec.regularised,
        }
        send_event(PROGRESS_EVENT, data)

    def close(self) -> None:
        self.denoiser_copy = None
        self.diffusion_model = None


def _run_of(model_options: dict, token: str) -> Optional[_RunState]:
    return model_options.get("transformer_options", {}).get(RUNS_KEY, {}).get(token)


# =========================================================================== the hooks


class _Hook:
    """Base of the pack's callables stored in model_options: shared, never deep-copied."""

    def __init__(self, spec: GuidanceSpec) -> None:
        self.spec = spec

    def __deepcopy__(self, memo):
        return self


class _OuterSample(_Hook):
    """WrappersMP.OUTER_SAMPLE: per-run state set up before the first step, torn down after."""

    def __call__(self, executor, noise, latent_image, sampler, sigmas, *args, **kwargs):
        guider = executor.class_obj
        spec = self.spec
        patcher = guider.model_patcher
        base = patcher.model
        if getattr(noise, "is_nested", False):
            raise ShapeError("latent: INDIGO guidance expects one image latent per item, got a nested (multi-shape) latent")
        fmt = base.latent_format
        spec.check(noise.shape, getattr(fmt, "latent_channels", None))
        run = spec.new_run(noise.shape, device=patcher.load_device)
        state = _RunState(spec, run, fmt, getattr(base, "diffusion_model", None))
        original = guider.model_options
        options = dict(original)
        topts = dict(options.get("transformer_options", {}))
        runs = dict(topts.get(RUNS_KEY, {}))
        runs[spec.token] = state
        topts[RUNS_KEY] = runs
        options["transformer_options"] = topts
        guider.model_options = options
        completed = False
        try:
            samples = executor(noise, latent_image, sampler, sigmas, *args, **kwargs)
            completed = True
            if spec.on_finish is not None:
                spec.on_finish(run, samples)
            return samples
        finally:
            guider.model_options = original
            summary = run.summary()
            summary["completed"] = completed
            spec.last_summary = summary
            state.close()


class _PostCFG(_Hook):
    """sampler_post_cfg_function: guide ComfyUI's post-CFG clean-latent estimate (z0 mode)."""

    def __call__(self, args: dict) -> Tensor:
        denoised = args["denoised"]
        model_options = args.get("model_options", {})
        state = _run_of(model_options, self.spec.token)
        if state is None or state.in_zt or self.spec.settings.grad_wrt == "zt":
            return denoised
        throw_if_interrupted()
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        i, n = step_index_from_sigmas(args["sigma"], sigmas)
        fmt = state.latent_format
        z = state.run.step(fmt.process_out(denoised), i, n)
        state.after_call()
        rec = state.run.records[-1]
        if not (rec.guided or rec.regularised or rec.refined):
            return denoised  # nothing scheduled at this step: keep ComfyUI's tensor bit for bit
        return fmt.process_in(z).to(denoised.dtype)


class _PredictNoise(_Hook):
    """WrappersMP.PREDICT_NOISE: DPS-style guidance through the denoiser (grad_wrt="zt")."""

    def __call__(self, executor, x, timestep, model_options={}, seed=None):
        state = _run_of(model_options, self.spec.token)
        if state is None or self.spec.settings.grad_wrt != "zt" or state.in_zt:
            return executor(x, timestep, model_options, seed)
        throw_if_interrupted()
        sigmas = model_options["transformer_options"]["sample_sigmas"]
        i, n = step_index_from_sigmas(timestep, sigmas)
        fmt = state.latent_format

        def denoise(z_t: Tensor) -> Tensor:
            state.in_zt = True
            try:
                if torch.is_grad_enabled():
                    state.denoiser_for_grad()
                # The sampler's sigmas are inference tensors under the server; autograd cannot save
                # them, so the differentiable call gets a normal copy (also as transformer "sigmas").
                t = timestep.clone()
                return fmt.process_out(executor(fmt.process_in(z_t), t, model_options, seed))
            finally:
                state.in_zt = False

        z0 = state.run.step_zt(fmt.process_out(x), denoise, i, n)
        state.after_call()
        return fmt.process_in(z0).to(x.dtype)


class _DiffusionModelForGrad(_Hook):
    """WrappersMP.DIFFUSION_MODEL: during differentiable calls (z_t mode), run the private copy of
    the diffusion model when the loaded one holds inference tensors. Other calls pass through."""

    def __call__(self, executor, *args, **kwargs):
        topts = kwargs.get("transformer_options")
        if topts is None:
            topts = next((a for a in reversed(args) if isinstance(a, dict) and RUNS_KEY in a), {})
        state = topts.get(RUNS_KEY, {}).get(self.spec.token) if isinstance(topts, dict) else None
        if state is None or not state.in_zt or state.swapping or not torch.is_grad_enabled():
            return executor(*args, **kwargs)
        private = state.denoiser_copy
        if private is None or private is state.diffusion_model:
            return executor(*args, **kwargs)
        state.swapping = True
        try:
            return private(*args, **kwargs)  # re-enters the wrapper chain on the copy
        finally:
            state.swapping = False


def apply_guidance(model: Any, spec: GuidanceSpec) -> Any:
    """A clone of ``model`` (a ComfyUI ModelPatcher) that guides every sampling run with ``spec``.

    The input MODEL is untouched. Patches stack: applying twice guides with both, in order.
    """
    m = model.clone()
    m.add_wrapper_with_key(WrappersMP.OUTER_SAMPLE, WRAPPER_KEY, _OuterSample(spec))
    if spec.settings.grad_wrt == "zt":
        m.add_wrapper_with_key(WrappersMP.PREDICT_NOISE, WRAPPER_KEY, _PredictNoise(spec))
        m.add_wrapper_with_key(WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, _DiffusionModelForGrad(spec))
    else:
        m.set_model_sampler_post_cfg_function(_PostCFG(spec))
    return m
