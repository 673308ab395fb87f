"""The UNet-mirroring trunk that ControlNet-style adapters share: which UNet config fields shape it, and copying the
UNet's weights into it."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# UNet2DConditionModel config keys that shape the encoder half; everything else (up blocks, ...) is irrelevant.
_ENCODER_KEYS = (
    "in_channels", "flip_sin_to_cos", "freq_shift", "down_block_types", "only_cross_attention",
    "block_out_channels", "layers_per_block", "downsample_padding", "mid_block_scale_factor", "act_fn",
    "norm_num_groups", "norm_eps", "cross_attention_dim", "attention_head_dim", "num_attention_heads",
    "use_linear_projection", "upcast_attention", "resnet_time_scale_shift", "transformer_layers_per_block",
)


def encoder_config(unet_config: Any) -> dict:
    """The subset of a UNet config that determines its encoder (and so the adapter's trunk)."""
    return {key: unet_config[key] for key in _ENCODER_KEYS if key in unet_config}


def copy_matching_weights(module: nn.Module, source: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Copy every tensor of `module` whose key and shape exist in `source` (a UNet state dict: adapter names
    mirror it); the rest keeps its designed init (zero convs stay zero). Returns {"copied", "new", "mismatched"}."""
    report: dict[str, list[str]] = {"copied": [], "new": [], "mismatched": []}
    updates = {}
    for key, tensor in module.state_dict().items():
        if key not in source:
            report["new"].append(key)
        elif source[key].shape != tensor.shape:
            report["mismatched"].append(key)
        else:
            updates[key] = source[key]
            report["copied"].append(key)
    module.load_state_dict(updates, strict=False)
    return report


def to_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple)) else value
