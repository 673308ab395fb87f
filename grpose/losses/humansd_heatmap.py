"""HumanSD's heatmap-guided denoising loss (HumanSD paper section 4.2, eq. 6) in two variants: `code`, as HumanSD's
released training code computes it, and `paper`, as the paper describes it. docs/baselines.md explains both.

Both start alike, without gradient: the noise-prediction error eps_hat - eps is decoded by the frozen VAE as if it
were a latent, mapped to [0, 1], and a frozen pose heatmap network (HigherHRNet) gives per-joint heatmaps H of it.

- `code`:  W = scale * VAE.encode(S).sample(), where S = sum over joints of [H <= threshold] (the number of joints
  whose heatmap is low at a pixel: large *off* the keypoints), bicubically resized to the image size and given to
  the VAE as a 3-channel "image" of values 0..17. loss = mean((eps_hat - eps)^2 * (1 + weight * W)).
- `paper`: W_a = 1 + weight * A, where A = max over joints of H clipped to [0, 1] (large *at* the keypoints),
  area-averaged to the latent grid and shared by the latent channels. loss = mean((W_a * (eps_hat - eps))^2):
  W_a sits inside the norm, as in eq. 6.

Gradients flow only through (eps_hat - eps)^2; the weights are constants of the step.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingFileError

HEATMAP_VARIANTS = ("none", "code", "paper")


class HeatmapGuidedLoss(nn.Module):
    """Per-sample heatmap-guided epsilon loss, [B]. `heatmaps`: images in [0, 1] -> B x K x h x w heatmaps (a
    `grpose.eval.pose_estimator.PoseHeatmaps`, or any module with that contract)."""

    def __init__(self, heatmaps: nn.Module, variant: str = "code", weight: float = 0.1, threshold: float = 0.05):
        super().__init__()
        if variant not in HEATMAP_VARIANTS[1:]:
            raise ConfigError(f"loss.humansd_heatmap.variant={variant!r} is not one of code, paper (or none, which "
                              "builds no loss)")
        if weight < 0:
            raise ConfigError(f"loss.humansd_heatmap.weight must be >= 0, got {weight}")
        self.heatmaps = heatmaps
        self.variant = variant
        self.weight = float(weight)
        self.threshold = float(threshold)

    @torch.no_grad()
    def error_heatmaps(self, error: torch.Tensor, vae: nn.Module, scale: float) -> torch.Tensor:
        """The heatmaps of the decoded noise-prediction error: clamp((decode(error / scale) + 1) / 2, 0, 1) -> H."""
        decoded = vae.decode((error / scale).to(vae.dtype)).sample.float()
        return self.heatmaps(((decoded + 1) / 2).clamp(0, 1)).float()

    @torch.no_grad()
    def code_weight(self, heatmaps: torch.Tensor, image_size: tuple[int, int], vae: nn.Module, scale: float,
                    generator: Any = None) -> torch.Tensor:
        """W of the `code` variant: the VAE latent of the count of below-threshold joints, B x 4 x h x w."""
        count = (heatmaps <= self.threshold).float().sum(dim=1, keepdim=True)
        count = F.interpolate(count.repeat(1, 3, 1, 1), size=image_size, mode="bicubic", align_corners=False)
        return vae.encode(count.to(vae.dtype)).latent_dist.sample(generator).float() * scale

    @torch.no_grad()
    def paper_weight(self, heatmaps: torch.Tensor, latent_size: tuple[int, int]) -> torch.Tensor:
        """W_a of the `paper` variant: 1 + weight * (joint-max heatmap on the latent grid), B x 1 x h x w."""
        aggregated = heatmaps.clamp(0, 1).amax(dim=1, keepdim=True)
        return 1 + self.weight * F.adaptive_avg_pool2d(aggregated, latent_size)

    def forward(self, noise_pred: torch.Tensor, noise: torch.Tensor, vae: nn.Module, scale: float,
                generator: Any = None) -> torch.Tensor:
        """`noise_pred`, `noise`: B x 4 x h x w; `vae`: the frozen base VAE, `scale` its latent scaling factor;
        `generator`: the `code` variant's posterior noise. -> per-sample loss [B]."""
        error = noise_pred.float() - noise.float()
        heatmaps = self.error_heatmaps(error.detach(), vae, scale)
        if self.variant == "code":
            factor = 1 + self.weight * self.code_weight(heatmaps, _image_size(vae, error), vae, scale, generator)
            weighted = error ** 2 * factor
        else:
            weighted = (self.paper_weight(heatmaps, tuple(error.shape[-2:])) * error) ** 2
        return weighted.mean(dim=(1, 2, 3))


def _image_size(vae: nn.Module, latents: torch.Tensor) -> tuple[int, int]:
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    return latents.shape[-2] * factor, latents.shape[-1] * factor


def build_heatmap_guided_loss(cfg: Any) -> Optional[HeatmapGuidedLoss]:
    """The loss of the `loss.humansd_heatmap` config section, or None for variant `none` (which never imports
    mmpose). `network_checkpoint: null` builds a randomly initialised heatmap network (tests only)."""
    if cfg.variant == "none":
        return None
    from grpose.eval.pose_estimator import PoseHeatmaps, checkpoint_hint, resolve_mmpose_config

    config_path = resolve_mmpose_config(cfg.network_config)
    checkpoint = cfg.network_checkpoint
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise MissingFileError(
            f"loss.humansd_heatmap.network_checkpoint: {checkpoint} does not exist. Download "
            f"{checkpoint_hint(config_path)} to that path, or set loss.humansd_heatmap.network_checkpoint to where "
            "it is.")
    return HeatmapGuidedLoss(PoseHeatmaps(config_path, checkpoint), variant=cfg.variant, weight=cfg.weight,
                             threshold=cfg.threshold)
