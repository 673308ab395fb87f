"""Lightning data module: the configured dataset's training and evaluation splits, batched by the batch contract.

`cfg.data.dataset` picks synthetic (built in memory), humanart or laion_human (HumanSD layout under `cfg.data.root`).
The evaluation split (center crop, no prompt dropout) serves validation sample grids and `eval_pose.py`.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch.utils.data import DataLoader, Dataset, Subset

from grpose.data.humanart import BadSampleError, HumanSDPoseDataset
from grpose.data.laion_human import LaionHumanDataset
from grpose.data.synthetic import SYNTHETIC_SCENES, SyntheticPoseDataset
from grpose.errors import ConfigError

# Fixed and different, so the synthetic evaluation figures are never training figures.
SYNTHETIC_TRAIN_SEED = 0
SYNTHETIC_EVAL_SEED = 1

SKIPPED_KEY = "num_skipped"  # batch entry: samples of this batch dropped as unreadable (skip_bad_samples)


def collate_pose_batch(samples: Sequence[Optional[dict]]) -> dict[str, Any]:
    """Stack tensors, turn ints into a LongTensor, keep strings as lists; drop `None` (skipped bad) samples."""
    kept = [s for s in samples if s is not None]
    if not kept:
        raise BadSampleError(f"all {len(samples)} samples of a batch were unreadable; check the dataset with "
                             f"`python scripts/check_dataset.py ROOT MAPPING`")
    batch: dict[str, Any] = {}
    for key, first in kept[0].items():
        values = [s[key] for s in kept]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, str):
            batch[key] = list(values)
        elif isinstance(first, int):
            batch[key] = torch.tensor(values, dtype=torch.long)
        else:
            raise TypeError(f"cannot collate sample field {key!r} of type {type(first).__name__}")
    batch[SKIPPED_KEY] = len(samples) - len(kept)
    return batch


class BadSampleReporter(pl.Callback):
    """Counts training samples skipped as unreadable (data.skip_bad_samples) and reports them every epoch."""

    def __init__(self) -> None:
        self.epoch_count = 0
        self.total = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict):
            self.epoch_count += int(batch.get(SKIPPED_KEY, 0))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        count = torch.tensor(float(self.epoch_count), device=pl_module.device)
        count = int(trainer.strategy.reduce(count, reduce_op="sum").item())  # every rank calls this hook
        self.total += count
        self.epoch_count = 0
        pl_module.log("data/bad_samples", float(count), on_step=False, on_epoch=True, rank_zero_only=True)
        if count:
            rank_zero_warn(f"epoch {trainer.current_epoch}: skipped {count} unreadable samples ({self.total} so far); "
                           f"run scripts/check_dataset.py to list them")
        else:
            rank_zero_info(f"epoch {trainer.current_epoch}: no unreadable samples")


def _filter_synthetic(dataset: SyntheticPoseDataset, scenarios: Sequence[str]) -> Dataset:
    unknown = [s for s in scenarios if s not in SYNTHETIC_SCENES]
    if not scenarios or unknown:
        raise ConfigError(f"unknown scenario(s) {unknown or list(scenarios)} for the synthetic dataset; its "
                         f"scenarios: {', '.join(SYNTHETIC_SCENES)}")
    return Subset(dataset, [i for i in range(len(dataset)) if dataset.scenario_of(i) in set(scenarios)])


class PoseDataModule(pl.LightningDataModule):
    """Builds datasets lazily from `cfg.data` (see `grpose.config.DataConfig`)."""

    def __init__(self, data_cfg) -> None:
        super().__init__()
        self.cfg = data_cfg
        self._train: Optional[Dataset] = None
        self._eval: Optional[Dataset] = None

    def _build(self, train: bool) -> Dataset:
        cfg = self.cfg
        scenarios = None if train or cfg.scenarios is None else list(cfg.scenarios)
        if cfg.dataset == "synthetic":
            dataset = SyntheticPoseDataset(
                num_samples=cfg.synthetic_train_size if train else cfg.synthetic_val_size,
                resolution=cfg.resolution,
                max_persons=cfg.max_persons,
                seed=SYNTHETIC_TRAIN_SEED if train else SYNTHETIC_EVAL_SEED,
                prompt_dropout=cfg.prompt_dropout if train else 0.0,
                skeleton_width=cfg.skeleton_width,
                score_threshold=cfg.score_threshold,
            )
            return dataset if scenarios is None else _filter_synthetic(dataset, scenarios)
        classes = {"humanart": HumanSDPoseDataset, "laion_human": LaionHumanDataset}
        if cfg.dataset not in classes:
            raise ConfigError(f"data.dataset={cfg.dataset!r} is not one of synthetic, {', '.join(classes)}")
        return classes[cfg.dataset](
            root=cfg.root,
            mapping_file=cfg.train_mapping if train else cfg.val_mapping,
            resolution=cfg.resolution,
            train=train,
            prompt_dropout=cfg.prompt_dropout if train else 0.0,
            max_persons=cfg.max_persons,
            score_threshold=cfg.score_threshold,
            skeleton_width=cfg.skeleton_width,
            scenarios=scenarios,
            skip_bad_samples=cfg.skip_bad_samples,
        )

    def setup(self, stage: Optional[str] = None) -> None:
        if stage in (None, "fit"):
            self.train_dataset()
        self.test_dataset()

    def train_dataset(self) -> Dataset:
        if self._train is None:
            self._train = self._build(train=True)
        return self._train

    def test_dataset(self) -> Dataset:
        """The evaluation split (center crop, no prompt dropout, `data.scenarios` applied)."""
        if self._eval is None:
            self._eval = self._build(train=False)
        return self._eval

    def _loader(self, dataset: Dataset, batch_size: int, train: bool) -> DataLoader:
        workers = int(self.cfg.num_workers)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train,
            drop_last=train,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            collate_fn=collate_pose_batch,
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.train_dataset()
        if len(dataset) < self.cfg.batch_size:
            raise ConfigError(f"the training set has {len(dataset)} samples, fewer than data.batch_size="
                             f"{self.cfg.batch_size}; with drop_last there would be no batch")
        return self._loader(dataset, self.cfg.batch_size, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset(), self.cfg.val_batch_size, train=False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_dataset(), self.cfg.val_batch_size, train=False)
