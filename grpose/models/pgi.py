"""Progressive Graph Integrator: the block that replaces the first ResNet block of a UNet level (paper section 3.2)."""

from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from .gcn import GraphConv
from .pose_encoder import zero_module

GRAPH_NAMES = ("latent", "pose", "fuse")


class GraphFusion(nn.Module):
    """The paper's fusion of latent and pose features: 1x1 conv of each to C, concatenate, 1x1 conv 2C -> C."""

    def __init__(self, channels: int):
        super().__init__()
        self.latent_proj = nn.Conv2d(channels, channels, 1)
        self.pose_proj = nn.Conv2d(channels, channels, 1)
        self.out_proj = nn.Conv2d(2 * channels, channels, 1)

    def forward(self, latent: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        return self.out_proj(torch.cat([self.latent_proj(latent), self.pose_proj(pose)], dim=1))


class ProgressiveGraphIntegrator(nn.Module):
    """PGI(x, temb, pose) (paper section 3.2; docs/release_differences.md):

        h = GroupNorm(conv1(SiLU(x)) + time_emb_proj(SiLU(temb)))      GroupNorm without affine parameters
        c = pose_conv(pose)
        h, c = G_latent(h), G_pose(c)                                   two separate KNN graphs
        f = G_fuse(Fuse(h, c))
        out = shortcut(x) + zero_conv(f)

    `conv1`, `time_emb_proj` and `conv_shortcut` keep the names of diffusers' ResnetBlock2D so the SD1.5 weights
    of the block it replaces copy over by name; `conv_out` is zero-initialised, so at initialisation the PGI
    returns exactly shortcut(x). `graphs` selects which graph convolutions are active (the #Graph ablation,
    paper Table 4); an inactive one is the identity.
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, pose_channels: int,
                 graphs: Iterable[str] = GRAPH_NAMES, norm_groups: int = 32, graph_kind: str = "edgeconv",
                 k: int = 9, edgeconv_groups: int = 4, positional_encoding: bool = False,
                 knn_chunk_mb: float = 256.0):
        super().__init__()
        graphs = tuple(graphs)
        unknown = set(graphs) - set(GRAPH_NAMES)
        if unknown:
            raise ValueError(f"unknown graph names {sorted(unknown)}; choose from {GRAPH_NAMES}")
        self.nonlinearity = nn.SiLU()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.norm = nn.GroupNorm(norm_groups, out_channels, affine=False)
        self.pose_conv = nn.Conv2d(pose_channels, out_channels, 3, padding=1)

        def graph(name: str) -> nn.Module:
            if name not in graphs:
                return nn.Identity()
            return GraphConv(out_channels, k=k, kind=graph_kind, groups=edgeconv_groups,
                             positional_encoding=positional_encoding, chunk_mb=knn_chunk_mb)

        self.graph_latent = graph("latent")
        self.graph_pose = graph("pose")
        self.fuse = GraphFusion(out_channels)
        self.graph_fuse = graph("fuse")
        self.conv_out = zero_module(nn.Conv2d(out_channels, out_channels, 3, padding=1))
        self.conv_shortcut: Optional[nn.Conv2d] = (
            nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, pose: torch.Tensor) -> torch.Tensor:
        h = self.conv1(self.nonlinearity(x))
        h = h + self.time_emb_proj(self.nonlinearity(temb))[:, :, None, None]
        h = self.graph_latent(self.norm(h))
        c = self.graph_pose(self.pose_conv(pose))
        fused = self.graph_fuse(self.fuse(h, c))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + self.conv_out(fused)
