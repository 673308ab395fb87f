"""The adapter protocol: what a trainable branch adds to the frozen UNet, named by the UNet keyword that takes it.

Every adapter has `encode_pose(pose_image)` (its timestep-independent part, computed once per sampling call) and
`residuals(sample, timestep, encoder_hidden_states, pose, conditioning_scale) -> UNetResiduals`. The training loss
and the sampler never call a UNet themselves: they call `adapter.predict_noise(unet, ...)`, whose default runs the
frozen UNet as `unet(sample, t, encoder_hidden_states=text, **r.unet_kwargs())`. A method whose trainable part is a
whole denoiser (HumanSD) overrides `predict_noise`; one that needs the frozen base (HumanSD's VAE-encoded pose)
receives it once through `bind_base(parts)`, and one whose pose encoding draws noise overrides `encode_pose_seeded`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class UNetResiduals:
    """Residuals for `UNet2DConditionModel.forward`, by kind; an empty one leaves the base untouched.

    - `down` + `mid` (ControlNet style: GRPose, ControlNet, Uni-ControlNet): one tensor per encoder skip (12 in SD1.5)
      added to the skips the decoder reads, and one added to the middle block's output.
    - `intrablock` (T2I-Adapter style): one tensor per down block, added to the hidden state after the block's last
      ResNet/attention pair, so it enters both that skip and the rest of the encoder.
    """

    down: Optional[Sequence[torch.Tensor]] = None
    mid: Optional[torch.Tensor] = None
    intrablock: Optional[Sequence[torch.Tensor]] = None

    def __post_init__(self):
        if (self.down is None) != (self.mid is None):
            # diffusers reads `down` without `mid` as the deprecated T2I-Adapter path: refuse the ambiguity.
            raise ValueError("UNetResiduals needs both `down` and `mid`, or neither")

    def unet_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for one UNet call, in new lists each time.

        The UNet consumes `down_intrablock_additional_residuals` with `pop(0)` and adds the last feature in place
        into its own hidden state (`sample += r` after a block without attention). A new list per call keeps one
        UNetResiduals usable for several calls; the feature tensors themselves are only read.
        """
        kwargs: dict[str, Any] = {}
        if self.down is not None:
            kwargs["down_block_additional_residuals"] = tuple(self.down)
            kwargs["mid_block_additional_residual"] = self.mid
        if self.intrablock is not None:
            kwargs["down_intrablock_additional_residuals"] = list(self.intrablock)
        return kwargs

    def tensors(self) -> list[torch.Tensor]:
        """Every residual tensor, in UNet order (down skips, mid, intrablock): for tests and comparisons."""
        return [*(self.down or ()), *([self.mid] if self.mid is not None else []), *(self.intrablock or ())]


class PoseAdapterMixin:
    """The protocol for ControlNet-style adapters whose `forward` returns (12 down residuals, mid residual).

    Subclasses with another kind of output (T2I-Adapter) override `residuals`.
    """

    def encode_pose(self, pose_image: torch.Tensor) -> Any:
        """The timestep-independent part of the condition (default: the pose image itself)."""
        return pose_image

    def residuals(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  pose: Any, conditioning_scale: float = 1.0) -> UNetResiduals:
        """`pose`: the B x 3 x H x W pose image in [-1, 1], or `encode_pose` of it."""
        down, mid = self(sample, timestep, encoder_hidden_states, pose, conditioning_scale=conditioning_scale)
        return UNetResiduals(down=down, mid=mid)

    def bind_base(self, parts: Any) -> None:
        """Receive the frozen base (`grpose.sd15.StableDiffusionParts`), once, from whoever composes the two: the
        lit module and the pipeline. Default: nothing to keep. An override must not register the parts as
        submodules (they are never trained and never in the adapter's state dict)."""

    def encode_pose_seeded(self, pose_image: torch.Tensor, generator: Any = None) -> Any:
        """`encode_pose` for a sampler that owns per-image random generators (`generator`: one torch.Generator or
        a list with one per image). Default: `encode_pose`, which draws no noise."""
        return self.encode_pose(pose_image)

    def predict_noise(self, unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor,
                      encoder_hidden_states: torch.Tensor, pose: Any, conditioning_scale: float = 1.0,
                      generator: Any = None) -> torch.Tensor:
        """The noise prediction for `sample` at `timestep`: the one place the training loss and the sampler get
        it from. Default: this adapter's residuals, then the frozen `unet`. `pose`: the pose image or
        `encode_pose(_seeded)` of it; `generator` only matters to adapters whose pose encoding draws noise."""
        residuals = self.residuals(sample, timestep, encoder_hidden_states, pose, conditioning_scale)
        return unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, **residuals.unet_kwargs()).sample

    def unet_fit(self) -> dict[str, Any]:
        """The UNet config fields this adapter was built for (the sampler checks them against its base UNet)."""
        config = getattr(self, "config", None) or {}
        return dict(config.get("unet_config", config))
