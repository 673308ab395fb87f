"""T2I-Adapter (Mou et al. 2023), the SD1.x "full adapter" of the keypose / openpose releases, as a grpose adapter.

diffusers' `T2IAdapter(adapter_type="full_adapter")` is the network: pixel-unshuffle by the VAE's downsampling, a
3x3 conv, then per UNet level two ResNet blocks (3x3 conv, ReLU, 1x1 conv, no normalisation), with a 2x2 average
pool and a 1x1 channel change between levels. Its four features go into the frozen UNet through
`down_intrablock_additional_residuals`. Nothing is zero-initialised and nothing comes from the UNet.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from diffusers import T2IAdapter, UNet2DConditionModel

from .residuals import PoseAdapterMixin, UNetResiduals


class T2IAdapterBaseline(PoseAdapterMixin, T2IAdapter):
    """diffusers' T2IAdapter with the grpose adapter protocol.

    Our pose images are in [-1, 1]; T2I-Adapter conditions on [0, 1] (the released adapters were trained on
    `image / 255`), so `encode_pose` rescales. The features do not depend on the timestep or the latent: they are
    computed once per sampling call, and every step only multiplies them by `conditioning_scale`.
    """

    _supports_gradient_checkpointing = False  # 77 M parameters run once per step: nothing worth recomputing

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, vae_downsampling: int = 8, in_channels: int = 3,
                  num_res_blocks: int = 2) -> "T2IAdapterBaseline":
        """One feature per UNet level with that level's channels (320/640/1280/1280 for SD1.5); the first at the
        latent's resolution, so the pixel-unshuffle factor is the VAE's downsampling."""
        levels = len(unet.config.block_out_channels)
        if len(unet.config.down_block_types) != levels:
            raise ValueError("T2I-Adapter needs one UNet down block per entry of block_out_channels")
        return cls(in_channels=in_channels, channels=list(unet.config.block_out_channels),
                   num_res_blocks=num_res_blocks, downscale_factor=vae_downsampling, adapter_type="full_adapter")

    def encode_pose(self, pose_image: torch.Tensor) -> list[torch.Tensor]:
        """The adapter's per-level features of a B x 3 x H x W pose image in [-1, 1]."""
        return self.adapter((pose_image + 1) / 2)

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                pose_image: torch.Tensor | Sequence[torch.Tensor], conditioning_scale: float = 1.0
                ) -> list[torch.Tensor]:
        """The features scaled by `conditioning_scale`, in `sample`'s dtype: new tensors on every call, so the
        cached `encode_pose` output is never handed to the UNet itself. `timestep` and `encoder_hidden_states` are
        unused (the adapter sees neither); they keep the signature every grpose adapter shares."""
        features = (self.encode_pose(pose_image.to(sample.dtype)) if torch.is_tensor(pose_image)
                    else list(pose_image))
        return [f.to(sample.dtype) * conditioning_scale for f in features]

    def residuals(self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                  pose: Any, conditioning_scale: float = 1.0) -> UNetResiduals:
        features = self(sample, timestep, encoder_hidden_states, pose, conditioning_scale=conditioning_scale)
        return UNetResiduals(intrablock=features)

    def unet_fit(self) -> dict[str, Any]:
        return {"block_out_channels": list(self.config.channels)}
