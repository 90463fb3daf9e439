"""Tiny models built from ComfyUI 0.3.75's own classes, for host tests and the benchmark.

Nothing is downloaded: every model is a ComfyUI class with seeded random weights (ComfyUI's ops
leave weights uninitialised, so we fill them), or the analytic prior below.

- `tiny_unet_model(...)`: an SD1.5-layout UNet (comfy.supported_models.SD15 + BaseModel EPS)
  with few channels, wrapped in a ModelPatcher — a real MODEL as CheckpointLoader would give.
- `sd15_unet_model()`: the full-size SD1.5 UNet layout (benchmark only).
- `tiny_vae(...)` / `sd_vae()`: comfy.sd.VAE(sd={}, config=...) with an AutoencoderKL whose
  encoder downsamples x8 like SD's; `sd_vae()` is SD's exact layout (ch=128).
- `gaussian_prior_model(...)`: a MODEL whose denoiser is the exact MMSE denoiser of a stationary
  Gaussian latent distribution (the analytic prior of the acceptance tests).
- `empty_conditioning(...)`: CONDITIONING without a text encoder.

Import only after ComfyUI is importable (the host conftest arranges that).
"""

from __future__ import annotations

import math

import torch

SD15_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}

SD_VAE_DDCONFIG = {
    "double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
    "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0,
}


def seeded_init_(module: torch.nn.Module, seed: int, gain: float = 1.0) -> torch.nn.Module:
    """Fill every parameter and buffer of `module` deterministically (ComfyUI leaves them empty).

    Weights get a fan-in scaled normal (so activations stay O(1) through deep stacks), biases and
    norm shifts zero, norm scales one.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim == 0:
                continue  # scalars (e.g. TAESD's vae_scale) keep their constructor value
            if name.endswith("bias"):
                p.zero_()
            elif p.ndim == 1:  # norm scales
                p.fill_(1.0)
            else:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) * (gain / math.sqrt(fan_in)))
        for name, b in module.named_buffers():
            if b.is_floating_point() and not torch.isfinite(b).all():
                b.zero_()
    return module


def _patcher(base_model):
    import comfy.model_management as mm
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher(base_model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _sd15_config(unet_config: dict):
    import comfy.supported_models

    return comfy.supported_models.SD15(unet_config)


def tiny_unet_config(model_channels: int = 32, context_dim: int = 32, num_heads: int = 2) -> dict:
    """SD1.5's UNet layout, shrunk: same blocks and attention pattern, far fewer channels."""
    cfg = dict(SD15_UNET_CONFIG)
    cfg.update(model_channels=model_channels, context_dim=context_dim, num_heads=num_heads,
               num_res_blocks=[1, 1, 1, 1], transformer_depth=[1, 1, 1, 0],
               channel_mult=[1, 2, 2, 2], transformer_depth_output=[1, 1, 1, 1, 1, 1, 0, 0])
    return cfg


def tiny_unet_model(seed: int = 0, model_channels: int = 32, context_dim: int = 32):
    """A ModelPatcher around a small SD1.5-layout UNet (EPS, SD1 latent format) with seeded weights."""
    import comfy.model_base

    config = _sd15_config(tiny_unet_config(model_channels, context_dim))
    config.unet_config["num_heads"] = 2  # SD15's extra config sets 8; keep heads 16 channels wide
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS)
    seeded_init_(base.diffusion_model, seed, gain=0.5)
    base.eval()
    return _patcher(base)


def sd15_unet_model(seed: int = 0, dtype: torch.dtype | None = None, device=None):
    """The full SD1.5 UNet layout (model_channels 320, ~860M parameters) with random weights."""
    import comfy.model_base

    cfg = dict(SD15_UNET_CONFIG)
    if dtype is not None:
        cfg["dtype"] = dtype
    config = _sd15_config(cfg)
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS, device=device)
    seeded_init_(base.diffusion_model, seed, gain=0.5)
    if dtype is not None:
        base.diffusion_model.to(dtype)
    base.eval()
    return _patcher(base)


def smooth_autoencoder_init_(ae: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Seeded weights that make an AutoencoderKL smooth and nearly invertible, like a trained one.

    A random deep decoder is a wildly non-linear map that no gradient method can invert in a few
    steps; trained VAEs are close to locally linear. So: residual blocks and attention start as
    identities (their last conv zero), downsamplers average 2x2, upsamplers copy (nearest),
    and only the convs that change the channel count mix channels (random centre taps). Encoder
    and decoder then act like a random colour/latent projection with pooling/upsampling and
    ComfyUI's GroupNorm-SiLU heads.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in ae.parameters():
            p.zero_()
        for name, m in ae.named_modules():
            leaf = name.rsplit(".", 1)[-1]
            if isinstance(m, torch.nn.GroupNorm):
                m.weight.fill_(1.0)
            elif isinstance(m, torch.nn.Conv2d):
                w = m.weight
                cout, cin, kh, kw = w.shape
                if name.endswith("downsample.conv"):
                    for c in range(cout):
                        w[c, c, 0:2, 0:2] = 0.25
                elif name.endswith("upsample.conv"):
                    for c in range(cout):
                        w[c, c, kh // 2, kw // 2] = 1.0
                elif leaf in ("conv2", "proj_out"):
                    pass  # zero: the block is an identity
                elif leaf in ("quant_conv", "post_quant_conv") and cin == cout:
                    w[:, :, kh // 2, kw // 2] = torch.eye(cout)
                else:
                    w[:, :, kh // 2, kw // 2] = torch.randn(cout, cin, generator=gen) / math.sqrt(cin)
    return ae


def _vae(ddconfig: dict, seed: int, embed_dim: int = 4, device=None, dtype=None, latent_gain: float = 1.0,
         smooth: bool = False):
    import comfy.ldm.models.autoencoder
    import comfy.sd

    config = {"params": {"embed_dim": embed_dim, "ddconfig": dict(ddconfig)}}
    # Build once to get a seeded state dict, then let comfy.sd.VAE load it like a file's weights.
    donor = comfy.ldm.models.autoencoder.AutoencoderKL(**config["params"])
    if smooth:
        smooth_autoencoder_init_(donor, seed)
    else:
        seeded_init_(donor, seed)
    with torch.no_grad():  # latent scale like SD's (std ~5 in VAE space, ~1 after x0.18215)
        donor.quant_conv.weight.mul_(latent_gain)
        donor.post_quant_conv.weight.div_(latent_gain)
    sd = {k: v.detach().clone() for k, v in donor.state_dict().items()}
    del donor
    vae = comfy.sd.VAE(sd=sd, config=config, device=device, dtype=dtype)
    # comfy.sd.VAE keeps its default of 4 for config-built AutoencoderKLs; a file-detected 16-channel
    # VAE (SD3, Flux) reports 16.
    vae.latent_channels = embed_dim
    return vae


def tiny_vae(seed: int = 0, ch: int = 32, latent_channels: int = 4, latent_gain: float = 8.0, smooth: bool = True):
    """comfy.sd.VAE with an AutoencoderKL of SD's structure (x8: three downsamples), `ch` channels (GroupNorm needs a multiple of 32)."""
    ddconfig = dict(SD_VAE_DDCONFIG)
    ddconfig.update(ch=ch, ch_mult=[1, 1, 1, 1], num_res_blocks=1, z_channels=latent_channels)
    return _vae(ddconfig, seed, embed_dim=latent_channels, latent_gain=latent_gain, smooth=smooth)


def sd_vae(seed: int = 0, device=None, dtype=None):
    """SD's exact VAE layout (ch=128, ch_mult 1,2,4,4, two res blocks) with random weights."""
    return _vae(SD_VAE_DDCONFIG, seed, device=device, dtype=dtype)


def empty_conditioning(batch: int = 1, context_dim: int = 32, tokens: int = 4, seed: int = 0):
    """CONDITIONING without CLIP: [[tensor(B, tokens, context_dim), {}]] (seeded values)."""
    gen = torch.Generator().manual_seed(seed)
    return [[torch.randn(batch, tokens, context_dim, generator=gen) * 0.1, {}]]


# --------------------------------------------------------------------------- analytic prior


class GaussianMMSEDenoiser(torch.nn.Module):
    """The exact MMSE denoiser of a stationary Gaussian field, posing as a diffusion network.

    Prior (model space, per channel c): z ~ N(mu_c, C_c), C_c diagonal in the 2-D DCT basis with
    eigenvalues var_c * S(f) / mean S over the mirror-extended 2H x 2W frequency grid,
    S(f) = exp(-2 pi^2 l^2 |f|^2) + floor (a squared-exponential covariance of length `corr_len`
    latent pixels plus a white floor). For x_t = z + sigma n the MMSE estimate is
    E[z | x_t] = mu + DCT^-1[ S' / (S' + sigma^2) . DCT(x_t - mu) ], computed as an FFT filter of
    the mirror extension, exact on whatever H x W grid it is called on.

    ComfyUI calls it like a UNet: forward(xc, timesteps, context, ...) with xc = x / sqrt(sigma^2+1)
    (EPS parameterisation); the exact sigma is read from transformer_options["sigmas"] (set by
    calc_cond_batch), since `timesteps` is rounded to an integer. It returns eps = (x - E[z|x]) / sigma
    so that BaseModel's `x - sigma * eps` is exactly the MMSE estimate. The conditioning shifts the
    prior mean by cond_gain * mean(context) (a conditional Gaussian prior, so CFG changes the
    result). It goes through ComfyUI's
    DIFFUSION_MODEL wrappers like the real UNet, and records the spatial shapes it is called on.
    """

    def __init__(self, mean: torch.Tensor, var: torch.Tensor, corr_len: float = 1.5, floor: float = 0.05,
                 cond_gain: float = 5.0):
        super().__init__()
        self.cond_gain = float(cond_gain)
        self.register_buffer("mean", mean.float().view(1, -1, 1, 1))
        self.register_buffer("var", var.float().view(1, -1, 1, 1))
        self.corr_len = float(corr_len)
        self.floor = float(floor)
        self.dtype = torch.float32
        self.calls: list[tuple[int, ...]] = []  # shapes seen, for tiling tests

    def spectrum(self, h: int, w: int, device) -> torch.Tensor:
        fy = torch.fft.fftfreq(h, device=device).view(h, 1)
        fx = torch.fft.fftfreq(w, device=device).view(1, w)
        s = torch.exp(-2 * math.pi ** 2 * self.corr_len ** 2 * (fx ** 2 + fy ** 2)) + self.floor
        s = s / s.mean()  # mean over frequencies 1 -> per-pixel variance = var
        return s.view(1, 1, h, w)

    def mmse(self, x: torch.Tensor, sigma: torch.Tensor, shift=0.0) -> torch.Tensor:
        h, w = x.shape[-2:]
        # Mirror-extend to 2h x 2w: a stationary spectrum there is diagonal in the DCT basis of the
        # h x w field, so filtering the extension and cropping is the exact MMSE estimate for that
        # (non-periodic) Gaussian field; its borders reflect instead of wrapping around.
        p = self.var.to(x) * self.spectrum(2 * h, 2 * w, x.device)
        s2 = (sigma.to(x).view(-1, 1, 1, 1)) ** 2
        gain = p / (p + s2)
        mean = self.mean.to(x) + shift
        r = x - mean
        r = torch.cat([r, r.flip(-1)], dim=-1)
        r = torch.cat([r, r.flip(-2)], dim=-2)
        f = torch.fft.ifft2(torch.fft.fft2(r.double()) * gain.double()).real
        return mean + f[..., :h, :w].to(x.dtype)

    def forward(self, x, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        import comfy.patcher_extension as pe

        return pe.WrapperExecutor.new_class_executor(
            self._forward, self, pe.get_all_wrappers(pe.WrappersMP.DIFFUSION_MODEL, transformer_options)
        ).execute(x, timesteps, context, y, control, transformer_options, **kwargs)

    def _forward(self, xc, timesteps=None, context=None, y=None, control=None, transformer_options={}, **kwargs):
        self.calls.append(tuple(xc.shape))
        sigma = transformer_options["sigmas"].to(xc.device, torch.float32)
        if sigma.numel() == 1:
            sigma = sigma.expand(xc.shape[0])
        elif sigma.shape[0] != xc.shape[0]:
            sigma = sigma.repeat(xc.shape[0] // sigma.shape[0])  # cond/uncond chunks are concatenated
        x = xc.float() * torch.sqrt(sigma.view(-1, 1, 1, 1) ** 2 + 1.0)
        shift = 0.0
        if context is not None and self.cond_gain:
            # A conditional prior: the conditioning shifts the mean, so CFG has something to do.
            shift = self.cond_gain * context.float().mean(dim=(1, 2)).view(-1, 1, 1, 1).to(x.device)
        d = self.mmse(x, sigma, shift)
        return (x - d) / sigma.view(-1, 1, 1, 1)


def gaussian_prior_model(channels: int = 4, seed: int = 0, corr_len: float = 1.5):
    """A MODEL (ModelPatcher) whose denoiser is GaussianMMSEDenoiser (EPS), in SD1's latent format
    for 4 channels and SD3's for 16 (a stand-in for a 16-channel model)."""
    import comfy.latent_formats
    import comfy.model_base

    gen = torch.Generator().manual_seed(seed)
    mean = torch.randn(channels, generator=gen) * 0.2
    var = 0.6 + 0.4 * torch.rand(channels, generator=gen)
    config = _sd15_config({**tiny_unet_config(), "disable_unet_model_creation": True, "in_channels": channels,
                           "out_channels": channels})
    if channels == 16:
        config.latent_format = comfy.latent_formats.SD3()
    elif channels != 4:
        raise ValueError(f"gaussian_prior_model: 4 or 16 channels, got {channels}")
    base = comfy.model_base.BaseModel(config, model_type=comfy.model_base.ModelType.EPS)
    base.diffusion_model = GaussianMMSEDenoiser(mean, var, corr_len=corr_len)
    base.eval()
    return _patcher(base)


# --------------------------------------------------------------------------- files for the server

#: The smallest UNet ComfyUI's detection still recognises as SD2.x (model_channels 320, context
#: 1024, linear transformer projections): one level, one res block, one transformer block.
SD2_DETECTABLE_UNET_CONFIG = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [1], "transformer_depth": [1], "channel_mult": [1], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 1024, "num_heads": -1, "num_head_channels": 64,
    "transformer_depth_output": [1, 1], "use_temporal_attention": False, "use_temporal_resblock": False,
}


def write_tiny_unet_file(path, seed: int = 0) -> dict:
    """A diffusion-model file (``models/diffusion_models/``) that ComfyUI's UNETLoader detects as an
    SD2.x EPS model: SD's block names and widths, one level deep (about 20M parameters, fp16).
    Pairs with the core node LotusConditioning (a (1, 2, 1024) CONDITIONING, no text encoder).
    Returns the state dict written."""
    import comfy.ldm.modules.diffusionmodules.openaimodel as oai
    import comfy.ops
    from safetensors.torch import save_file

    cfg = {k: v for k, v in SD2_DETECTABLE_UNET_CONFIG.items()}
    unet = oai.UNetModel(**cfg, operations=comfy.ops.disable_weight_init)
    seeded_init_(unet, seed, gain=0.5)
    sd = {k: v.detach().to(torch.float16).contiguous() for k, v in unet.state_dict().items()}
    save_file(sd, str(path))
    return sd


def write_tiny_taesd_file(path, seed: int = 0, latent_channels: int = 4) -> dict:
    """A VAE file (``models/vae/``) in TAESD's layout (ComfyUI's VAELoader recognises it by its
    ``taesd_decoder.*`` keys) with seeded weights. Returns the state dict written."""
    import comfy.taesd.taesd as taesd
    from safetensors.torch import save_file

    model = taesd.TAESD(latent_channels=latent_channels)
    seeded_init_(model, seed, gain=1.0)
    with torch.no_grad():
        model.vae_scale.fill_(1.0)
        model.vae_shift.fill_(0.0)
    sd = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(path))
    return sd
