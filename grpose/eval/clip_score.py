"""CLIP-Score between generated images and their prompts (torchmetrics ``CLIPScore``, 100 x cosine) with a CLIP
model loaded offline from a local folder.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from grpose.eval.quality import ImageItem, load_image
from ..errors import MissingFileError

DEFAULT_CLIP_MODEL = "openai/clip-vit-base-patch16"
#: The lineage (Stable-Pose's text metric) cuts prompts to 77 *characters* before scoring.
PAPER_PROMPT_CHARS = 77
PROTOCOLS = ("standard", "paper")


class _TruncatingProcessor:
    """CLIPProcessor whose tokenizer truncates to the text tower's length.

    torchmetrics tokenises with ``padding=True`` only and, for a caption longer than the position table, cuts the
    token ids afterwards, which drops the end-of-text token that CLIP pools the text embedding from. Truncating in
    the tokenizer keeps it.
    """

    def __init__(self, processor: Any, max_length: int) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("text") is not None:
            kwargs.setdefault("truncation", True)
            kwargs.setdefault("max_length", self.max_length)
        return self.processor(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.processor, name)


def clip_loader(model_path: str | os.PathLike) -> Callable[[], tuple[Any, Any]]:
    """A callable returning ``(CLIPModel, processor)`` from a local folder, the form torchmetrics accepts offline."""
    path = Path(model_path).expanduser()
    if not path.is_dir():
        raise MissingFileError(
            f"CLIP model folder {path} does not exist. Download {DEFAULT_CLIP_MODEL} into it on a machine with "
            f"internet, e.g. `hf download {DEFAULT_CLIP_MODEL} --local-dir {path}` "
            f"(older huggingface_hub: `huggingface-cli download {DEFAULT_CLIP_MODEL} --local-dir {path}`)."
        )

    def load() -> tuple[Any, Any]:
        from transformers import CLIPModel, CLIPProcessor

        try:
            model = CLIPModel.from_pretrained(path, local_files_only=True)
            processor = CLIPProcessor.from_pretrained(path, local_files_only=True)
        except OSError as err:
            raise OSError(
                f"CLIP model folder {path} is incomplete ({err}). It must hold a transformers CLIPModel and its "
                f"CLIPProcessor files, e.g. a download of {DEFAULT_CLIP_MODEL}."
            ) from err
        model.eval().requires_grad_(False)
        return model, _TruncatingProcessor(processor, model.config.text_config.max_position_embeddings)

    return load


def _image_tensor(item: ImageItem, device: torch.device) -> torch.Tensor:
    # uint8 CHW: CLIPImageProcessor rescales by 1/255 itself; a float [0, 1] input would be rescaled twice.
    return torch.from_numpy(np.ascontiguousarray(load_image(item))).permute(2, 0, 1).to(device)


def clip_score(
    images: Iterable[ImageItem],
    prompts: Sequence[str],
    model_path: str | os.PathLike,
    batch_size: int = 32,
    protocol: str = "standard",
    device: str | torch.device = "cpu",
    progress: bool = True,
    return_per_image: bool = False,
) -> float | tuple[float, np.ndarray]:
    """CLIP-Score x100 of images (uint8 HxWx3 arrays or file paths) against their prompts, in [0, 100].

    torchmetrics ``CLIPScore`` scores each pair 100 * cos(E_image, E_text) and reports max(mean, 0).
    ``standard``: one score over the whole set. ``paper``: prompts cut to 77 characters and the score computed per
    batch of ``batch_size`` then averaged over batches, as the lineage did.
    ``return_per_image``: also return the per-image scores (100 x cosine, unclipped), for bootstrap intervals.
    """
    from torchmetrics.functional.multimodal.clip_score import _clip_score_update
    from torchmetrics.multimodal.clip_score import CLIPScore

    if protocol not in PROTOCOLS:
        raise ValueError(f"clip_score: protocol must be one of {PROTOCOLS}, got {protocol!r}.")
    if batch_size < 1:
        raise ValueError(f"clip_score: batch_size must be >= 1, got {batch_size}.")
    prompts = [p[:PAPER_PROMPT_CHARS] if protocol == "paper" else p for p in prompts]
    device = torch.device(device)
    metric = CLIPScore(model_name_or_path=clip_loader(model_path)).to(device)

    batch_means: list[float] = []
    per_image: list[np.ndarray] = []
    n_images = 0
    image_iter = iter(images)
    with tqdm(total=len(prompts), desc="CLIP-Score", unit="img", disable=not progress) as bar:
        for start in range(0, len(prompts), batch_size):
            batch_prompts = prompts[start : start + batch_size]
            batch_images = []
            for _ in batch_prompts:
                try:
                    batch_images.append(_image_tensor(next(image_iter), device))
                except StopIteration:
                    raise ValueError(
                        f"clip_score: {len(prompts)} prompts but only {start + len(batch_images)} images."
                    ) from None
            # what CLIPScore.update does, keeping the per-pair scores it sums
            scores, n_pairs = _clip_score_update(batch_images, batch_prompts, metric.model, metric.processor)
            metric.score += scores.sum(0)
            metric.n_samples += n_pairs
            per_image.append(scores.detach().cpu().double().numpy().reshape(-1))
            batch_means.append(float(scores.sum(0)) / n_pairs)
            n_images += len(batch_images)
            bar.update(len(batch_images))
    if next(image_iter, None) is not None:
        raise ValueError(f"clip_score: more images than the {len(prompts)} prompts given.")
    if n_images == 0:
        raise ValueError("clip_score: no images given.")
    # standard: what CLIPScore.compute returns, max(mean, 0) over all pairs
    overall = max(float(metric.score) / float(metric.n_samples), 0.0)
    value = float(np.mean([max(m, 0.0) for m in batch_means])) if protocol == "paper" else overall
    return (value, np.concatenate(per_image)) if return_per_image else value
