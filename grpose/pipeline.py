"""Sampling with a frozen SD1.5 (or SD2.1-base) + a pose adapter: DDIM (or any diffusers scheduler) with
classifier-free guidance.

Usable without Lightning. Each image has its own seed, so results do not depend on batch size or device count.
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Optional, Sequence, Union

import torch
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from PIL import Image
from tqdm.auto import tqdm

from .errors import ConfigError, PoseInputError
from .pose_inputs import PoseCondition, load_pose
from .precision import inference_autocast, torch_dtype
from .sd15 import StableDiffusionParts, build_sd15, encode_prompts, load_unet, make_scheduler
from .weights.loader import load_adapter

DEFAULT_NEGATIVE_PROMPT = (
    "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
    "worst quality, low quality"
)
DEFAULT_SEED = 42  # sampling.seed of the default config
# The pose encoding's noise (HumanSD) uses the image's seed plus this, so it never repeats the starting noise.
POSE_NOISE_SEED_OFFSET = 1 << 32

# UNet/adapter config fields that must agree, or the adapter's residuals cannot be added to the UNet's skips.
_FIT_KEYS = ("block_out_channels", "layers_per_block", "cross_attention_dim", "down_block_types")


def sampling_options(sampling: Any, conditioning_scale: float = 1.0) -> dict[str, Any]:
    """The keyword arguments of `GRPosePipeline.__call__` from a config's `sampling` section: the one translation
    that sample grids, eval_pose.py and the benchmark share."""
    return dict(negative_prompt=sampling.negative_prompt, num_inference_steps=int(sampling.num_inference_steps),
                guidance_scale=float(sampling.guidance_scale), eta=float(sampling.eta),
                conditioning_scale=float(conditioning_scale))


def _check_adapter_fits(adapter: torch.nn.Module, unet: torch.nn.Module, source: str) -> None:
    if not hasattr(adapter, "unet_fit"):
        return
    adapter_unet = adapter.unet_fit()  # the UNet fields the adapter was built for
    for key in _FIT_KEYS:
        if key not in adapter_unet or key not in unet.config:
            continue
        have, want = adapter_unet[key], unet.config[key]
        have = list(have) if isinstance(have, (list, tuple)) else have
        want = list(want) if isinstance(want, (list, tuple)) else want
        if have != want:
            raise ConfigError(
                f"the adapter {source} was built for a UNet with {key}={have}, but the base UNet has {want}; "
                "pass the arch the adapter was trained with (model.base of its training config)"
            )


class GRPosePipeline:
    """Frozen SD1.5 parts + a trained adapter (any grpose adapter: GRPose, ControlNet, T2I-Adapter, Uni-ControlNet)
    -> images.

    The unconditional branch of classifier-free guidance uses the negative prompt and keeps the pose, as the
    reference sampler does: eps = eps_neg + s * (eps_prompt - eps_neg), both from `adapter.predict_noise` (the
    adapter's residuals into the frozen UNet; HumanSD: its own UNet on [latent, pose latent]).
    Precision follows `grpose.precision`: the frozen parts in their stored dtype, the adapter in float32, autocast
    to the frozen dtype when it is a half type.
    """

    def __init__(self, parts: StableDiffusionParts, adapter: Optional[torch.nn.Module], scheduler=None):
        """`adapter` None samples the base alone, from the prompt only (paper Table 1's "SD" row). The adapter
        receives the frozen parts here (`bind_base`; HumanSD encodes its pose with the VAE)."""
        self.parts = parts
        self.adapter = adapter
        if adapter is not None:
            adapter.bind_base(parts)
        self.scheduler = scheduler if scheduler is not None else make_scheduler("ddim")

    @classmethod
    def from_pretrained(
        cls,
        sd15_path: Optional[Union[str, os.PathLike]],
        adapter_path: Union[str, os.PathLike, torch.nn.Module],
        arch: str = "sd15",
        base_unet: Optional[Union[str, os.PathLike]] = None,
        scheduler: Union[str, SchedulerMixin] = "ddim",
        device: Union[str, torch.device, None] = None,
        dtype: Union[str, torch.dtype, None] = None,
        trust_pickle: bool = False,
    ) -> "GRPosePipeline":
        """Load everything offline and move it to `device` (default: CUDA when available); the frozen parts are
        stored in `dtype` (default fp32), the adapter stays float32 (see grpose.precision).

        `sd15_path`: a diffusers SD1.5 folder or single file (None builds random weights, for benchmarks).
        `adapter_path`: any adapter file `grpose.weights.load_adapter` reads (a train.py .ckpt, an exported folder,
        a grpose .safetensors), or an adapter module already in memory. `base_unet`: any SD1.5-compatible UNet (single file, diffusers
        UNet file or folder) that replaces SD1.5's UNet while the VAE and text encoder stay (paper Fig. 5).
        `scheduler`: "ddim" (the paper's sampler) or a diffusers scheduler class name, or a scheduler instance.
        `trust_pickle`: let an adapter .ckpt that holds more than tensors run its pickle (files you trust only).
        """
        frozen_dtype = torch_dtype(dtype)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        parts = build_sd15(arch, None if sd15_path is None else str(sd15_path), torch_dtype=frozen_dtype)
        if base_unet is not None:
            parts.unet = load_unet(str(base_unet), arch)
        adapter = (adapter_path if isinstance(adapter_path, torch.nn.Module)
                   else load_adapter(adapter_path, trust_pickle=trust_pickle))
        _check_adapter_fits(adapter, parts.unet, str(adapter_path) if not isinstance(adapter_path, torch.nn.Module)
                            else type(adapter_path).__name__)
        adapter.requires_grad_(False)
        adapter.eval()
        if isinstance(scheduler, str):
            scheduler = make_scheduler(scheduler)
        return cls(parts, adapter, scheduler).to(device=device, dtype=frozen_dtype)

    @property
    def device(self) -> torch.device:
        return next(self.parts.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The frozen base's dtype: the one autocast computes in."""
        return next(self.parts.unet.parameters()).dtype

    @property
    def vae_factor(self) -> int:
        """Image pixels per latent cell (8 for SD1.5)."""
        return 2 ** (len(self.parts.vae.config.block_out_channels) - 1)

    @property
    def default_resolution(self) -> int:
        """The UNet's native image size (512 for SD1.5): latent sample_size times the VAE's downsampling."""
        return int(self.parts.unet.config.sample_size) * self.vae_factor

    @property
    def size_multiple(self) -> int:
        """Image sides must be multiples of this: the VAE's downsampling times the UNet's."""
        return self.vae_factor * 2 ** (len(self.parts.unet.config.block_out_channels) - 1)

    def to(self, device=None, dtype=None) -> "GRPosePipeline":
        """Move everything to `device`; `dtype` is the frozen parts' storage dtype (the adapter stays float32)."""
        for module in (self.parts.unet, self.parts.vae, self.parts.text_encoder):
            # nn.Module.to, not ModelMixin.to: diffusers warns on every dtype cast although none of these modules
            # keeps parts in float32.
            torch.nn.Module.to(module, device=device, dtype=dtype)
        if self.adapter is not None:
            torch.nn.Module.to(self.adapter, device=device, dtype=torch.float32)
        return self

    @torch.no_grad()
    def __call__(self, prompts: Sequence[str], pose_images: torch.Tensor, seeds: Sequence[int],
                 negative_prompt: str = DEFAULT_NEGATIVE_PROMPT, num_inference_steps: int = 50,
                 guidance_scale: float = 9.0, eta: float = 0.0, conditioning_scale: float = 1.0,
                 progress: bool = True) -> torch.Tensor:
        """prompts: B strings; pose_images: B x 3 x H x W in [-1, 1]; seeds: B ints. Returns B x 3 x H x W in [-1, 1]."""
        batch = len(prompts)
        if pose_images.shape[0] != batch or len(seeds) != batch:
            raise PoseInputError(f"got {batch} prompts, {pose_images.shape[0]} poses and {len(seeds)} seeds; "
                             "they must match")
        multiple = self.size_multiple
        if pose_images.ndim != 4 or pose_images.shape[1] != 3 or pose_images.shape[-1] % multiple \
                or pose_images.shape[-2] % multiple:
            raise PoseInputError(f"pose_images must be B x 3 x H x W with H and W multiples of {multiple}, got "
                             f"{tuple(pose_images.shape)}")
        step_parameters = _step_parameters(self.scheduler)
        if eta != 0.0 and "eta" not in step_parameters:
            raise ConfigError(f"eta={eta} only applies to DDIM; {type(self.scheduler).__name__} has no eta.")
        device, dtype = self.device, self.dtype
        adapter = self.adapter
        was_training = adapter is not None and adapter.training
        if adapter is not None:
            adapter.eval()
        with inference_autocast(device, dtype):
            pose = pose_images.to(device=device, dtype=dtype)
            latent_hw = (pose.shape[-2] // self.vae_factor, pose.shape[-1] // self.vae_factor)
            channels = self.parts.unet.config.in_channels
            # One CPU generator per image: the starting noise and any noise the sampler adds later come from the
            # image's own seed, whatever the batch size or device.
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
            step_kwargs = {}
            if "eta" in step_parameters:
                step_kwargs["eta"] = eta
            if "generator" in step_parameters:
                step_kwargs["generator"] = generators
            # timestep-independent: once per call, not per step. Noise the pose encoding may draw (HumanSD's VAE
            # posterior sample) comes from each image's seed too, and is the same in both halves of CFG.
            pose_condition = None
            if adapter is not None:
                halves = 2 if use_cfg else 1
                pose_generators = [torch.Generator("cpu").manual_seed(int(seed) + POSE_NOISE_SEED_OFFSET)
                                   for _ in range(halves) for seed in seeds]
                pose_condition = adapter.encode_pose_seeded(pose, pose_generators)
            for t in tqdm(self.scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
                model_in = torch.cat([latents, latents]) if use_cfg else latents
                model_in = self.scheduler.scale_model_input(model_in, t)
                if adapter is not None:
                    eps = adapter.predict_noise(self.parts.unet, model_in, t, text, pose_condition, conditioning_scale)
                else:
                    eps = self.parts.unet(model_in, t, encoder_hidden_states=text).sample
                if use_cfg:
                    eps_negative, eps_prompt = eps.chunk(2)
                    eps = eps_negative + guidance_scale * (eps_prompt - eps_negative)
                latents = self.scheduler.step(eps, t, latents, **step_kwargs).prev_sample
            images = self.decode(latents)
        if adapter is not None:
            adapter.train(was_training)
        return images

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.parts.vae.decode(latents / self.parts.vae_scale_factor).sample
        return images.clamp(-1, 1).float()

    def load_poses(self, poses, resolution: Optional[int] = None, **pose_kwargs) -> list[PoseCondition]:
        """`poses`: one pose input or a list/tuple of them (anything `grpose.pose_inputs.load_pose` accepts)."""
        resolution = resolution or self.default_resolution
        if resolution % self.size_multiple:
            raise ConfigError(f"resolution must be a multiple of {self.size_multiple}, got {resolution}")
        items = list(poses) if _is_pose_list(poses) else [poses]
        return [load_pose(p, resolution=resolution, **pose_kwargs) for p in items]

    def generate(
        self,
        prompts: Union[str, Sequence[str]],
        poses,
        seeds: Union[int, Sequence[int], None] = None,
        negative_prompt: str = DEFAULT_NEGATIVE_PROMPT,
        num_inference_steps: int = 50,
        guidance_scale: float = 9.0,
        eta: float = 0.0,
        conditioning_scale: float = 1.0,
        resolution: Optional[int] = None,
        image_size: Optional[Sequence[int]] = None,
        skeleton_width: Optional[int] = None,
        batch_size: Optional[int] = None,
        progress: bool = True,
    ) -> list[Image.Image]:
        """Prompt(s) + pose(s) -> PIL images, one per (prompt, pose, seed) triple.

        `poses` is one pose or a list of them: PoseCondition, file path (.json / .npz / .npy / skeleton image),
        keypoint array, or PIL skeleton image (see `grpose.pose_inputs`). Keypoints are in pixels of an
        `image_size` = (width, height) image (None: of the output). A single prompt, pose or seed is repeated to
        the longest of the three. `seeds` None counts up from 42, an int counts up from it. Images depend only on
        their own seed, never on `batch_size` (None: all at once).
        """
        prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
        pose_list = self.load_poses(poses, resolution, image_size=image_size, skeleton_width=skeleton_width)
        if seeds is None or isinstance(seeds, int):
            start = DEFAULT_SEED if seeds is None else int(seeds)
            count = max(len(prompt_list), len(pose_list))
            seed_list = list(range(start, start + count))
        else:
            seed_list = [int(s) for s in seeds]
        batch = max(len(prompt_list), len(pose_list), len(seed_list))
        lists = {"prompts": prompt_list, "poses": pose_list, "seeds": seed_list}
        for name, values in lists.items():
            if len(values) not in (1, batch):
                sizes = ", ".join(f"{len(v)} {n}" for n, v in lists.items())
                raise PoseInputError(f"got {sizes}; each must be one or as many as the longest ({batch})")
            if len(values) == 1:
                lists[name] = values * batch
        step = batch_size or batch
        images: list[Image.Image] = []
        for start in range(0, batch, step):
            chunk = slice(start, start + step)
            pose_images = torch.stack([p.image for p in lists["poses"][chunk]])
            out = self(lists["prompts"][chunk], pose_images, lists["seeds"][chunk], negative_prompt=negative_prompt,
                       num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, eta=eta,
                       conditioning_scale=conditioning_scale, progress=progress)
            images.extend(Image.fromarray(a.numpy()) for a in images_to_uint8(out))
        return images


def _is_pose_list(poses) -> bool:
    """A list/tuple of pose inputs, as opposed to one pose given as nested lists of numbers."""
    if not isinstance(poses, (list, tuple)) or not poses:
        return False
    first = poses[0]
    # [17, 3] or [P, 17, 3] as nested lists starts with a number or a list of numbers.
    return not isinstance(first, (int, float, list, tuple))


def _step_parameters(scheduler) -> set[str]:
    return set(inspect.signature(scheduler.step).parameters)


def images_to_uint8(images: torch.Tensor) -> torch.Tensor:
    """B x 3 x H x W in [-1, 1] -> B x H x W x 3 uint8 (CPU)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
