"""Uni-ControlNet's local control adapter (Zhao et al. 2023) with the pose as its only local condition.

A ControlNet-style trainable copy of the UNet encoder and middle block, initialised from the UNet. The condition does
not enter at conv_in: a feature extractor (the same stem + four stride-2 stages with zero 3x3 convs as GRPose's
PoseEncoder) gives one feature per level, and the first ResNet block of each level becomes an `FDNResBlock` whose
two normalisations are feature denormalisations (FDN) driven by that feature. 12 + 1 zero 1x1 convs give the
residuals for `down_block_additional_residuals` / `mid_block_additional_residual`, exactly as ControlNet's.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .checkpointing import checkpoint_module
from .pose_encoder import PoseEncoder
from .residuals import PoseAdapterMixin
from .trunk import copy_matching_weights, encoder_config, to_list


class FeatureDenormalization(nn.Module):
    """FDN (Uni-ControlNet section 3.2): GroupNorm without affine parameters, then a per-pixel scale and shift
    predicted from the condition feature, `norm(x) * (1 + conv_gamma(c)) + conv_beta(c)`, both 3x3 convs.

    The condition feature already has `x`'s resolution (the feature extractor emits one per UNet level).
    """

    def __init__(self, channels: int, condition_channels: int, groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels, eps=eps, affine=False)
        self.conv_gamma = nn.Conv2d(condition_channels, channels, 3, padding=1)
        self.conv_beta = nn.Conv2d(condition_channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        if condition.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"FDN condition feature is {tuple(condition.shape[-2:])}, the latent feature "
                             f"{tuple(x.shape[-2:])}: they must have the same size")
        return self.norm(x) * (1 + self.conv_gamma(condition)) + self.conv_beta(condition)


class FDNResBlock(nn.Module):
    """A UNet ResNet block whose two GroupNorms are FDNs (Uni-ControlNet's LocalResBlock):
    FDN_in(x, c) -> SiLU -> conv1 -> + time_emb_proj(SiLU(temb)) -> FDN_out(h, c) -> SiLU -> conv2 -> + shortcut(x).

    conv1 / time_emb_proj / conv2 / conv_shortcut carry diffusers' ResnetBlock2D names, so they are initialised
    from the UNet block they replace (conv2 included: it gets SD's weights, not zeros, as in the original).
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, condition_channels: int,
                 groups: int = 32, eps: float = 1e-5):
        super().__init__()
        self.norm_in = FeatureDenormalization(in_channels, condition_channels, groups, eps)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm_out = FeatureDenormalization(out_channels, condition_channels, groups, eps)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm_in(x, condition)))
        h = h + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.conv2(F.silu(self.norm_out(h, condition)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


class UniControlNetAdapter(PoseAdapterMixin, ModelMixin, ConfigMixin):
    """Uni-ControlNet's local adapter for one 3-channel condition (the rendered pose).

    Parameter names of the trunk match UNet2DConditionModel and diffusers' ControlNetModel (`down_blocks.*`,
    `mid_block.*`, `controlnet_down_blocks.*`, `controlnet_mid_block`); the condition path is `feature_extractor.*`
    and each level's `down_blocks[i].resnets[0].norm_in / norm_out`.
    """

    _supports_gradient_checkpointing = True

    @register_to_config
    def __init__(self, unet_config: dict, stem_channels: Sequence[int] = (32, 64, 128),
                 level_channels: Sequence[int] = (192, 256, 384, 512)):
        super().__init__()
        trunk = ControlNetModel(**{k: to_list(v) for k, v in unet_config.items()})
        self.conv_in = trunk.conv_in
        self.time_proj = trunk.time_proj
        self.time_embedding = trunk.time_embedding
        self.down_blocks = trunk.down_blocks
        self.mid_block = trunk.mid_block
        self.controlnet_down_blocks = trunk.controlnet_down_blocks
        self.controlnet_mid_block = trunk.controlnet_mid_block
        del trunk  # its hint encoder into conv_in is not part of Uni-ControlNet

        if len(level_channels) != len(self.down_blocks):
            raise ValueError(f"level_channels needs one entry per UNet level ({len(self.down_blocks)}), "
                             f"got {list(level_channels)}")
        self.feature_extractor = PoseEncoder(3, stem_channels, level_channels)
        temb_channels = self.time_embedding.linear_2.out_features
        for level, block in enumerate(self.down_blocks):
            resnet = block.resnets[0]
            block.resnets[0] = FDNResBlock(
                resnet.conv1.in_channels, resnet.conv1.out_channels, temb_channels, level_channels[level],
                groups=unet_config.get("norm_num_groups", 32), eps=unet_config.get("norm_eps", 1e-5))
        self.gradient_checkpointing = False

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, load_weights_from_unet: bool = True,
                  **adapter_kwargs) -> "UniControlNetAdapter":
        """Build from a UNet's config and copy every weight that mirrors it (the original's `init_local`)."""
        adapter = cls(unet_config=encoder_config(unet.config), **adapter_kwargs)
        if load_weights_from_unet:
            copy_matching_weights(adapter, unet.state_dict())
        return adapter

    def _run(self, module: nn.Module, *args, **kwargs):
        if self.gradient_checkpointing and torch.is_grad_enabled():
            return checkpoint_module(module, *args, **kwargs)
        return module(*args, **kwargs)

    def encode_pose(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        """The feature extractor's per-level features of a pose image in [-1, 1]. Uni-ControlNet conditions on
        [0, 1] (`image / 255`), so it is rescaled first. Timestep-independent: a sampler computes it once."""
        return self._run(self.feature_extractor, (pose_image + 1) / 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pose_image: torch.Tensor | list[torch.Tensor], conditioning_scale: float = 1.0
                ) -> tuple[list[torch.Tensor], torch.Tensor]:
        """sample: noisy latent B x 4 x h x w; pose_image: B x 3 x 8h x 8w in [-1, 1], or `encode_pose` of it."""
        timesteps = torch.as_tensor(timestep, device=sample.device).reshape(-1).expand(sample.shape[0])
        temb = self.time_embedding(self.time_proj(timesteps).to(sample.dtype))
        features = (self.encode_pose(pose_image.to(sample.dtype)) if torch.is_tensor(pose_image)
                    else [f.to(sample.dtype) for f in pose_image])

        h = self.conv_in(sample)
        skips = [h]
        for level, block in enumerate(self.down_blocks):
            attentions = getattr(block, "attentions", None)
            for i, resnet in enumerate(block.resnets):
                if isinstance(resnet, FDNResBlock):
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
