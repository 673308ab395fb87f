"""Diffusion loss: epsilon MSE (paper eq. 1) with the release's optional pose-region reweighting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchvision.transforms.functional import gaussian_blur

from ..errors import ConfigError

# A blurred black (-1) background can land a hair above -1 in float32, so a pixel
# counts as skeleton only clearly above it.
_BACKGROUND_MARGIN = 1e-3


def pose_region_mask(pose_image: torch.Tensor, latent_size: tuple[int, int], kernel_size: int = 13,
                     sigma: float = 3.0) -> torch.Tensor:
    """B x 1 x h x w binary mask of the latent cells covered by the skeleton dilated with a Gaussian blur.

    pose_image: B x 3 x H x W in [-1, 1] on a -1 background. A latent cell is on when any pixel of its H/h x W/w
    patch, in any channel, is above the background after the blur (the release's k=13, sigma=3 mask).
    """
    blurred = gaussian_blur(pose_image.float(), [kernel_size, kernel_size], [sigma, sigma])
    covered = (blurred > -1 + _BACKGROUND_MARGIN).any(dim=1, keepdim=True).float()
    return (F.adaptive_max_pool2d(covered, latent_size) > 0).to(pose_image.dtype)


def diffusion_loss(noise_pred: torch.Tensor, noise: torch.Tensor, region_mask: torch.Tensor | None = None,
                   region_weight: float = 1.0) -> torch.Tensor:
    """Per-sample epsilon MSE, [B]. With a mask, cells inside it weigh `region_weight` and the rest 1
    (mean over c, h, w of (w M + (1 - M)) * (eps_hat - eps)^2, docs/release_differences.md)."""
    error = (noise_pred.float() - noise.float()) ** 2
    if region_mask is not None and region_weight != 1.0:
        mask = region_mask.float()
        error = error * (region_weight * mask + (1.0 - mask))
    return error.mean(dim=(1, 2, 3))


TIMESTEP_SAMPLINGS = ("uniform", "cubic")


def sample_timesteps(batch_size: int, num_train_timesteps: int, sampling: str = "uniform",
                     generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training timesteps, [B] int64 in [0, T).

    ``uniform``: t ~ U{0..T-1}, SD's and the paper's objective (eq. 1). ``cubic``: t = floor((1 - u^3) T) with
    u ~ U(0, 1), T2I-Adapter's non-uniform sampling (T2I-Adapter paper, section 3.4): P(t > T/2) = 0.79 instead of
    0.5, so an adapter spends most of its updates on the noisy steps where the layout, and so the pose, is decided.
    """
    if sampling == "uniform":
        return torch.randint(0, num_train_timesteps, (batch_size,), generator=generator, device=device)
    if sampling == "cubic":
        u = torch.rand(batch_size, generator=generator, device=device)
        return ((1 - u ** 3) * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)
    raise ConfigError(f"loss.timesteps={sampling!r} is not one of {', '.join(TIMESTEP_SAMPLINGS)}")
