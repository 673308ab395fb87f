"""Train a pose adapter: `python train.py --config configs/grpose/humanart.yaml [key=value ...] [--resume last]`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

import lightning.pytorch as pl
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from grpose.callbacks import ExportAdapterCallback, SampleGridCallback
from grpose.cli import run
from grpose.config import load_config, save_config
from grpose.errors import MissingFileError, OutputExistsError
from grpose.data.datamodule import BadSampleReporter, PoseDataModule
from grpose.lit_module import GRPoseLitModule


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="YAML preset, e.g. configs/demo.yaml")
    parser.add_argument("--resume", default=None,
                        help="'last' (the run's last.ckpt) or a checkpoint path; restores optimizer, epoch and step")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. trainer.max_steps=100")
    return parser.parse_args(argv)


def resolve_resume(resume: Optional[str], checkpoint_dir: Path) -> Optional[str]:
    if resume is None:
        return None
    path = checkpoint_dir / "last.ckpt" if resume == "last" else Path(resume)
    if not path.is_file():
        raise MissingFileError(f"--resume {resume}: no checkpoint at {path}")
    return str(path)


def refuse_to_mix_runs(checkpoint_dir: Path) -> None:
    """A new run never writes into the checkpoints of an earlier one (its last.ckpt would be shadowed)."""
    if any(checkpoint_dir.glob("*.ckpt")):
        raise OutputExistsError(f"{checkpoint_dir} already holds checkpoints of an earlier run: continue it with "
                              f"--resume last, or start another run with name=<new name> (or delete the folder).")


def main(argv: Optional[list[str]] = None) -> pl.Trainer:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    run_dir = Path(cfg.output_dir) / cfg.name
    checkpoint_dir = run_dir / "checkpoints"
    ckpt_path = resolve_resume(args.resume, checkpoint_dir)
    if ckpt_path is None:
        refuse_to_mix_runs(checkpoint_dir)
    save_config(cfg, run_dir / "config.yaml")
    pl.seed_everything(cfg.trainer.seed, workers=True)

    datamodule = PoseDataModule(cfg.data)
    model = GRPoseLitModule.from_config(cfg)

    t = cfg.trainer
    logger = (TensorBoardLogger(run_dir, name="logs") if t.logger == "tensorboard"
              else CSVLogger(run_dir, name="logs"))
    callbacks = [
        ModelCheckpoint(dirpath=checkpoint_dir, filename="{epoch:04d}-{step:07d}", save_top_k=-1, save_last=True,
                        every_n_epochs=t.checkpoint_every_n_epochs if not t.checkpoint_every_n_steps else None,
                        every_n_train_steps=t.checkpoint_every_n_steps,
                        # A resumed run whose checkpoint cadence changed would otherwise write last-v1.ckpt and
                        # leave last.ckpt behind at the old step, where the next --resume last would start.
                        enable_version_counter=False),
        LearningRateMonitor(logging_interval="step"),
        SampleGridCallback(run_dir / "samples", t.sample_every_n_steps, cfg.sampling.num_images),
        ExportAdapterCallback(run_dir / "adapter"),
        BadSampleReporter(),
    ]
    trainer = pl.Trainer(
        accelerator=t.accelerator, devices=t.devices, num_nodes=t.num_nodes, strategy=t.strategy,
        precision=t.precision, max_epochs=t.max_epochs, max_steps=t.max_steps,
        accumulate_grad_batches=t.accumulate_grad_batches, gradient_clip_val=t.gradient_clip_val,
        log_every_n_steps=t.log_every_n_steps, limit_val_batches=t.limit_val_batches,
        num_sanity_val_steps=t.num_sanity_val_steps, enable_progress_bar=t.enable_progress_bar,
        logger=logger, callbacks=callbacks, default_root_dir=run_dir,
    )
    # weights_only: a resumed checkpoint is a pickle; never run code from it, whatever torch's default is
    trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    return trainer


if __name__ == "__main__":
    sys.exit(run(main))
