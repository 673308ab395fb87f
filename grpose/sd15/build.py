"""The frozen SD1.5 parts and how they are built: random (reproducible per arch), from a diffusers folder or from
an original single file, fully offline; plus prompt encoding, which every user of the parts shares."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel, CLIPTokenizer

from ..errors import MissingFileError
from ..precision import cast_module
from .configs import (WEIGHTS_HINT, sd15_config, text_encoder_factory, tokenizer_settings, unet_factory,
                      vae_factory, weights_hint)
from .diffusers_folder import load_diffusers_unet, parts_from_diffusers_folder
from .single_file import parts_from_single_file, read_state_dict, unet_from_checkpoint
from .tokenizer import make_tokenizer


@dataclass
class StableDiffusionParts:
    """The four frozen SD1.5 components plus the VAE latent scale."""

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    vae_scale_factor: float = 0.18215



def _freeze(module: torch.nn.Module) -> torch.nn.Module:
    module.requires_grad_(False)
    module.eval()
    return module


def _existing_path(weights: str, arch: str = "sd15") -> Path:
    path = Path(weights).expanduser()
    if not path.exists():
        family = "SD2.1-base" if weights_hint(arch) != WEIGHTS_HINT else "SD1.5"
        raise MissingFileError(f"{family} weights not found at {path}: {weights_hint(arch)}.")
    return path


RANDOM_INIT_SEED = 0


def build_sd15(arch: str = "sd15", weights: str | None = None, torch_dtype=torch.float32) -> StableDiffusionParts:
    """Build the frozen SD1.5 parts, fully offline.

    `weights` None gives random init (benchmarks, tests, the demo), always the same for a given `arch` (seed
    RANDOM_INIT_SEED, the global RNG untouched), so a run trained on a random base can be evaluated and sampled
    later on the identical base; otherwise a diffusers folder (unet/, vae/, text_encoder/,
    tokenizer/) or an original single-file checkpoint (.safetensors / .ckpt, keys model.diffusion_model.*,
    first_stage_model.*, cond_stage_model.transformer.* for SD1.5 or cond_stage_model.model.* for SD2.x's OpenCLIP),
    converted against the shipped `arch` configs.
    """
    sd15_config(arch, "unet")  # validates arch before any heavy work
    tokenizer_dir = None
    if weights is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_INIT_SEED)
            unet = unet_factory(arch)()
            vae = vae_factory(arch)()
            text_encoder = text_encoder_factory(arch)()
    else:
        path = _existing_path(weights, arch)
        if path.is_dir():
            unet, vae, text_encoder = parts_from_diffusers_folder(path, arch)
            if (path / "tokenizer").is_dir():
                tokenizer_dir = str(path / "tokenizer")
        else:
            unet, vae, text_encoder = parts_from_single_file(path, arch)
    parts = StableDiffusionParts(
        unet=_freeze(cast_module(unet, torch_dtype)),
        vae=_freeze(cast_module(vae, torch_dtype)),
        text_encoder=_freeze(cast_module(text_encoder, torch_dtype)),
        tokenizer=make_tokenizer(tokenizer_dir, **tokenizer_settings(arch)),
        vae_scale_factor=float(vae.config.scaling_factor),
    )
    return parts


def load_unet(weights: str, arch: str = "sd15") -> UNet2DConditionModel:
    """Load (frozen) any SD1.5-compatible UNet, e.g. a community fine-tune for paper Fig. 5.

    Accepts an original single file (only model.diffusion_model.* is needed), a diffusers UNet file
    (diffusion_pytorch_model.safetensors), a diffusers UNet folder, or a diffusers pipeline folder with unet/.
    Returned in float32 whatever the file stores; cast it with `.to()` next to the other parts.
    """
    path = _existing_path(weights, arch)
    if path.is_dir():
        if (path / "unet" / "config.json").is_file():
            path = path / "unet"
        elif not (path / "config.json").is_file():
            raise MissingFileError(
                f"{path} is neither a diffusers pipeline folder (unet/config.json) nor a UNet folder (config.json); "
                f"{WEIGHTS_HINT}."
            )
        unet = load_diffusers_unet(path, arch)
    else:
        unet = unet_from_checkpoint(read_state_dict(path), arch, path)
    return _freeze(cast_module(unet, torch.float32))



def encode_prompts(parts: StableDiffusionParts, prompts: list[str]) -> torch.Tensor:
    """Text conditioning [B, 77, D]: the CLIP text encoder's last hidden state over 77 padded tokens."""
    if isinstance(prompts, str):
        raise TypeError("encode_prompts() takes a list of prompts, not a single string.")
    ids = parts.tokenizer(
        list(prompts),
        padding="max_length",
        max_length=parts.tokenizer.model_max_length,
        truncation=True,
        return_tensors="pt",
    ).input_ids
    device = next(parts.text_encoder.parameters()).device
    # No attention mask: SD1.5 was trained with padding tokens visible to the encoder (LDM FrozenCLIPEmbedder).
    with torch.no_grad():
        return parts.text_encoder(ids.to(device)).last_hidden_state

