"""HumanSD (Ju et al. 2023, section 4.1) as a grpose method: the whole UNet is fine-tuned, with the VAE latent of the
skeleton image concatenated to the noisy latent (4 + 4 input channels). There is no adapter beside the base.

The trainable part implements the adapter protocol of `grpose.models.residuals` through its general hooks:
`bind_base` receives the frozen VAE (the pose is VAE-encoded), `encode_pose_seeded` draws the posterior sample with
the sampler's per-image generators, and `predict_noise` runs this UNet instead of the frozen one, which HumanSD
leaves unused.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import UNet2DConditionModel
from torch import nn

from ..errors import ConfigError
from .residuals import PoseAdapterMixin, UNetResiduals


class HumanSDUNet(PoseAdapterMixin, UNet2DConditionModel):
    """The HumanSD denoiser: a diffusers UNet2DConditionModel whose `conv_in` takes [noisy latent, pose latent].

    Built from the base UNet by `from_unet`: every weight copied, `conv_in` widened to `in_channels + pose channels`
    with the new input channels zero, so that at initialisation it computes exactly the base UNet's function
    whatever the pose (HumanSD's init of `input_blocks.0.0.weight`). Text enters through cross-attention as in the
    base. All of it trains (865,922,244 parameters at SD2.1-base size, 859,532,484 at SD1.5 size).

    The pose latent is `posterior sample x scaling factor` of the frozen VAE on the skeleton image in [-1, 1], as
    HumanSD computes it in training and sampling; the pose channels are `in_channels - out_channels`.
    """

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, load_weights_from_unet: bool = True) -> "HumanSDUNet":
        """A HumanSD UNet of `unet`'s architecture with twice its input channels (the VAE latent's channels: the
        noisy latent and the pose latent have the same). `load_weights_from_unet` False only shapes it."""
        config = {k: v for k, v in dict(unet.config).items() if not k.startswith("_")}
        latent_channels = int(config["in_channels"])
        model = cls.from_config({**config, "in_channels": 2 * latent_channels})
        if load_weights_from_unet:
            state = dict(unet.state_dict())
            base_conv = state["conv_in.weight"]
            widened = torch.zeros(base_conv.shape[0], 2 * latent_channels, *base_conv.shape[2:], dtype=base_conv.dtype,
                                  device=base_conv.device)
            widened[:, :latent_channels] = base_conv
            state["conv_in.weight"] = widened
            model.load_state_dict(state, strict=True)
        return model

    @property
    def pose_channels(self) -> int:
        return int(self.config.in_channels) - int(self.config.out_channels)

    # ---- the adapter protocol ----------------------------------------------------------------------------------
    def bind_base(self, parts: Any) -> None:
        """Keep a reference to the frozen VAE and its latent scale (`parts`: `grpose.sd15.StableDiffusionParts`).

        Stored outside `_modules`: the VAE is never trained, never in this model's `parameters()` or state dict
        (checkpoints hold the UNet alone), and device moves of the owner reach it through the owner's own parts.
        """
        latent = int(parts.vae.config.latent_channels)
        if latent != self.pose_channels:
            raise ConfigError(f"HumanSD's UNet takes {self.pose_channels} pose channels, but the base VAE's latent has "
                              f"{latent}; use the base the HumanSD weights were made for")
        self.__dict__["_base_vae"] = parts.vae
        self.__dict__["_vae_scale"] = float(parts.vae_scale_factor)

    def encode_pose(self, pose_image: torch.Tensor) -> torch.Tensor:
        """The pose latent of a B x 3 x H x W skeleton image in [-1, 1] (posterior noise from the global RNG)."""
        return self.encode_pose_seeded(pose_image, None)

    @torch.no_grad()
    def encode_pose_seeded(self, pose_image: torch.Tensor, generator: Any = None) -> torch.Tensor:
        """VAE posterior sample x scaling factor of the skeleton image, noise from `generator` (one, or one per
        image). No gradient: the VAE is frozen and the pose image is data."""
        vae = self.__dict__.get("_base_vae")
        if vae is None:
            raise RuntimeError("HumanSDUNet encodes the pose with the frozen VAE: call bind_base(parts) first (the lit "
                               "module and GRPosePipeline do)")
        posterior = vae.encode(pose_image.to(device=vae.device, dtype=vae.dtype)).latent_dist
        return posterior.sample(generator) * self.__dict__["_vae_scale"]

    def predict_noise(self, unet: nn.Module, sample: torch.Tensor, timestep: torch.Tensor,
                      encoder_hidden_states: torch.Tensor, pose: Any, conditioning_scale: float = 1.0,
                      generator: Any = None) -> torch.Tensor:
        """This UNet on cat([noisy latent, pose latent]) (noisy first, HumanSD's 'hybrid' conditioning); the frozen
        base `unet` is not used. `pose`: the skeleton image (3 channels, encoded here) or its pose latent."""
        if conditioning_scale != 1.0:
            raise ConfigError(f"HumanSD has no conditioning scale (got {conditioning_scale}): its pose is an input of "
                              "the UNet, not a residual; set model.conditioning_scale=1.0")
        if pose.shape[1] == 3:
            pose = self.encode_pose_seeded(pose, generator)
        if pose.shape[0] != sample.shape[0] or pose.shape[1] != self.pose_channels \
                or pose.shape[-2:] != sample.shape[-2:]:
            raise ValueError(f"HumanSD pose latent {tuple(pose.shape)} does not fit the noisy latent "
                             f"{tuple(sample.shape)} ({self.pose_channels} pose channels expected)")
        model_in = torch.cat([sample, pose.to(sample.dtype)], dim=1)
        return self(model_in, timestep, encoder_hidden_states=encoder_hidden_states).sample

    def residuals(self, *args, **kwargs) -> UNetResiduals:
        raise TypeError("HumanSD adds no residuals to a frozen UNet: it is the denoiser; call predict_noise")
