"""SD1.5 from one original (LDM layout) file: v1-5-pruned.safetensors / .ckpt and its fine-tunes, converted to
diffusers modules with diffusers' own conversion functions against the shipped configs."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from transformers import CLIPTextModel

from ..errors import WeightsError
from ..files import read_checkpoint, state_dict_mismatch, state_dict_of
from .configs import (CONFIG_DIR, WEIGHTS_HINT, sd15_config, text_encoder_factory, unet_factory, uses_open_clip,
                      vae_factory)

# Key prefixes of the original LDM single-file layout (v1-5-pruned.ckpt / .safetensors and its fine-tunes).
LDM_UNET_PREFIX = "model.diffusion_model."
LDM_VAE_PREFIX = "first_stage_model."
LDM_TEXT_PREFIX = "cond_stage_model.transformer."
LDM_OPEN_CLIP_PREFIX = "cond_stage_model.model."  # SD2.x: open_clip's text tower (FrozenOpenCLIPEmbedder)
# open_clip tensors SD2.x never uses: the contrastive heads. Its last resblock is dropped by layer count (see below).
_OPEN_CLIP_UNUSED = ("text_projection", "logit_scale")
_RESBLOCK = re.compile(r"^transformer\.resblocks\.(\d+)\.")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors or torch checkpoint (read safely), a top-level "state_dict" unwrapped."""
    return state_dict_of(read_checkpoint(path, hint=WEIGHTS_HINT, can_trust=False), path)


def _require_prefixes(state_dict: dict, prefixes: tuple[str, ...], path: Path, family: str = "SD1.5") -> None:
    missing = [p for p in prefixes if not any(k.startswith(p) for k in state_dict)]
    if missing:
        raise WeightsError(
            f"{path} is not an {family} single-file checkpoint: no keys start with {', '.join(missing)} (expected "
            f"the original LDM layout {', '.join(p + '*' for p in prefixes)}); {WEIGHTS_HINT}."
        )


def _instantiate(factory: Callable[[], torch.nn.Module], state_dict: dict, what: str, source: Path, arch: str):
    """Build a module from `factory` holding exactly `state_dict`, without paying for a random init.

    The module is created on the meta device, the converted keys and shapes are checked against it (a clear error
    for a checkpoint of another architecture), and the tensors are assigned in place.
    """
    with torch.device("meta"):
        model = factory()
    mismatch = state_dict_mismatch(model.state_dict(), state_dict, limit=3)
    if mismatch:
        raise WeightsError(
            f"The {what} weights in {source} do not fit the shipped {arch!r} config ({CONFIG_DIR / arch}): "
            f"{mismatch}. Pass the arch the checkpoint was made for (an SD1.5-derived checkpoint needs arch='sd15')."
        )
    model.load_state_dict({k: v.contiguous() for k, v in state_dict.items()}, strict=True, assign=True)
    _materialise_nonpersistent_buffers(model, what)
    return model


def _materialise_nonpersistent_buffers(model: torch.nn.Module, what: str) -> None:
    """Fill buffers that state dicts never carry (CLIP's position_ids) and are therefore still on the meta device."""
    for name, buf in list(model.named_buffers()):
        if not buf.is_meta:
            continue
        if name.endswith("position_ids"):
            value = torch.arange(buf.shape[-1], dtype=buf.dtype).expand(buf.shape).clone()
        else:
            raise RuntimeError(
                f"The {what} has a buffer {name!r} that its state dict does not carry; grpose.sd15 does not know "
                "how to fill it (a newer diffusers/transformers?)."
            )
        owner_name, _, attr = name.rpartition(".")
        owner = model.get_submodule(owner_name) if owner_name else model
        owner.register_buffer(attr, value, persistent=False)


def _text_encoder_state_dict(checkpoint: dict, model_has_text_model: bool) -> dict:
    """Convert the LDM CLIP keys and match them to the installed transformers' CLIPTextModel key names."""
    converted = convert_ldm_clip_checkpoint(checkpoint)
    out = {}
    for key, value in converted.items():
        # position_ids is a non-persistent buffer in current transformers; old checkpoints still carry it.
        if key.endswith("position_ids"):
            continue
        # Some LDM checkpoints were saved by transformers versions without the `text_model.` wrapper, and
        # transformers 5 removed that wrapper from CLIPTextModel again.
        key = key.removeprefix("text_model.")
        out[f"text_model.{key}" if model_has_text_model else key] = value
    return out


def split_open_clip_state_dict(checkpoint: dict, num_layers: int) -> tuple[dict, list[str]]:
    """SD2.x's OpenCLIP text tower (keys under `cond_stage_model.model.`) -> (the tensors SD2.x runs, unused keys).

    LDM's FrozenOpenCLIPEmbedder(layer="penultimate") runs resblocks 0 .. num_layers-1 and then `ln_final`; the
    remaining resblock(s) and the contrastive heads (`text_projection`, `logit_scale`) are stored but never used.
    """
    kept, unused = {}, []
    for key, value in checkpoint.items():
        if not key.startswith(LDM_OPEN_CLIP_PREFIX):
            continue
        rest = key[len(LDM_OPEN_CLIP_PREFIX):]
        block = _RESBLOCK.match(rest)
        if rest in _OPEN_CLIP_UNUSED or (block and int(block[1]) >= num_layers):
            unused.append(key)
        else:
            kept[key] = value
    return kept, unused


def open_clip_text_state_dict(checkpoint: dict, arch: str) -> dict:
    """SD2.x's OpenCLIP text tower -> the arch's CLIPTextModel state dict (diffusers' own conversion: in_proj split
    into q/k/v, `ln_final` -> `final_layer_norm`), keys matched to the installed transformers' layout."""
    num_layers = sd15_config(arch, "text_encoder")["num_hidden_layers"]
    kept, _ = split_open_clip_state_dict(checkpoint, num_layers)
    with torch.device("meta"):
        model = text_encoder_factory(arch)()
    converted = convert_open_clip_checkpoint(model, kept, prefix=LDM_OPEN_CLIP_PREFIX)
    wrapped = hasattr(model, "text_model")
    return {(k if wrapped else k.removeprefix("text_model.")): v for k, v in converted.items()}


def _has_text_model_wrapper(arch: str) -> bool:
    with torch.device("meta"):
        return hasattr(text_encoder_factory(arch)(), "text_model")


def unet_from_checkpoint(checkpoint: dict, arch: str, source: Path) -> UNet2DConditionModel:
    if any(k.startswith(LDM_UNET_PREFIX) for k in checkpoint):
        # v1-5-pruned holds EMA weights under model_ema.*; like the authors' prepare_weights.py (and ControlNet)
        # we take the non-EMA model.diffusion_model.* weights. Dropping the EMA copy keeps diffusers from warning.
        ldm = {k: v for k, v in checkpoint.items() if k.startswith(LDM_UNET_PREFIX)}
        state_dict = convert_ldm_unet_checkpoint(ldm, sd15_config(arch, "unet"))
    elif "conv_in.weight" in checkpoint and any(k.startswith("down_blocks.") for k in checkpoint):
        state_dict = checkpoint  # a diffusers-format UNet file (diffusion_pytorch_model.safetensors)
    else:
        raise WeightsError(
            f"{source} holds no SD1.5 UNet: expected keys {LDM_UNET_PREFIX}* (original layout) or diffusers UNet "
            f"keys (conv_in.*, down_blocks.*); {WEIGHTS_HINT}."
        )
    return _instantiate(unet_factory(arch), state_dict, "UNet", source, arch)


def parts_from_single_file(path: Path, arch: str) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    return parts_from_ldm_state_dict(read_state_dict(path), arch, path)


def parts_from_ldm_state_dict(
    checkpoint: dict, arch: str, path: Path
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    open_clip = uses_open_clip(arch)
    _require_prefixes(checkpoint, (LDM_UNET_PREFIX, LDM_VAE_PREFIX,
                                   LDM_OPEN_CLIP_PREFIX if open_clip else LDM_TEXT_PREFIX), path,
                      "SD2.x" if open_clip else "SD1.5")
    unet = unet_from_checkpoint(checkpoint, arch, path)
    vae, text_encoder = frozen_parts_from_ldm_state_dict(checkpoint, arch, path)
    return unet, vae, text_encoder


def frozen_parts_from_ldm_state_dict(checkpoint: dict, arch: str, path: Path) -> tuple[AutoencoderKL, CLIPTextModel]:
    """The VAE and text encoder of an LDM-layout state dict (SD1.5's CLIP or SD2.x's OpenCLIP, by arch), strictly."""
    vae_ldm = {k: v for k, v in checkpoint.items() if k.startswith(LDM_VAE_PREFIX)}
    vae = _instantiate(
        vae_factory(arch), convert_ldm_vae_checkpoint(vae_ldm, sd15_config(arch, "vae")), "VAE", path, arch
    )
    if uses_open_clip(arch):
        text_sd = open_clip_text_state_dict(checkpoint, arch)
    else:
        text_ldm = {k: v for k, v in checkpoint.items() if k.startswith(LDM_TEXT_PREFIX)}
        text_sd = _text_encoder_state_dict(text_ldm, _has_text_model_wrapper(arch))
    text_encoder = _instantiate(text_encoder_factory(arch), text_sd, "text encoder", path, arch)
    return vae, text_encoder


