"""Sampling with a frozen SD1.5 + a pose adapter: DDIM (or any diffusers scheduler) with classifier-free guidance.

Usable without Lightning. Each image has its own seed, so results do not depend on batch size or device count.
"""

from __future__ import annotations

import inspect
from typing import Sequence

import torch
from tqdm.auto import tqdm

from .sd15 import StableDiffusionParts, encode_prompts, make_scheduler

DEFAULT_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality"
)


class GRPosePipeline:
    """Frozen SD1.5 parts + a trained adapter (GraphPoseAdapter or ControlNetBaseline) -> images.

    The unconditional branch of classifier-free guidance uses the negative prompt and keeps the pose, as the
    reference sampler does: eps = eps_neg + s * (eps_prompt - eps_neg), both with the adapter's residuals.
    """

    def __init__(self, parts: StableDiffusionParts, adapter: torch.nn.Module, scheduler=None):
        self.parts = parts
        self.adapter = adapter
        self.scheduler = scheduler if scheduler is not None else make_scheduler("ddim")

    @property
    def device(self) -> torch.device:
        return next(self.parts.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parts.unet.parameters()).dtype

    def to(self, device=None, dtype=None) -> "GRPosePipeline":
        for module in (self.parts.unet, self.parts.vae, self.parts.text_encoder, self.adapter):
            module.to(device=device, dtype=dtype)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], pose_images: torch.Tensor, seeds: Sequence[int],
                 negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, num_inference_steps: int = 50,
                 guidance_scale: float = 9.0, eta: float = 0.0, conditioning_scale: float = 1.0,
                 progress: bool = True) -> torch.Tensor:
        """prompts: B strings; pose_images: B x 3 x H x W in [-1, 1]; seeds: B ints. Returns B x 3 x H x W in [-1, 1]."""
        batch = len(prompts)
        if pose_images.shape[0] != batch or len(seeds) != batch:
            raise ValueError(f"got {batch} prompts, {pose_images.shape[0]} poses and {len(seeds)} seeds; "
                             "they must match")
        device, dtype = self.device, self.dtype
        was_training = self.adapter.training
        self.adapter.eval()
        pose = pose_images.to(device=device, dtype=dtype)
        latent_hw = (pose.shape[-2] // 8, pose.shape[-1] // 8)
        channels = self.parts.unet.config.in_channels
        generators = [torch.Generator("cpu").manual_seed(int(seed)) for seed in seeds]
        latents = torch.stack([torch.randn((channels, *latent_hw), generator=g) for g in generators])
        latents = latents.to(device=device, dtype=dtype)

        use_cfg = guidance_scale != 1.0
        text = encode_prompts(self.parts, list(prompts)).to(dtype)
        if use_cfg:
            negative = encode_prompts(self.parts, [negative_prompt] * batch).to(dtype)
            text = torch.cat([negative, text])
            pose = torch.cat([pose, pose])

        self.scheduler.set_timesteps(num_inference_steps, device=device)
        latents = latents * self.scheduler.init_noise_sigma
        step_kwargs = {"eta": eta, "generator": generators} if "eta" in _step_parameters(self.scheduler) else {}
        for t in tqdm(self.scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
            model_in = torch.cat([latents, latents]) if use_cfg else latents
            model_in = self.scheduler.scale_model_input(model_in, t)
            down, mid = self.adapter(model_in, t, text, pose, conditioning_scale=conditioning_scale)
            eps = self.parts.unet(model_in, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                                  mid_block_additional_residual=mid).sample
            if use_cfg:
                eps_negative, eps_prompt = eps.chunk(2)
                eps = eps_negative + guidance_scale * (eps_prompt - eps_negative)
            latents = self.scheduler.step(eps, t, latents, **step_kwargs).prev_sample
        images = self.decode(latents)
        self.adapter.train(was_training)
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.parts.vae.decode(latents / self.parts.vae_scale_factor).sample
        return images.clamp(-1, 1).float()


def _step_parameters(scheduler) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [-1, 1] -> B x H x W x 3 uint8 (CPU)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

