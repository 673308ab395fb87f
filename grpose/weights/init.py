"""Initial adapter weights from the SD1.5 UNet (prepare_weights.py and every new training run)."""

from __future__ import annotations

from diffusers import UNet2DConditionModel
from omegaconf import DictConfig
from torch import nn

from ..models.adapter import build_adapter, copy_matching_weights


def init_adapter_from_unet(model_cfg: DictConfig, unet: UNet2DConditionModel) -> tuple[nn.Module, dict[str, list[str]]]:
    """The configured adapter with every tensor that mirrors the UNet (same key and shape) copied from it: conv_in,
    time embedding, down blocks, mid block, and in each PGI conv1 / time_emb_proj / conv_shortcut. Everything else
    keeps its designed init (zero convs stay zero). Returns (adapter, report) with report = {"copied", "new",
    "mismatched"} key lists."""
    adapter = build_adapter(model_cfg, unet, load_weights_from_unet=False)
    return adapter, copy_matching_weights(adapter, unet.state_dict())
