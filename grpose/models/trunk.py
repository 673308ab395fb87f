"""The UNet-mirroring trunk that ControlNet-style adapters share: which UNet config fields shape it, copying the
UNet's weights into it, and its forward pass with pose features entering the first ResNet block of each level."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import ControlNetModel
from torch import nn

from .checkpointing import checkpoint_module

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


class ConditionedTrunk:
    """Mixin of GraphPoseAdapter and UniControlNetAdapter: a copy of the UNet's encoder (conv_in, time embedding,
    down blocks, mid block) and ControlNet's 12 + 1 zero convs, in which the blocks of type `conditioned_block`
    take the level's pose feature as a third argument. Parameter names match UNet2DConditionModel and diffusers'
    ControlNetModel. Subclasses set `conditioned_block` and define `encode_pose`."""

    conditioned_block: type  # the blocks that take the level's pose feature

    def _borrow_trunk(self, unet_config: dict) -> None:
        """Take the encoder, mid block and zero convs from a diffusers ControlNetModel built from `unet_config`;
        its hint encoder into conv_in is dropped."""
        trunk = ControlNetModel(**{k: to_list(v) for k, v in unet_config.items()})
        self.conv_in = trunk.conv_in
        self.time_proj = trunk.time_proj
        self.time_embedding = trunk.time_embedding
        self.down_blocks = trunk.down_blocks
        self.mid_block = trunk.mid_block
        self.controlnet_down_blocks = trunk.controlnet_down_blocks
        self.controlnet_mid_block = trunk.controlnet_mid_block
        self.gradient_checkpointing = False

    @classmethod
    def from_unet(cls, unet, load_weights_from_unet: bool = True, **adapter_kwargs):
        """Build from a UNet's config and copy every weight that mirrors it; `copy_matching_weights` gives the key
        report."""
        adapter = cls(unet_config=encoder_config(unet.config), **adapter_kwargs)
        if load_weights_from_unet:
            copy_matching_weights(adapter, unet.state_dict())
        return adapter

    def _run(self, module: nn.Module, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint_module(module, *args, **kwargs)
        return module(*args, **kwargs)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pose_image: torch.Tensor | list[torch.Tensor], conditioning_scale: float = 1.0
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """sample: noisy latent B x 4 x h x w; pose_image: B x 3 x 8h x 8w in [-1, 1], or `encode_pose` of it.
        Returns the 12 down residuals and the mid residual, times `conditioning_scale`."""
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        features = (self.encode_pose(pose_image.to(sample.dtype)) if torch.is_tensor(pose_image)
                    else [f.to(sample.dtype) for f in pose_image])

        h = self.conv_in(sample)
        skips = [h]
        for level, block in enumerate(self.down_blocks):
            attentions = getattr(block, "attentions", None)
            for i, resnet in enumerate(block.resnets):
                if isinstance(resnet, self.conditioned_block):
                    h = self._run(resnet, h, temb, features[level])
                else:
                    h = self._run(resnet, h, temb)
                if attentions is not None:
                    h = self._run(attentions[i], h, encoder_hidden_states=encoder_hidden_states,
                                  return_dict=False)[0]
                skips.append(h)
            for downsampler in block.downsamplers or []:
                h = downsampler(h)
                skips.append(h)
        h = self._run(self.mid_block, h, temb, encoder_hidden_states=encoder_hidden_states)

        down = [zero_conv(skip) * conditioning_scale for zero_conv, skip in zip(self.controlnet_down_blocks, skips)]
        return down, self.controlnet_mid_block(h) * conditioning_scale
