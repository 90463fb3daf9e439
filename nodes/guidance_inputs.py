"""What the guidance nodes share: socket types, the guidance widgets and turning them into settings.

The Guided KSampler, Apply INDIGO Guidance and Tiled INDIGO take the same guidance inputs, so
they are declared once here (`guidance_inputs()`), read once (`settings_from_inputs`) and their
tensors prepared once (`prepare_spec`). Node ids and input names are part of saved workflows:
never rename one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import torch

from ..indigo_core.errors import ConfigError, InputValueError, ShapeError
from ..indigo_core.guidance import GuidanceSettings, RefineSettings, Schedule
from ..indigo_core.guidance.run import require_perceptual_weights
from ..indigo_core.guidance.settings import INN_DOMAIN
from ..indigo_core.io.cards import latent_space_differences
from .common import INN
from .guidance_patch import GuidanceSpec, image_to_bchw
from .host import SAMPLER_NAMES, SCHEDULER_NAMES, io, metrics_weights_dir

log = logging.getLogger("comfyui_indigo")

#: Socket types of the pack's guidance nodes.
DEGRADATION = io.Custom("INDIGO_DEGRADATION")  # value: float32 tensor (B|1, 128)
REFINE = io.Custom("INDIGO_REFINE")  # value: indigo_core RefineSettings
REGULARISER = io.Custom("INDIGO_REGULARISER")  # value: RegulariserSpec

#: "auto" picks latent_inn or pixel_inn from the INN's domain.
MODE_CHOICES = ("auto", "latent_inn", "pixel_inn", "ldps", "hgs", "pgdiff", "none")
SCHEDULE_KINDS = ("fraction", "every", "all", "off")
COLOUR_FIX_CHOICES = ("none", "wavelet", "adain")


@dataclass(frozen=True)
class RegulariserSpec:
    """The INDIGO_REGULARISER value: when to apply z0 <- E(D(z0)), and the VAE given to the node
    (used for a LATENT re-encoded on the node itself; guided sampling uses its own VAE)."""

    schedule: Schedule
    vae: Any = None


def schedule_from(kind: str, start: float, end: float, every: int) -> Schedule:
    """A core Schedule from the node widgets (kind, start/end fractions, every k steps)."""
    if kind == "fraction":
        return Schedule.fraction(float(start), float(end))
    if kind == "every":
        return Schedule.every_k(int(every))
    if kind == "all":
        return Schedule.all_steps()
    if kind == "off":
        return Schedule.off()
    raise ConfigError(f"schedule: expected one of {SCHEDULE_KINDS}, got {kind!r}")


def schedule_inputs(what: str, start: float, end: float, every: int = 5) -> list:
    """Widgets of a schedule: kind, start, end, every (as fractions of the sampler's own steps)."""
    return [
        io.Combo.Input("schedule", options=list(SCHEDULE_KINDS), default="fraction",
                       tooltip=f"When {what} runs. fraction: steps in [start, end) of the run (fractions of the "
                               "sampler's own steps, so it holds for any step count, sampler and scheduler); "
                               "every: steps 0, k, 2k...; all: every step; off: never."),
        io.Float.Input("start", default=start, min=0.0, max=1.0, step=0.01,
                       tooltip="First step, as a fraction of the run (schedule 'fraction')."),
        io.Float.Input("end", default=end, min=0.0, max=1.0, step=0.01,
                       tooltip="End of the window, as a fraction of the run, exclusive (schedule 'fraction')."),
        io.Int.Input("every", default=every, min=1, max=1000,
                     tooltip="k for schedule 'every': steps 0, k, 2k, ..."),
    ]


# =========================================================================== shared node inputs


def sampler_inputs() -> list:
    """model, conditionings, latent, seed, steps, cfg, sampler, scheduler, denoise (KSampler's)."""
    return [
        io.Model.Input("model", tooltip="The diffusion model (any SD-family MODEL). Not modified: the node "
                                        "samples with a guided clone."),
        io.Conditioning.Input("positive", tooltip="Positive conditioning, as for KSampler."),
        io.Conditioning.Input("negative", tooltip="Negative conditioning, as for KSampler (unused at cfg 1)."),
        io.Latent.Input("latent_image", tooltip="The latent to sample: its size sets the output size (image = "
                                                "latent x the VAE's factor, e.g. 8)."),
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True,
                     tooltip="Noise seed, as for KSampler."),
        io.Int.Input("steps", default=20, min=1, max=10000, tooltip="Sampling steps."),
        io.Float.Input("cfg", default=1.0, min=0.0, max=100.0, step=0.1, round=0.01,
                       tooltip="Classifier-free guidance scale; 1 skips the unconditional pass."),
        io.Combo.Input("sampler_name", options=list(SAMPLER_NAMES), default="euler",
                       tooltip="ComfyUI sampler; the guidance works with every one."),
        io.Combo.Input("scheduler", options=list(SCHEDULER_NAMES), default="normal",
                       tooltip="ComfyUI scheduler; guidance schedules follow its steps."),
        io.Float.Input("denoise", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="Fraction of the schedule to run, as for KSampler. Below 1 with "
                               "start_from_measurement restores from the encoded, upsampled measurement."),
    ]


def guidance_core_inputs() -> list:
    """vae, inn, measurement: what every guidance node needs."""
    return [
        io.Vae.Input("vae", tooltip="The VAE of the model's latent space: encodes the measurement (LatentINN) and "
                                    "decodes z0 (PixelINN, regulariser). Must have the model's latent channels."),
        INN.Input("inn", tooltip="The INN (Load INN). A LatentINN guides in latent space (cheap); a PixelINN "
                                 "guides through the decoder (Algorithm 1)."),
        io.Image.Input("measurement", tooltip="The degraded image y. PixelINN: exactly image size / INN scale "
                                              "(e.g. 128x128 for a 512x512 output at x4). LatentINN: any size "
                                              "with the output's aspect ratio. Batch 1 (shared) or one per latent."),
    ]


def guidance_inputs(colour_fix: bool = False) -> list:
    """The guidance widgets and optional sockets shared by the guidance nodes."""
    inputs = [
        io.Combo.Input("mode", options=list(MODE_CHOICES), default="auto",
                       tooltip="auto: LatentINN guidance (Algorithm 2) for a latent INN, PixelINN guidance "
                               "(Algorithm 1) for a pixel INN. ldps: ||y - g_c(D(z0))|| only; hgs: Sobel "
                               "high-pass of D(z0) vs of up(y); pgdiff: MSE to the 'restoration' image; none: "
                               "no guidance (baseline; the regulariser still runs)."),
        io.Float.Input("zeta", default=0.3, min=0.0, max=1.0, step=0.01,
                       tooltip="LatentINN strength: z0 <- z0 + zeta (z_inv - z0). 1 = the INN's answer, 0 = none. "
                               "The paper found smaller better up to an optimum; 0.3 is our default."),
        io.Float.Input("w_dc", default=2.5, min=0.0, max=100.0, step=0.1,
                       tooltip="Weight of the data-consistency term ||y - g_c(D(z0))|| (gradient modes)."),
        io.Float.Input("w_p", default=1.0, min=0.0, max=100.0, step=0.1,
                       tooltip="Weight of the perceptual term LPIPS(g^-1(y, x_d), D(z0)) (pixel_inn). Needs the "
                               "offline LPIPS backbone weights; 0 switches the term off. Its gradient can "
                               "dominate the step and weaken data consistency: lower it if results drift "
                               "from the input at high denoise."),
        io.Float.Input("step_size", default=0.5, min=0.0, max=10.0, step=0.05,
                       tooltip="Gradient step scale (gradient modes). With the 'polyak' rule 1 = the step that "
                               "would zero the linearised loss."),
        io.Float.Input("max_step", default=0.1, min=0.0, max=10.0, step=0.01,
                       tooltip="Trust region: largest rms change of z0 per step, as a fraction of the rms of the "
                               "measurement's latent. 0 = no cap."),
        io.Combo.Input("grad_wrt", options=["z0", "zt"], default="z0",
                       tooltip="Gradient through the decoder only (z0, cheap; default) or also through the "
                               "denoiser (zt, DPS-style, as INDIGO+; slower and may copy the model)."),
        io.Float.Input("guidance_start", default=0.0, min=0.0, max=1.0, step=0.01,
                       tooltip="First guided step, as a fraction of the run."),
        io.Float.Input("guidance_end", default=1.0, min=0.0, max=1.0, step=0.01,
                       tooltip="End of the guided steps, as a fraction of the run (exclusive)."),
    ]
    if colour_fix:
        inputs.append(io.Combo.Input("colour_fix", options=list(COLOUR_FIX_CHOICES), default="none",
                                     tooltip="Colour correction of the output images against the measurement "
                                             "(wavelet or AdaIN); none keeps PSNR untouched."))
    inputs += [
        DEGRADATION.Input("degradation", optional=True,
                          tooltip="Degradation embedding (Degradation Estimate) that conditions the INN; "
                                  "without it the INN runs unconditioned."),
        REFINE.Input("refine", optional=True,
                     tooltip="Test-time refinement of a private INN copy during sampling (INN Refine). "
                             "Not connected: no refinement."),
        REGULARISER.Input("regulariser", optional=True,
                          tooltip="Re-encoding regulariser schedule (Latent Re-encode Regulariser). Not "
                                  "connected: the paper's default, the first 30% of the steps."),
        io.Image.Input("restoration", optional=True,
                       tooltip="Mode pgdiff only: a restored image (e.g. from an upscale model) to guide towards."),
    ]
    return inputs


# =========================================================================== reading the inputs


def resolve_mode(mode: str, inn: Any) -> str:
    """'auto' -> latent_inn / pixel_inn from the INN's domain; other modes unchanged."""
    if mode not in MODE_CHOICES:
        raise ConfigError(f"mode: expected one of {MODE_CHOICES}, got {mode!r}")
    if mode != "auto":
        return mode
    cfg = getattr(inn, "config", None)
    if cfg is None:
        raise ConfigError(f"inn: expected an INDIGO_INN (Load INN), got {type(inn).__name__}")
    return "latent_inn" if cfg.domain == "latent" else "pixel_inn"


def settings_from_inputs(*, mode: str, inn: Any, zeta: float, w_dc: float, w_p: float, step_size: float,
                         max_step: float, grad_wrt: str, guidance_start: float, guidance_end: float,
                         colour_fix: str = "none", refine: Optional[RefineSettings] = None,
                         regulariser: Optional[RegulariserSpec] = None) -> GuidanceSettings:
    """GuidanceSettings from the node widgets (the core validates every value)."""
    mode = resolve_mode(mode, inn)
    schedule = Schedule.fraction(float(guidance_start), float(guidance_end))
    kwargs = dict(mode=mode, zeta=float(zeta), w_dc=float(w_dc), w_p=float(w_p), step_size=float(step_size),
                  max_step=None if float(max_step) <= 0 else float(max_step), grad_wrt=grad_wrt,
                  schedule=schedule, colour_fix=colour_fix)
    if regulariser is not None:
        if not isinstance(regulariser, RegulariserSpec):
            raise ConfigError(f"regulariser: expected an INDIGO_REGULARISER, got {type(regulariser).__name__}")
        kwargs["regulariser"] = regulariser.schedule
    if refine is not None:
        if not isinstance(refine, RefineSettings):
            raise ConfigError(f"refine: expected an INDIGO_REFINE, got {type(refine).__name__}")
        if mode in INN_DOMAIN:
            kwargs["refine"] = refine
        else:
            log.warning("comfyui-indigo: mode %r has no INN to refine, so the connected refine is not used", mode)
    if mode in ("latent_inn", "none"):
        kwargs["grad_wrt"] = "z0"  # nothing to differentiate: zt only applies to the gradient modes
    return GuidanceSettings(**kwargs)


def degradation_tensor(degradation: Any) -> Optional[torch.Tensor]:
    if degradation is None:
        return None
    if not isinstance(degradation, torch.Tensor) or degradation.dim() != 2:
        got = tuple(degradation.shape) if isinstance(degradation, torch.Tensor) else type(degradation).__name__
        raise ShapeError(f"degradation: expected an INDIGO_DEGRADATION (B,128), got {got}")
    if not bool(torch.isfinite(degradation).all()):
        raise InputValueError("degradation: expected finite values, got NaN or inf")
    return degradation.float()


def warn_other_latent_space(inn: Any, model: Any) -> Optional[str]:
    """A LatentINN guides in the latent space of the autoencoder it was trained for (Load INN reads
    its latent format from the model card). When the model's latent format differs (its scale
    factor, or its latent-to-RGB factors by more than 1e-3), say so in the log and return the
    message; None when they agree or either side records nothing. Channel counts are checked
    elsewhere (an error)."""
    trained = getattr(inn, "trained_latent_format", None)
    fmt = getattr(getattr(model, "model", None), "latent_format", None)
    if not trained or fmt is None or getattr(getattr(inn, "config", None), "domain", None) != "latent":
        return None
    reasons = latent_space_differences(trained, getattr(fmt, "scale_factor", None),
                                       getattr(fmt, "latent_rgb_factors", None))
    if not reasons:
        return None
    msg = (f"comfyui-indigo: this LatentINN was trained for the latents of {trained.get('file')}, but the model's "
           f"latent format has {' and '.join(reasons)}: the guidance will pull towards the wrong latents. Use a "
           "LatentINN trained for this model's VAE (python -m indigo_core.train latent-inn --vae ...) or a PixelINN.")
    log.warning(msg)
    return msg


def warn_estimator_pairing(inn: Any, degradation: Any) -> Optional[str]:
    """An INN trained with a degradation estimator expects its embedding on `degradation`, and one
    trained without expects none (Load INN reads this from the model card). Say so in the log when
    the graph does otherwise and return the message; None when they agree or the card says nothing."""
    trained = getattr(inn, "trained_estimator", None)
    if not trained:
        return None
    with_estimator, name = trained
    if with_estimator and degradation is None:
        msg = (f"comfyui-indigo: this INN was trained with a degradation estimator ({name}) but no degradation is "
               "connected: it runs without the embedding it was trained with. Connect a Degradation Estimate node "
               "(with that estimator) to the degradation input.")
    elif not with_estimator and degradation is not None:
        msg = ("comfyui-indigo: this INN was trained without a degradation estimator, but a degradation is "
               "connected: its embedding scales channels the INN never learnt to use. Leave the degradation "
               "input unconnected.")
    else:
        return None
    log.warning(msg)
    return msg


def model_latent_channels(model: Any) -> Optional[int]:
    fmt = getattr(getattr(model, "model", None), "latent_format", None)
    c = getattr(fmt, "latent_channels", None)
    return int(c) if c is not None else None


def prepare_spec(*, inn: Any, vae: Any, measurement: Any, degradation: Any = None, restoration: Any = None,
                 node_id: Optional[str] = None, vae_tile=None, **widgets) -> GuidanceSpec:
    """Check the tensors and widgets and build the GuidanceSpec (nothing heavy happens here)."""
    if vae is None or getattr(vae, "first_stage_model", None) is None:
        raise ConfigError("vae: expected a VAE with weights, got none")
    if inn is None or getattr(inn, "config", None) is None:
        raise ConfigError(f"inn: expected an INDIGO_INN (Load INN), got {type(inn).__name__}")
    y = image_to_bchw(measurement, "measurement")
    r = None if restoration is None else image_to_bchw(restoration, "restoration")
    settings = settings_from_inputs(inn=inn, **widgets)
    if settings.mode == "pgdiff" and r is None:
        raise InputValueError("restoration: mode 'pgdiff' expects a restored image on the 'restoration' input, got none")
    if degradation is not None and not settings.uses_inn:
        log.warning("comfyui-indigo: mode %r uses no INN, so the connected degradation is not used", settings.mode)
    elif settings.uses_inn:
        warn_estimator_pairing(inn, degradation)
    spec = GuidanceSpec(settings, inn=inn, measurement=y, vae=vae, degradation=degradation_tensor(degradation),
                        restoration=r, node_id=node_id, vae_tile=vae_tile)
    if settings.needs_perceptual:  # refused here, before the sampler's first VAE pass
        weights_dir = metrics_weights_dir("alex")
        require_perceptual_weights(settings.w_p, weights_dir)
        spec.run_options["perceptual_weights_dir"] = weights_dir
    return spec


GUIDANCE_WIDGETS = ("mode", "zeta", "w_dc", "w_p", "step_size", "max_step", "grad_wrt", "guidance_start",
                    "guidance_end")


def split_widgets(kwargs: dict, colour_fix: bool = False) -> dict:
    """The guidance widget values out of a node's execute() kwargs (plus refine/regulariser)."""
    names = GUIDANCE_WIDGETS + (("colour_fix",) if colour_fix else ())
    out = {k: kwargs[k] for k in names}
    out["refine"] = kwargs.get("refine")
    out["regulariser"] = kwargs.get("regulariser")
    return out


def residual_ui(summary: Optional[dict]) -> dict:
    """The per-step record of a run, for the node's UI message (and the history)."""
    if not summary:
        return {}
    return {"indigo_run": [{
        "mode": summary.get("mode"),
        "completed": summary.get("completed"),
        "residual": [[i, r] for i, r in summary.get("residual", [])],
        "refine_loss": [[i, v] for i, v in summary.get("refine_loss", [])],
        "regularised_steps": summary.get("regularised_steps", []),
        "refined_steps": summary.get("refined_steps", []),
    }]}
