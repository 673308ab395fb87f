"""SD1.5 from a diffusers folder (unet/, vae/, text_encoder/, tokenizer/), checked against the shipped config of the
arch the rest of the experiment is configured for."""

from __future__ import annotations

from pathlib import Path

from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextModel

from ..errors import MissingFileError, WeightsError
from ..files import first_line
from .configs import WEIGHTS_HINT, sd15_config

# Fields that decide whether a stored model is the architecture the rest of grpose was configured for.
_STRUCTURE_KEYS = {
    "unet": ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types", "in_channels",
             "attention_head_dim", "use_linear_projection"),
    "vae": ("block_out_channels", "latent_channels", "down_block_types"),
    "text_encoder": ("hidden_size", "num_hidden_layers", "vocab_size", "max_position_embeddings", "hidden_act"),
}


def _check_structure(part: str, stored: dict, arch: str, source: Path) -> None:
    shipped = sd15_config(arch, part)
    for key in _STRUCTURE_KEYS[part]:
        have, want = stored.get(key), shipped[key]
        if isinstance(have, (list, tuple)):
            have = list(have)
        if have != want:
            raise WeightsError(
                f"The {part} in {source} has {key}={have}, but arch {arch!r} expects {want}; pass the arch the "
                "weights were made for (an SD1.5-derived model needs arch='sd15')."
            )


def _require_subfolders(folder: Path, names: tuple[str, ...]) -> None:
    missing = [f"{n}/config.json" for n in names if not (folder / n / "config.json").is_file()]
    if missing:
        raise MissingFileError(
            f"{folder} is not a complete diffusers SD1.5 folder: missing {', '.join(missing)} "
            f"(expected unet/, vae/, text_encoder/, tokenizer/); {WEIGHTS_HINT}."
        )


def load_diffusers_unet(folder: Path, arch: str) -> UNet2DConditionModel:
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"Cannot load a diffusers UNet from {folder}: {first_line(e)}") from None
    _check_structure("unet", dict(unet.config), arch, folder)
    return unet


def parts_from_diffusers_folder(folder: Path, arch: str):
    _require_subfolders(folder, ("unet", "vae", "text_encoder"))
    unet = load_diffusers_unet(folder / "unet", arch)
    try:
        vae = AutoencoderKL.from_pretrained(str(folder / "vae"), local_files_only=True)
        text_encoder = CLIPTextModel.from_pretrained(str(folder / "text_encoder"), local_files_only=True)
    except (OSError, ValueError) as e:
        raise WeightsError(f"Cannot load the SD1.5 parts in {folder}: {first_line(e)}") from None
    _check_structure("vae", dict(vae.config), arch, folder / "vae")
    _check_structure("text_encoder", text_encoder.config.to_dict(), arch, folder / "text_encoder")
    return unet, vae, text_encoder


