"""The trainable branches: GraphPoseAdapter (GRPose) and the plain ControlNet baseline, both returning 12 + 1
residuals for the frozen UNet's `down_block_additional_residuals` / `mid_block_additional_residual`, and
`build_adapter`, which builds any `model.adapter` (the baselines of paper Table 1 live in their own modules)."""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from ..sd15.configs import vae_downsampling
from .humansd import HumanSDUNet
from .pgi import GRAPH_NAMES, ProgressiveGraphIntegrator
from .pose_encoder import PoseEncoder
from .residuals import PoseAdapterMixin, UNetResiduals
from .stable_pose import StablePoseAdapter
from .t2i_adapter import T2IAdapterBaseline
from .trunk import ConditionedTrunk, copy_matching_weights, encoder_config
from .uni_controlnet import UniControlNetAdapter

Residuals = tuple[list[torch.Tensor], torch.Tensor]
__all__ = ["ControlNetBaseline", "GraphPoseAdapter", "HumanSDUNet", "StablePoseAdapter", "T2IAdapterBaseline",
           "UNetResiduals", "UniControlNetAdapter", "build_adapter", "copy_matching_weights", "count_parameters",
           "encoder_config"]


class GraphPoseAdapter(PoseAdapterMixin, ConditionedTrunk, ModelMixin, ConfigMixin):
    """GRPose's Graph Pose Adapter (paper section 3).

    A copy of the SD1.5 UNet encoder (conv_in, time embedding, 4 down blocks) and middle block. The first ResNet
    block of every level in `pgi_levels` is a ProgressiveGraphIntegrator fed with that level's PoseEncoder
    feature; the pose image does not enter at conv_in. 12 zero 1x1 convs on the encoder skips and one on the
    middle block give the residuals. Parameter names of the trunk match both UNet2DConditionModel and diffusers'
    ControlNetModel (`down_blocks.*`, `mid_block.*`, `controlnet_down_blocks.*`, `controlnet_mid_block`).
    """

    _supports_gradient_checkpointing = True
    conditioned_block = ProgressiveGraphIntegrator

    @register_to_config
    def __init__(self, unet_config: dict, pgi_levels: Sequence[int] = (0, 1, 2, 3),
                 graphs: Sequence[str] = GRAPH_NAMES, graph_type: str = "edgeconv", knn_k: int = 9,
                 positional_encoding: bool = False, edgeconv_groups: int = 4, knn_chunk_mb: float = 256.0,
                 pose_stem_channels: Sequence[int] = (32, 64, 128),
                 pose_level_channels: Sequence[int] = (192, 256, 384, 512)):
        super().__init__()
        # diffusers' ControlNetModel builds exactly the UNet's encoder + mid block + zero convs; borrow them.
        self._borrow_trunk(unet_config)

        self.pose_encoder = PoseEncoder(3, pose_stem_channels, pose_level_channels)
        temb_channels = self.time_embedding.linear_2.out_features
        for level in sorted(set(pgi_levels)):
            if not 0 <= level < len(self.down_blocks):
                raise ValueError(f"pgi_levels entry {level} is not a level of a {len(self.down_blocks)}-level UNet")
            resnet = self.down_blocks[level].resnets[0]
            self.down_blocks[level].resnets[0] = ProgressiveGraphIntegrator(
                in_channels=resnet.conv1.in_channels, out_channels=resnet.conv1.out_channels,
                temb_channels=temb_channels, pose_channels=pose_level_channels[level], graphs=graphs,
                norm_groups=unet_config.get("norm_num_groups", 32), graph_kind=graph_type, k=knn_k,
                edgeconv_groups=edgeconv_groups, positional_encoding=positional_encoding,
                knn_chunk_mb=knn_chunk_mb)

    def encode_pose(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        """The PoseEncoder's per-level features. They do not depend on the timestep, so a sampler computes them
        once per call and passes them to every step instead of the image."""
        return self._run(self.pose_encoder, pose_image)


class ControlNetBaseline(PoseAdapterMixin, ControlNetModel):
    """Plain ControlNet (paper Table 2, first row): hint encoder into conv_in, no PGI, diffusers' own model.

    Our pose images are in [-1, 1]; ControlNet conditions on [0, 1], so the hint is rescaled here.
    """

    def encode_pose(self, pose_image: torch.Tensor) -> torch.Tensor:
        """The pose image itself: ControlNet's hint encoder runs inside diffusers' forward at every step."""
        return pose_image

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pose_image: torch.Tensor, conditioning_scale: float = 1.0) -> Residuals:
        down, mid = super().forward(sample, timestep, encoder_hidden_states,
                                    controlnet_cond=(pose_image.to(sample.dtype) + 1) / 2,
                                    conditioning_scale=conditioning_scale, return_dict=False)
        return list(down), mid


def build_adapter(model_cfg: Any, unet: UNet2DConditionModel, load_weights_from_unet: bool = True) -> nn.Module:
    """The adapter named by `model.adapter` in the config, initialised from (a copy of) the UNet's encoder
    (T2I-Adapter mirrors nothing of the UNet: it keeps its default init)."""
    if model_cfg.adapter == "controlnet":
        return ControlNetBaseline.from_unet(unet, load_weights_from_unet=load_weights_from_unet)
    if model_cfg.adapter == "t2i_adapter":
        return T2IAdapterBaseline.from_unet(unet, vae_downsampling=vae_downsampling(model_cfg.base))
    if model_cfg.adapter == "humansd":  # the whole UNet, conv_in widened for the pose latent
        return HumanSDUNet.from_unet(unet, load_weights_from_unet=load_weights_from_unet)
    if model_cfg.adapter == "uni_controlnet":
        return UniControlNetAdapter.from_unet(
            unet, load_weights_from_unet=load_weights_from_unet, stem_channels=list(model_cfg.pose_stem_channels),
            level_channels=list(model_cfg.pose_level_channels))
    if model_cfg.adapter == "stable_pose":  # one feature extractor stage: level 0's width
        return StablePoseAdapter.from_unet(
            unet, load_weights_from_unet=load_weights_from_unet, stem_channels=list(model_cfg.pose_stem_channels),
            pose_channels=model_cfg.pose_level_channels[0])
    return GraphPoseAdapter.from_unet(
        unet, load_weights_from_unet=load_weights_from_unet,
        pgi_levels=list(model_cfg.pgi_levels), graphs=list(model_cfg.graphs), graph_type=model_cfg.graph_type,
        knn_k=model_cfg.knn_k, positional_encoding=model_cfg.positional_encoding,
        edgeconv_groups=model_cfg.edgeconv_groups, knn_chunk_mb=model_cfg.knn_chunk_mb,
        pose_stem_channels=list(model_cfg.pose_stem_channels),
        pose_level_channels=list(model_cfg.pose_level_channels))


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
