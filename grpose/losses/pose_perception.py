"""Pose perception loss L_p (paper section 3.3, eq. 9-10): feature MSE of a frozen pose network between the
decoded prediction x0_hat and the ground-truth image, plus the "gradual constraint" schedule that turns it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn
from ..errors import ConfigError, MissingFileError


class PosePerceptionLoss(nn.Module):
    """alpha * L_p per sample, with L_p = mean over compared features of mean((phi(x0_hat) - phi(x0))^2).

    The mean runs over channels too, as in the release; the paper's eq. 9 sums the
    channels (a squared L2 norm per position) and averages over positions only, i.e. C times larger.

    `backbone` maps B x 3 x H x W RGB images in [-1, 1] to a list of feature maps (`PoseBackbone`); it is
    frozen and kept in eval mode. Ground-truth features are computed without gradient; the prediction's
    features carry gradient back to `pred_images` (and through the VAE decode to the adapter), unlike the
    released code, whose L_p was computed on detached numpy images (docs/release_differences.md).

    alpha_bar_weight: also multiply by alpha_bar_t, as the release does (not in the paper).
    max_timestep: samples with t >= max_timestep get no L_p (x0_hat is mostly noise there).
    faithful_release: reproduce the release: same value, but the prediction is detached, so no gradient.
    """

    def __init__(self, backbone: nn.Module, alpha: float = 0.01, alpha_bar_weight: bool = False,
                 max_timestep: Optional[int] = None, faithful_release: bool = False):
        super().__init__()
        if alpha < 0:
            raise ValueError(f"PosePerceptionLoss: alpha must be >= 0, got {alpha}")
        if max_timestep is not None and max_timestep < 1:
            raise ValueError(f"PosePerceptionLoss: max_timestep must be >= 1 (or None), got {max_timestep}")
        backbone.requires_grad_(False)
        self.backbone = backbone.eval()
        self.alpha = float(alpha)
        self.alpha_bar_weight = bool(alpha_bar_weight)
        self.max_timestep = max_timestep
        self.faithful_release = bool(faithful_release)

    def train(self, mode: bool = True) -> "PosePerceptionLoss":
        super().train(mode)
        self.backbone.eval()
        return self

    def weights(self, timesteps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """Per-sample factor alpha (* alpha_bar_t) (* [t < max_timestep]), shape [B], float32."""
        t = timesteps.long()
        w = torch.full(t.shape, self.alpha, dtype=torch.float32, device=t.device)
        if self.alpha_bar_weight:
            w = w * alphas_cumprod.to(device=t.device, dtype=torch.float32)[t]
        if self.max_timestep is not None:
            w = w * (t < self.max_timestep).float()
        return w

    def distance(self, pred_images: torch.Tensor, target_images: torch.Tensor) -> torch.Tensor:
        """Unweighted L_p per sample, shape [B] (paper eq. 9)."""
        with torch.no_grad():
            target_features = self.backbone(target_images)
        if self.faithful_release:
            with torch.no_grad():
                pred_features = self.backbone(pred_images.detach())
        else:
            pred_features = self.backbone(pred_images)
        if len(pred_features) != len(target_features) or not pred_features:
            raise RuntimeError("PosePerceptionLoss: the backbone returned different feature lists for the "
                               "prediction and the target")
        # low-precision features (bf16/fp16) are compared in float32; float64 stays float64
        per_feature = []
        for p, t in zip(pred_features, target_features):
            dtype = torch.promote_types(p.dtype, torch.float32)
            per_feature.append((p.to(dtype) - t.to(dtype)).pow(2).flatten(1).mean(dim=1))
        return torch.stack(per_feature, dim=0).mean(dim=0)

    def forward(self, pred_images: torch.Tensor, target_images: torch.Tensor, timesteps: torch.Tensor,
                alphas_cumprod: torch.Tensor) -> torch.Tensor:
        """Per-sample loss [B], already weighted (alpha, alpha_bar_t, max_timestep)."""
        if pred_images.shape != target_images.shape:
            raise ValueError(f"PosePerceptionLoss: prediction {tuple(pred_images.shape)} and target "
                             f"{tuple(target_images.shape)} images differ in shape")
        if timesteps.shape != (pred_images.shape[0],):
            raise ValueError(f"PosePerceptionLoss: expected one timestep per image ({pred_images.shape[0]}), got "
                             f"shape {tuple(timesteps.shape)}")
        w = self.weights(timesteps.to(pred_images.device), alphas_cumprod)
        active = w > 0
        loss = w.new_zeros(w.shape)
        if not bool(active.any()):
            return loss
        # the frozen network only runs on samples whose loss can be non-zero (e.g. t < max_timestep)
        if bool(active.all()):
            distance = self.distance(pred_images, target_images)
            return w.to(distance.dtype) * distance
        idx = active.nonzero(as_tuple=True)[0]
        distance = self.distance(pred_images[idx], target_images[idx])
        return loss.to(distance.dtype).index_put((idx,), w[idx].to(distance.dtype) * distance)


class PoseLossSchedule:
    """The paper's "gradual constraint" (section 4.1): L_p only from `start_epoch` (0-based, as Lightning counts;
    the paper's "last 5 of 20 epochs" is start_epoch=15) or from global step `start_step`. Neither = always on."""

    def __init__(self, start_epoch: Optional[int] = None, start_step: Optional[int] = None):
        if start_epoch is not None and start_step is not None:
            raise ConfigError("PoseLossSchedule: give loss.pose_perception.start_epoch or start_step, not both")
        for name, value in (("start_epoch", start_epoch), ("start_step", start_step)):
            if value is not None and value < 0:
                raise ConfigError(f"PoseLossSchedule: loss.pose_perception.{name} must be >= 0, got {value}")
        self.start_epoch = start_epoch
        self.start_step = start_step

    @classmethod
    def from_config(cls, cfg: Any) -> "PoseLossSchedule":
        return cls(start_epoch=cfg.start_epoch, start_step=cfg.start_step)

    def is_active(self, epoch: int, global_step: int) -> bool:
        if self.start_epoch is not None:
            return epoch >= self.start_epoch
        if self.start_step is not None:
            return global_step >= self.start_step
        return True

    def __repr__(self) -> str:
        return f"PoseLossSchedule(start_epoch={self.start_epoch}, start_step={self.start_step})"


def build_pose_perception_loss(cfg: Any) -> PosePerceptionLoss:
    """The loss from the `loss.pose_perception` config section (`PosePerceptionConfig` in grpose/config.py).

    Imports mmpose (through grpose.eval.pose_estimator) only here, so alpha = 0 never needs it.
    `network_checkpoint: null` builds a randomly initialised pose network (tests only).
    """
    if cfg.alpha <= 0:
        raise ValueError("loss.pose_perception.alpha is 0, which disables L_p; do not build the loss (and its "
                         "mmpose network) in that case")
    from grpose.eval.pose_estimator import PoseBackbone, checkpoint_hint, resolve_mmpose_config

    config_path = resolve_mmpose_config(cfg.network_config)
    checkpoint = cfg.network_checkpoint
    if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
        raise MissingFileError(
            f"loss.pose_perception.network_checkpoint: {checkpoint} does not exist. Download "
            f"{checkpoint_hint(config_path)} to that path, or set loss.pose_perception.network_checkpoint to "
            f"where it is.")
    backbone = PoseBackbone(config_path, checkpoint=checkpoint, feature_indices=tuple(cfg.feature_indices),
                            input_size=cfg.input_size)
    return PosePerceptionLoss(backbone, alpha=cfg.alpha, alpha_bar_weight=cfg.alpha_bar_weight,
                              max_timestep=cfg.max_timestep, faithful_release=cfg.faithful_release)
