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
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .pose_encoder import PoseEncoder
from .residuals import PoseAdapterMixin
from .trunk import ConditionedTrunk


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


class UniControlNetAdapter(PoseAdapterMixin, ConditionedTrunk, ModelMixin, ConfigMixin):
    """Uni-ControlNet's local adapter for one 3-channel condition (the rendered pose).

    Parameter names of the trunk match UNet2DConditionModel and diffusers' ControlNetModel (`down_blocks.*`,
    `mid_block.*`, `controlnet_down_blocks.*`, `controlnet_mid_block`); the condition path is `feature_extractor.*`
    and each level's `down_blocks[i].resnets[0].norm_in / norm_out`.
    """

    _supports_gradient_checkpointing = True
    conditioned_block = FDNResBlock

    @register_to_config
    def __init__(self, unet_config: dict, stem_channels: Sequence[int] = (32, 64, 128),
                 level_channels: Sequence[int] = (192, 256, 384, 512)):
        super().__init__()
        self._borrow_trunk(unet_config)  # its hint encoder into conv_in is not part of Uni-ControlNet

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

    def encode_pose(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        """The feature extractor's per-level features of a pose image in [-1, 1]. Uni-ControlNet conditions on
        [0, 1] (`image / 255`), so it is rescaled first. Timestep-independent: a sampler computes it once."""
        return self._run(self.feature_extractor, (pose_image + 1) / 2)

