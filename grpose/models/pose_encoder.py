"""PoseEncoder: the rendered skeleton image -> one zero-initialised pose feature per resolution level (paper Fig. 2)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


def zero_module(module: nn.Module) -> nn.Module:
    for parameter in module.parameters():
        nn.init.zeros_(parameter)
    return module


class PoseEncoder(nn.Module):
    """3x3 convs + SiLU: stem 3->s0 -> s1 (stride 2) -> s1 -> s2 (stride 2) -> s2, i.e. the image at 1/4 size,
    then four stride-2 stages to 1/8, 1/16, 1/32, 1/64 of the image (the latent's four UNet levels).

    With the release's sizes (stem 32/64/128, levels 192/256/384/512) a 512x512 pose gives 192@64, 256@32, 384@16 and
    512@8. Every emitted feature passes through its own zero-initialised 3x3 conv, so at initialisation all pose
    features are exactly zero; the chain continues from the features before that conv.
    """

    def __init__(self, in_channels: int = 3, stem_channels: Sequence[int] = (32, 64, 128),
                 level_channels: Sequence[int] = (192, 256, 384, 512)):
        super().__init__()
        s0, s1, s2 = stem_channels
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, s0, 3, padding=1), nn.SiLU(),
            nn.Conv2d(s0, s1, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(s1, s1, 3, padding=1), nn.SiLU(),
            nn.Conv2d(s1, s2, 3, padding=1, stride=2), nn.SiLU(),
            nn.Conv2d(s2, s2, 3, padding=1), nn.SiLU(),
        )
        channels = [s2, *level_channels]
        self.stages = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels[i], channels[i + 1], 3, padding=1, stride=2), nn.SiLU())
            for i in range(len(level_channels))
        )
        self.zero_convs = nn.ModuleList(
            zero_module(nn.Conv2d(c, c, 3, padding=1)) for c in level_channels
        )

    def forward(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        h = self.stem(pose_image)
        features = []
        for stage, zero_conv in zip(self.stages, self.zero_convs):
            h = stage(h)
            features.append(zero_conv(h))
        return features
