"""LightningModule that trains a pose adapter on a frozen SD1.5 (or SD2.1-base): diffusion loss (+ optional pose
perception loss, or HumanSD's heatmap-guided weighting)."""

from __future__ import annotations

from typing import Any, Optional

import lightning.pytorch as pl
import torch
from diffusers.optimization import get_scheduler
from omegaconf import DictConfig, OmegaConf
from torch.utils.checkpoint import checkpoint

from .errors import ConfigError
from .losses.diffusion import diffusion_loss, pose_region_mask, sample_timesteps
from .models.adapter import build_adapter
from .pipeline import GRPosePipeline, sampling_options
from .precision import torch_dtype
from .sd15 import StableDiffusionParts, build_sd15, encode_prompts, load_unet, make_scheduler
from .weights.loader import ADAPTER_PREFIX, load_adapter


class GRPoseLitModule(pl.LightningModule):
    """Frozen SD1.5 (UNet, VAE, CLIP text) + trainable adapter.

    Only `self.adapter` has trainable parameters and only its tensors are in `state_dict()`, so Lightning
    checkpoints hold the adapter plus optimizer/loop state, never the frozen SD1.5 or pose-network weights.
    The adapter gets the frozen parts once (`adapter.bind_base`) and gives the noise prediction
    (`adapter.predict_noise`): for HumanSD the "adapter" is the whole trainable 8-channel UNet, and the frozen base
    UNet stays loaded but unused.
    """

    def __init__(self, model: DictConfig, loss: DictConfig, optim: DictConfig, sampling: DictConfig,
                 lr_scale_batch: int = 1, tf32: bool = True, parts: Optional[StableDiffusionParts] = None):
        """`model`, `loss`, `optim`, `sampling`: those sections of the experiment config. `lr_scale_batch`: the
        per-device batch times gradient accumulation, by which `optim.scale_lr` multiplies the lr (with the world
        size). `parts`: an already built frozen base (else built from `model.base` / `model.pretrained`)."""
        super().__init__()
        if model.adapter == "none":
            raise ConfigError("model.adapter=none is the frozen base alone: there is nothing to train. Evaluate it "
                              "with `python eval_pose.py --config CONFIG model.adapter=none` (no --ckpt)")
        self.model_cfg, self.loss_cfg, self.optim_cfg, self.sampling_cfg = model, loss, optim, sampling
        self.lr_scale_batch = int(lr_scale_batch)
        self.tf32 = bool(tf32)
        # The checkpoint stores these sections: the `model` one is how a .ckpt names its adapter's architecture.
        self.save_hyperparameters({name: OmegaConf.to_container(section, resolve=True) for name, section in
                                   (("model", model), ("loss", loss), ("optim", optim), ("sampling", sampling))})
        parts = parts if parts is not None else build_sd15(model.base, model.pretrained,
                                                            torch_dtype=torch_dtype(model.frozen_dtype))
        self.sd = parts
        # Registered as submodules so Lightning moves them with the module; frozen and in eval mode forever.
        self.unet, self.vae, self.text_encoder = parts.unet, parts.vae, parts.text_encoder
        for frozen in (self.unet, self.vae, self.text_encoder):
            frozen.requires_grad_(False).eval()
        self.adapter = build_adapter(model, self._init_unet(model))
        self.adapter.bind_base(parts)
        if model.adapter_weights:
            self.load_adapter_weights(model.adapter_weights)
        if model.gradient_checkpointing:
            if self.adapter._supports_gradient_checkpointing:  # T2I-Adapter: too small to be worth it
                self.adapter.enable_gradient_checkpointing()
            self.unet.enable_gradient_checkpointing()
        if model.channels_last:
            for module in (self.unet, self.vae, self.adapter):
                module.to(memory_format=torch.channels_last)
        if model.compile:
            self.adapter.compile()
            self.unet.compile()

        self.noise_scheduler = make_scheduler("ddpm")
        self.register_buffer("alphas_cumprod", self.noise_scheduler.alphas_cumprod.clone(), persistent=False)
        self.pose_loss = None
        self.pose_loss_schedule = None
        pose_cfg = loss.pose_perception
        if pose_cfg.alpha > 0:
            # Imported here: with alpha = 0 training never touches mmpose. The loss module holds its pose network
            # outside its parameters and state dict, so registering it adds nothing to checkpoints.
            from .losses.pose_perception import PoseLossSchedule, build_pose_perception_loss

            self.pose_loss = build_pose_perception_loss(pose_cfg)
            self.pose_loss_schedule = PoseLossSchedule(pose_cfg.start_epoch, pose_cfg.start_step)
        # HumanSD's heatmap-guided weighting of the diffusion loss (None for variant `none`: mmpose not imported);
        # its pose network, like L_p's, is held outside parameters and state dict.
        from .losses.humansd_heatmap import build_heatmap_guided_loss

        self.heatmap_loss = build_heatmap_guided_loss(loss.humansd_heatmap)

    def _init_unet(self, model: DictConfig):
        """The UNet the adapter copies its initial weights from: the frozen one, or, when that is stored in a half
        dtype (`model.frozen_dtype`) and the weights come from a file, a float32 read of the same file. The
        trainable copy then starts from the stored weights, not from their bf16/fp16 rounding; this matters most
        for HumanSD, whose trainable copy is the whole UNet. Skipped when `model.adapter_weights` replaces the init."""
        if self.unet.dtype == torch.float32 or not model.pretrained or model.adapter_weights:
            return self.unet
        return load_unet(model.pretrained, model.base)

    @classmethod
    def from_config(cls, cfg: DictConfig, parts: Optional[StableDiffusionParts] = None) -> "GRPoseLitModule":
        """The module of a full experiment config (what train.py builds)."""
        return cls(cfg.model, cfg.loss, cfg.optim, cfg.sampling,
                   lr_scale_batch=cfg.data.batch_size * cfg.trainer.accumulate_grad_batches, tf32=cfg.trainer.tf32,
                   parts=parts)

    # ---- checkpoint content: the adapter only -------------------------------------------------------------
    def state_dict(self, *args, destination=None, prefix: str = "", keep_vars: bool = False):
        return self.adapter.state_dict(destination=destination, prefix=prefix + ADAPTER_PREFIX, keep_vars=keep_vars)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        foreign = [k for k in state_dict if not k.startswith(ADAPTER_PREFIX)]
        if foreign and strict:
            raise RuntimeError(f"checkpoint holds non-adapter keys such as {foreign[:3]}; expected only "
                               f"'{ADAPTER_PREFIX}*' keys")
        adapter_state = {k[len(ADAPTER_PREFIX):]: v for k, v in state_dict.items() if k.startswith(ADAPTER_PREFIX)}
        return self.adapter.load_state_dict(adapter_state, strict=strict, assign=assign)

    def load_adapter_weights(self, path: str) -> None:
        """Start from the adapter in `path` (model.adapter_weights), read by the one adapter loader: the file must
        hold the configured architecture."""
        loaded = load_adapter(path, expected=self.model_cfg)
        self.adapter.load_state_dict(loaded.state_dict(), strict=True)

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.unet, self.vae, self.text_encoder):
            frozen.eval()
        return self

    # ---- training ---------------------------------------------------------------------------------------
    def pose_loss_active(self) -> bool:
        return self.pose_loss is not None and self.pose_loss_schedule.is_active(self.current_epoch, self.global_step)

    def setup(self, stage: str) -> None:
        if self.tf32 and torch.cuda.is_available():
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True

    def compute_loss(self, batch: dict[str, Any], generator: Optional[torch.Generator] = None
                     ) -> dict[str, torch.Tensor]:
        images = batch["image"].to(self.device)
        hint = batch["hint"].to(self.device)
        with torch.no_grad():
            posterior = self.vae.encode(images.to(self.vae.dtype)).latent_dist
            latents = posterior.sample(generator) * self.sd.vae_scale_factor
            text = encode_prompts(self.sd, list(batch["prompt"]))
        noise = torch.randn(latents.shape, generator=generator, device=latents.device, dtype=latents.dtype)
        timesteps = sample_timesteps(latents.shape[0], self.noise_scheduler.config.num_train_timesteps,
                                     self.loss_cfg.timesteps, generator, latents.device)
        noisy = self.noise_scheduler.add_noise(latents, noise, timesteps)

        noise_pred = self.adapter.predict_noise(self.unet, noisy, timesteps, text, hint, generator=generator)

        loss_cfg = self.loss_cfg
        if self.heatmap_loss is not None:
            per_sample = self.heatmap_loss(noise_pred, noise, self.vae, self.sd.vae_scale_factor, generator)
        else:
            mask = None
            if loss_cfg.pose_mask_weight != 1.0:
                mask = pose_region_mask(hint, tuple(latents.shape[-2:]), loss_cfg.pose_mask_kernel,
                                        loss_cfg.pose_mask_sigma)
            per_sample = diffusion_loss(noise_pred, noise, mask, loss_cfg.pose_mask_weight)
        losses = {"loss_diffusion": per_sample.mean()}
        if self.pose_loss_active():
            pose_per_sample = self.pose_perception(noisy, noise_pred, timesteps, images)
            per_sample = per_sample + pose_per_sample
            losses["loss_pose"] = pose_per_sample.mean()
        losses["loss"] = per_sample.mean()
        return losses

    def pose_perception(self, noisy: torch.Tensor, noise_pred: torch.Tensor, timesteps: torch.Tensor,
                        images: torch.Tensor) -> torch.Tensor:
        """alpha * L_p per sample (paper eq. 9-10): x0_hat from the noise estimate, decoded with gradient."""
        alpha_bar = self.alphas_cumprod[timesteps].to(noisy.dtype)[:, None, None, None]
        pred_x0 = (noisy - (1 - alpha_bar).sqrt() * noise_pred) / alpha_bar.sqrt()
        decode = lambda z: self.vae.decode(z / self.sd.vae_scale_factor).sample  # noqa: E731
        if self.loss_cfg.pose_perception.decode_checkpointing and torch.is_grad_enabled():
            pred_images = checkpoint(decode, pred_x0, use_reentrant=False)
        else:
            pred_images = decode(pred_x0)
        return self.pose_loss(pred_images, images, timesteps, self.alphas_cumprod)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        losses = self.compute_loss(batch)
        batch_size = batch["image"].shape[0]
        self.log_dict({f"train/{k}": v.detach() for k, v in losses.items()}, prog_bar=True, batch_size=batch_size,
                      sync_dist=False)
        return losses["loss"]

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        generator = torch.Generator(self.device).manual_seed(batch_idx)
        losses = self.compute_loss(batch, generator=generator)
        self.log("val/loss", losses["loss"], batch_size=batch["image"].shape[0], sync_dist=True)

    def configure_optimizers(self):
        optim = self.optim_cfg
        lr = optim.lr
        if optim.scale_lr:
            world = self.trainer.world_size if self._trainer is not None else 1
            lr = optim.lr * world * self.lr_scale_batch
        params = [p for p in self.adapter.parameters() if p.requires_grad]
        fused = optim.fused
        if fused is None:
            fused = torch.cuda.is_available() and self.device.type == "cuda"
        optimizer = torch.optim.AdamW(params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay,
                                      fused=bool(fused))
        if optim.lr_scheduler == "constant" and not optim.lr_warmup_steps:
            return optimizer
        name = "constant_with_warmup" if optim.lr_scheduler == "constant" else optim.lr_scheduler
        schedule = get_scheduler(name, optimizer, num_warmup_steps=optim.lr_warmup_steps,
                                 num_training_steps=int(self.trainer.estimated_stepping_batches))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}

    # ---- sampling ---------------------------------------------------------------------------------------
    def pipeline(self) -> GRPosePipeline:
        return GRPosePipeline(self.sd, self.adapter)

    @torch.no_grad()
    def sample(self, prompts, pose_images, seeds, **overrides) -> torch.Tensor:
        """Sample grids: the experiment's sampling settings through the pipeline (and its precision policy)."""
        options = {**sampling_options(self.sampling_cfg, self.model_cfg.conditioning_scale), "progress": False}
        return self.pipeline()(prompts, pose_images, seeds, **{**options, **overrides})
