"""The INN architectures the benchmarks time (`--inn`).

paper:   the core's "latent-paper" and "pixel-paper" presets (the sizes read from the paper);
shipped: the architectures of the pack's bundled INN files (models/indigo-latent-inn.safetensors,
         models/indigo-pixel-inn-x4.safetensors), i.e. what a user of the defaults runs.
Weights are seeded random either way: the cost of a network does not depend on its values.
"""

from __future__ import annotations

INN_CHOICES = ("paper", "shipped")


def inn_configs(module, choice: str) -> dict[str, tuple[object, str]]:
    """{"latent"|"pixel": (INNConfig, label)}; `module(name)` imports a pack module by name."""
    core = module("indigo_core")
    names = module("indigo_core.inn").PRESET_NAMES
    if choice == "paper":
        return {d: (core.INNConfig.preset(f"{d}-paper"), f"{d}-paper") for d in ("latent", "pixel")}
    if choice != "shipped":
        raise SystemExit(f"--inn: expected one of {INN_CHOICES}, got {choice!r}")
    bundled = module("indigo_core.restore.bundled")
    read = module("indigo_core.io").read_inn_config
    out = {}
    for domain, name in (("latent", bundled.LATENT_INN), ("pixel", bundled.PIXEL_INN)):
        path = bundled.bundled_path(name)
        cfg = read(path)
        preset = next((p for p in names if core.INNConfig.preset(p) == cfg), "custom")
        out[domain] = (cfg, f"{preset} ({path.name})")
    return out
