"""Lightning callbacks of the training recipe: sample grids (prompt + pose + sample + overlay) and adapter export."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from PIL import Image, ImageDraw

from .data.skeleton import overlay_pose, tensor_to_uint8
from .pipeline import images_to_uint8


MIN_PANEL = 192


def sample_grid(prompts: list[str], poses: torch.Tensor, samples: torch.Tensor) -> Image.Image:
    """One row per example: pose | sample | sample with the pose overlaid, the prompt written under the row."""
    pose_u8 = [tensor_to_uint8(p) for p in poses]
    sample_u8 = images_to_uint8(samples).numpy()
    # tiny demo images are blown up (nearest) so panels and captions stay readable
    size = max(sample_u8.shape[1], MIN_PANEL)
    caption_h = 28
    grid = Image.new("RGB", (3 * size, len(prompts) * (size + caption_h)), "white")
    draw = ImageDraw.Draw(grid)
    for row, (prompt, pose, sample) in enumerate(zip(prompts, pose_u8, sample_u8)):
        top = row * (size + caption_h)
        for col, panel in enumerate((pose, sample, overlay_pose(sample, pose))):
            tile = Image.fromarray(np.ascontiguousarray(panel)).resize((size, size), Image.NEAREST)
            grid.paste(tile, (col * size, top))
        text = textwrap.shorten(prompt or "(empty prompt)", width=max(20, 3 * size // 7))
        draw.text((4, top + size + 4), text, fill="black")
    return grid


class SampleGridCallback(pl.Callback):
    """Every `every_n_steps` optimizer steps and at the end of training, sample a fixed validation batch (DDIM +
    CFG) on rank 0 and save `<run>/samples/step_XXXXXXX.png`; also sent to TensorBoard when it is the logger."""

    def __init__(self, out_dir: str | Path, every_n_steps: int, num_images: int = 4):
        self.out_dir = Path(out_dir)
        self.every_n_steps = every_n_steps
        self.num_images = num_images
        self._batch: Optional[dict[str, Any]] = None
        self._last_step = -1

    def _fixed_batch(self, trainer: pl.Trainer) -> Optional[dict[str, Any]]:
        if self._batch is None:
            datamodule = trainer.datamodule
            if datamodule is None:
                return None
            batch = next(iter(datamodule.val_dataloader()))
            n = min(self.num_images, batch["image"].shape[0])
            self._batch = {"prompt": list(batch["prompt"][:n]), "hint": batch["hint"][:n]}
        return self._batch

    @rank_zero_only
    def write(self, trainer: pl.Trainer, module: pl.LightningModule) -> Optional[Path]:
        step = trainer.global_step
        batch = self._fixed_batch(trainer)
        if batch is None or step == self._last_step:
            return None
        self._last_step = step
        n = len(batch["prompt"])
        samples = module.sample(batch["prompt"], batch["hint"], seeds=list(range(n)))
        grid = sample_grid(batch["prompt"], batch["hint"], samples)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"step_{step:07d}.png"
        grid.save(path)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_image"):
            experiment.add_image("samples", np.asarray(grid), step, dataformats="HWC")
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps > 0 and step > 0 and step % self.every_n_steps == 0:
            self.write(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        self.write(trainer, pl_module)


class ExportAdapterCallback(pl.Callback):
    """At the end of training, write the adapter in diffusers format (`config.json` + safetensors) to `<run>/adapter`."""

    def __init__(self, out_dir: str | Path):
        self.out_dir = Path(out_dir)

    @rank_zero_only
    def on_train_end(self, trainer, pl_module) -> None:
        pl_module.adapter.save_pretrained(self.out_dir, safe_serialization=True)
