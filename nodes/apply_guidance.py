"""Apply INDIGO Guidance: the guidance as a MODEL patch, for ComfyUI's own samplers.

KSampler, KSamplerAdvanced and SamplerCustom(Advanced) all sample the patched MODEL with the
guidance: it hooks ComfyUI's post-CFG step (see guidance_patch.py), so any sampler and scheduler
work. The input MODEL is not modified.
"""

from __future__ import annotations

from .common import CATEGORY
from .guidance_inputs import (guidance_core_inputs, guidance_inputs, model_latent_channels, prepare_spec, split_widgets,
                              warn_other_latent_space)
from .guidance_patch import apply_guidance
from .host import io


class ApplyGuidance(io.ComfyNode):
    """MODEL -> MODEL with LatentINDIGO guidance on every sampling run."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="INDIGO_ApplyGuidance",
            display_name="Apply INDIGO Guidance",
            category=CATEGORY,
            description=("Patches a clone of the MODEL so that any ComfyUI sampler (KSampler, KSamplerAdvanced, "
                         "SamplerCustomAdvanced) samples with LatentINDIGO guidance towards the measurement. "
                         "Schedules are fractions of the sampler's own steps."),
            inputs=[io.Model.Input("model", tooltip="The diffusion model to guide (not modified: a clone is patched).")]
            + guidance_core_inputs() + guidance_inputs(colour_fix=False),
            outputs=[io.Model.Output("MODEL", display_name="model",
                                     tooltip="The guided clone: connect it to KSampler or any sampler node.")],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, model, vae, inn, measurement, **kwargs) -> io.NodeOutput:
        spec = prepare_spec(inn=inn, vae=vae, measurement=measurement, degradation=kwargs.get("degradation"),
                            restoration=kwargs.get("restoration"), node_id=getattr(cls.hidden, "unique_id", None),
                            **split_widgets(kwargs))
        # What can be checked without the latent (its size is only known when sampling starts).
        c = model_latent_channels(model)
        if c is not None:
            spec.check_model(c)
        warn_other_latent_space(inn, model)
        return io.NodeOutput(apply_guidance(model, spec))
