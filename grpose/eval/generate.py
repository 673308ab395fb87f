"""Evaluation generation: Lightning's predict loop writes one raw PNG per test sample, the real crops and a manifest.

Images come from the sampling pipeline (the same one pose2img.py uses), built from the experiment's frozen base and
the adapter file read by the one adapter loader. Each rank handles its shard (Lightning's distributed sampler);
samples whose PNG already exists are not generated again, so an interrupted run resumes where it stopped.
Per-sample seeds depend only on (base seed, sample id).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any, Optional

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info
from omegaconf import DictConfig
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from grpose.data.datamodule import collate_pose_batch
from grpose.errors import ConfigError, EvalInputError, MissingFileError
from grpose.eval.run_layout import RunLayout, read_manifest, save_png, write_text_atomic
from grpose.pipeline import GRPosePipeline, images_to_uint8, sampling_options
from grpose.precision import torch_dtype
from grpose.sd15 import build_sd15
from grpose.weights.loader import load_adapter


def sample_seed(base_seed: int, sample_id: str) -> int:
    """A 63-bit seed from (base seed, sample id) alone, so an image never depends on batch size, rank or order."""
    digest = hashlib.sha256(f"{int(base_seed)}/{sample_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


# ------------------------------------------------------------------------------------------------ dataset
class IndexedDataset(Dataset):
    """Adds the sample's position (`index`) to each sample: the manifest is ordered by it, and the `paper`
    protocol's batches of consecutive images follow it."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Optional[dict]:
        sample = self.dataset[index]
        return None if sample is None else {**sample, "index": index}


def select_samples(dataset: Dataset, count: int) -> Dataset:
    """The first `count` samples (see grpose.eval.settings.evaluated_count), with their index attached."""
    if count < len(dataset):
        dataset = Subset(dataset, range(count))
    return IndexedDataset(dataset)


def eval_dataloader(dataset: Dataset, batch_size: int, num_workers: int) -> DataLoader:
    # In order and without drop_last; under DDP Lightning swaps the sampler for a distributed one that gives each
    # rank a disjoint shard (no padding duplicates when predicting).
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      persistent_workers=False, collate_fn=collate_pose_batch)


# ------------------------------------------------------------------------------------------------- model
class PipelineGenerator(nn.Module):
    """The sampling pipeline with the experiment's sampling settings. A module, so that Lightning moves the frozen
    base and the adapter to each rank's device."""

    def __init__(self, pipeline: GRPosePipeline, options: dict[str, Any]):
        super().__init__()
        self.unet, self.vae, self.text_encoder = pipeline.parts.unet, pipeline.parts.vae, pipeline.parts.text_encoder
        self.adapter = pipeline.adapter  # None: the base alone
        self.pipeline = pipeline
        self.options = options

    def sample(self, prompts: list[str], pose_images: torch.Tensor, seeds: list[int]) -> torch.Tensor:
        return self.pipeline(prompts, pose_images, seeds, **self.options, progress=False)


def load_generator(cfg: DictConfig, ckpt: Optional[str]) -> PipelineGenerator:
    """The experiment's frozen base + the adapter in `ckpt` (any file the adapter loader reads; its architecture
    must be the config's), sampling with the config's `sampling` settings. `model.adapter: none` samples the base
    alone (no `ckpt`)."""
    adapter = None
    if cfg.model.adapter == "none":
        if ckpt is not None:
            raise ConfigError(f"--ckpt {ckpt} was given, but model.adapter=none samples the base alone; drop one")
    else:
        if ckpt is None:
            raise ConfigError("--ckpt is required: the adapter to evaluate (a train.py checkpoint or an exported "
                              "adapter folder); model.adapter=none evaluates the base alone")
        if not Path(ckpt).expanduser().exists():
            raise MissingFileError(f"--ckpt {ckpt} does not exist; give a checkpoint written by train.py "
                                   f"(experiments/<name>/checkpoints/*.ckpt) or an exported adapter folder")
        adapter = load_adapter(ckpt, expected=cfg.model).requires_grad_(False).eval()
    parts = build_sd15(cfg.model.base, cfg.model.pretrained, torch_dtype=torch_dtype(cfg.model.frozen_dtype))
    pipeline = GRPosePipeline(parts, adapter)
    return PipelineGenerator(pipeline, sampling_options(cfg.sampling, cfg.model.conditioning_scale))


def generation_settings(cfg: DictConfig, generator: PipelineGenerator, ckpt: Optional[str]) -> dict[str, Any]:
    """Everything that decides a generated image besides the sample itself; stored in `generation.json`."""
    s = cfg.sampling
    return {
        "checkpoint": str(Path(ckpt).expanduser().resolve()) if ckpt is not None else None,
        "adapter": cfg.model.adapter,
        "base_model": cfg.model.pretrained,
        "frozen_dtype": cfg.model.frozen_dtype,
        "sampler": type(generator.pipeline.scheduler).__name__,
        "steps": int(s.num_inference_steps),
        "guidance": float(s.guidance_scale),
        "eta": float(s.eta),
        "negative_prompt": s.negative_prompt,
        "conditioning_scale": float(cfg.model.conditioning_scale),
        "base_seed": int(s.seed),
        "resolution": int(cfg.data.resolution),
    }


def check_generation_settings(layout: RunLayout, settings: dict[str, Any]) -> None:
    """A run folder only ever holds images of one set of settings; resuming with others is an error."""
    path = layout.generation_settings
    if path.is_file():
        stored = json.loads(path.read_text(encoding="utf-8"))
        diffs = [f"{k}: {stored.get(k)!r} -> {v!r}" for k, v in settings.items() if stored.get(k) != v]
        if diffs:
            raise ConfigError(f"{layout.run_dir} holds images generated with other settings ({'; '.join(diffs)}). "
                              f"Choose another run name (--run NAME) or delete {layout.images_dir} and {path}.")
    else:
        write_text_atomic(path, json.dumps(settings, indent=2) + "\n")


# ------------------------------------------------------------------------------------------ predict loop
class EvalWriter(pl.LightningModule):
    """Predict-loop module: per batch, writes the real crops and (with a `generator`) the missing generated images,
    and one manifest record per sample; rank 0 merges the records into `manifest.jsonl` at the end.

    Without a generator (score-only), `images_root` is a folder of existing images `<scenario>/<id>.png`: samples
    with an image get a record, the others are left out.
    """

    def __init__(self, layout: RunLayout, generator=None, settings: Optional[dict[str, Any]] = None,
                 images_root: Optional[Path] = None, resolution: Optional[int] = None):
        super().__init__()
        if generator is None and images_root is None:
            raise ValueError("EvalWriter needs a generator or an images_root of existing images")
        self.layout = layout
        self.generator = generator
        self.settings = settings or {}
        self.images_root = Path(images_root) if images_root is not None else layout.images_dir
        self.resolution = resolution
        self.num_generated = self.total_generated = 0  # this rank / all ranks
        self.num_present = self.total_present = 0
        self._part = None

    def _part_path(self, rank: int) -> Path:
        return self.layout.parts_dir / f"rank-{rank:05d}.jsonl"

    def on_predict_start(self) -> None:
        path = self._part_path(self.global_rank)
        path.parent.mkdir(parents=True, exist_ok=True)
        self._part = open(path, "w", encoding="utf-8")

    def predict_step(self, batch: dict[str, Any], batch_idx: int) -> int:
        """Returns how many images this batch generated (kept by nobody: the loop runs without collecting)."""
        ids = [str(i) for i in batch["id"]]
        scenarios = list(batch["scenario"])
        targets = [self.layout.image_path(s, i, self.images_root) for s, i in zip(scenarios, ids)]
        missing = [k for k, path in enumerate(targets) if not path.is_file()]
        self.num_present += len(ids) - len(missing)
        # score-only: a sample without an image in the folder is not evaluated at all
        kept = range(len(ids)) if self.generator is not None else [k for k in range(len(ids)) if k not in missing]

        real_u8 = None
        for k in kept:
            real = self.layout.real_path(scenarios[k], ids[k])
            if not real.is_file():
                real_u8 = images_to_uint8(batch["image"]) if real_u8 is None else real_u8
                save_png(real_u8[k].numpy(), real)

        seeds = [sample_seed(self.settings["base_seed"], i) for i in ids] if self.generator is not None else []
        if self.generator is not None and missing:
            images = self.generator.sample([batch["prompt"][k] for k in missing], batch["hint"][missing],
                                           seeds=[seeds[k] for k in missing])
            for k, image in zip(missing, images_to_uint8(images).numpy()):
                save_png(image, targets[k])
            self.num_generated += len(missing)

        for k in kept:
            sample_id = ids[k]
            if self.generator is None:
                self._check_size(targets[k])
            n = int(batch["num_persons"][k])
            record = {
                "index": int(batch["index"][k]),
                "id": sample_id,
                "scenario": scenarios[k],
                "prompt": batch["prompt"][k],
                "pose_path": batch["pose_path"][k],
                "image": self.layout.relative(targets[k]),
                "real_image": self.layout.relative(self.layout.real_path(scenarios[k], sample_id)),
                "num_persons": n,
                "keypoints": batch["keypoints"][k, :n].cpu().tolist(),
            }
            if self.generator is not None:
                record.update(seed=seeds[k], sampler=self.settings["sampler"], steps=self.settings["steps"],
                              guidance=self.settings["guidance"], eta=self.settings["eta"],
                              negative_prompt=self.settings["negative_prompt"],
                              conditioning_scale=self.settings["conditioning_scale"])
            self._part.write(json.dumps(record) + "\n")
        self._part.flush()
        return len(missing) if self.generator is not None else 0

    def _check_size(self, path: Path) -> None:
        with Image.open(path) as image:
            size = image.size
        if self.resolution is not None and size != (self.resolution, self.resolution):
            raise EvalInputError(f"{path} is {size[0]}x{size[1]} but the dataset's poses are in "
                                 f"{self.resolution}x{self.resolution} pixels; set data.resolution={size[0]} if "
                                 f"the images are square, or resize them")

    def on_predict_end(self) -> None:
        self._part.close()
        self._part = None
        counts = torch.tensor([self.num_generated, self.num_present], device=self.device)
        counts = self.trainer.strategy.reduce(counts, reduce_op="sum")
        self.total_generated, self.total_present = int(counts[0]), int(counts[1])
        self.trainer.strategy.barrier()
        if self.trainer.is_global_zero:
            merge_manifest_parts(self.layout, self.trainer.world_size)
        self.trainer.strategy.barrier()


def merge_manifest_parts(layout: RunLayout, world_size: int) -> list[dict[str, Any]]:
    """Merge the ranks' record files into `manifest.jsonl`, ordered by sample index."""
    records: dict[int, dict[str, Any]] = {}
    for rank in range(world_size):
        part = layout.parts_dir / f"rank-{rank:05d}.jsonl"
        with open(part, encoding="utf-8") as f:
            for line in f:
                record = json.loads(line)
                records[record["index"]] = record
    ordered = [records[i] for i in sorted(records)]
    seen: dict[str, int] = {}
    for record in ordered:
        if record["image"] in seen:
            raise EvalInputError(f"samples {seen[record['image']]} and {record['index']} of the test split map to "
                                 f"the same file {record['image']} (duplicate id {record['id']!r}); ids must be "
                                 f"unique")
        seen[record["image"]] = record["index"]
    write_text_atomic(layout.manifest, "".join(json.dumps(r) + "\n" for r in ordered))
    shutil.rmtree(layout.parts_dir)
    return ordered


def check_images_folder(images: Path, records: list[dict[str, Any]], layout: RunLayout, complete: bool) -> None:
    """Score-only: some PNG must match a test sample and, when the whole split is scored, every PNG of the folder
    must (a file that matches nothing means a wrong layout or naming)."""
    if not records:
        raise MissingFileError(f"--images {images}: no <scenario>/<id>.png file matches a sample of the test split "
                                f"(file names: grpose.eval.run_layout.image_filename(id))")
    if complete:
        matched = {layout.resolve(r["image"]).resolve() for r in records}
        extra = sorted(str(p) for p in Path(images).glob("*/*.png") if p.resolve() not in matched)
        if extra:
            raise EvalInputError(f"--images {images}: {len(extra)} image(s) match no test sample, e.g. "
                                 f"{extra[:3]}; files must be named <scenario>/<id>.png after the dataset's "
                                 f"scenario and id")


def eval_trainer(cfg: DictConfig, layout: RunLayout, generate: bool) -> pl.Trainer:
    """The experiment's accelerator/devices/precision for generation; one CPU process for a score-only data pass."""
    t = cfg.trainer
    # No `precision` here: the pipeline applies the one precision policy itself (grpose.precision).
    hardware = (dict(accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy)
                if generate else dict(accelerator="cpu", devices=1))
    return pl.Trainer(**hardware, logger=False, enable_checkpointing=False, enable_model_summary=False,
                      enable_progress_bar=t.enable_progress_bar, default_root_dir=layout.run_dir)


def run_predict(trainer: pl.Trainer, writer: EvalWriter, dataset: Dataset, batch_size: int,
                num_workers: int) -> Optional[list[dict[str, Any]]]:
    """Run the predict loop; returns the manifest records on rank 0 and None on the other ranks."""
    trainer.predict(writer, dataloaders=eval_dataloader(dataset, batch_size, num_workers), return_predictions=False)
    if writer.generator is not None:
        rank_zero_info(f"generated {writer.total_generated} images; {writer.total_present} were already present")
    return read_manifest(writer.layout.manifest) if trainer.is_global_zero else None
