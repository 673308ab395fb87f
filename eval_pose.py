"""Evaluate a pose adapter: generate one image per test sample, then AP/SAP/PCE, FID/KID and CLIP-Score.

    python eval_pose.py --config configs/grpose/humanart.yaml --ckpt CKPT [--protocol paper|standard] [--limit N]
    python eval_pose.py --config CFG --score-only --images DIR      # score DIR/<scenario>/<id>.png
    python eval_pose.py --config CFG --score-only --protocol standard   # re-score the run's images
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from grpose.cli import run
from grpose.config import load_config
from grpose.data.datamodule import PoseDataModule
from grpose.errors import MissingFileError
from grpose.eval.alignment_report import write_alignment_report
from grpose.eval.compare import refuse_mixed_scoring
from grpose.eval.generate import (EvalWriter, check_generation_settings, check_images_folder, eval_trainer,
                                  generation_settings, load_generator, run_predict, select_samples)
from grpose.eval.report import check_scoring_weights, score_run, write_report
from grpose.eval.run_layout import RunLayout, read_manifest
from grpose.eval.settings import evaluated_count, resolve_eval_settings


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the experiment's YAML preset (data, model, sampling)")
    parser.add_argument("--ckpt", help="train.py checkpoint (.ckpt) or exported adapter folder / .safetensors "
                                       "(not with model.adapter=none, which evaluates the base alone)")
    parser.add_argument("--protocol", choices=("paper", "standard"), help="metric protocol (default: paper)")
    parser.add_argument("--limit", type=int, help="evaluate only the first N test samples")
    parser.add_argument("--metrics", help="comma-separated subset of pose,quality,clip; 'none' only generates")
    parser.add_argument("--run", help="run name: outputs/<run>/ (default: the config's name; score-only: DIR's name)")
    parser.add_argument("--score-only", action="store_true", help="score existing images instead of generating")
    parser.add_argument("--images", help="with --score-only: a folder of <scenario>/<id>.png images to score "
                                         "(without it, --score-only re-scores the run's own images)")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides; eval.* keys set evaluation options")
    args = parser.parse_intermixed_args(argv)  # key=value overrides may sit between flags
    if args.images is not None and not args.score_only:
        parser.error("--images is only used with --score-only")
    return args


def main(argv: Optional[list[str]] = None, quality_feature: Optional[nn.Module] = None,
         pose_estimator=None) -> Optional[dict[str, Any]]:
    """Returns the report on rank 0 (None on other ranks). `quality_feature`: an nn.Module to use instead of
    Inception for FID/KID (tests, custom feature networks); `pose_estimator`: an object with `.predict` to use
    instead of the configured MMPose evaluator (tests)."""
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    metrics = None if args.metrics is None else [m for m in args.metrics.split(",") if m and m != "none"]
    eval_cfg = resolve_eval_settings(cfg, images=args.images, protocol=args.protocol, num_samples=args.limit,
                                     metrics=metrics, run_name=args.run)
    layout = RunLayout(Path(eval_cfg.output_dir) / eval_cfg.run_name)
    check_scoring_weights(eval_cfg, quality_feature, pose_estimator)  # before hours of generation, not after
    refuse_mixed_scoring(layout.metrics_json, eval_cfg.pose_evaluator, eval_cfg.metrics)

    # 1. images + manifest: generate (every rank its shard), or take a folder of images, or re-score this run
    if args.score_only and args.images is None:
        records, settings = rescore_run(layout, eval_cfg)
    else:
        records, settings = images_and_manifest(args, cfg, eval_cfg, layout)
    if records is None:  # not rank 0: scoring happens there
        return None
    if not eval_cfg.metrics:
        print(f"{len(records)} images in {layout.run_dir}; no metrics requested")
        return {"run": layout.run_dir.name, "num_images": len(records)}

    # 2. score (rank 0)
    device = "cuda" if torch.cuda.is_available() and cfg.trainer.accelerator != "cpu" else "cpu"
    results = score_run(records, layout, eval_cfg, image_size=cfg.data.resolution, device=device,
                        quality_feature=quality_feature, pose_estimator=pose_estimator,
                        progress=cfg.trainer.enable_progress_bar)

    # 3. report
    report = write_report(layout, layout.run_dir.name, results, records, eval_cfg, cfg, settings)
    print(layout.metrics_md.read_text(encoding="utf-8"))
    if "pose" in results and eval_cfg.alignment_report:
        index = write_alignment_report(layout.run_dir, report, records, eval_cfg.alignment_max_images)
        print(f"alignment report: {index}")
    return report


def images_and_manifest(args: argparse.Namespace, cfg, eval_cfg, layout: RunLayout):
    """(manifest records on rank 0 / None elsewhere, generation settings or None for a folder of images)."""
    test_split = PoseDataModule(cfg.data).test_dataset()
    dataset = select_samples(test_split, evaluated_count(len(test_split), eval_cfg))
    settings = None
    if args.score_only:
        images = Path(args.images)
        if not images.is_dir():
            raise MissingFileError(f"--images {images} is not a folder of <scenario>/<id>.png images")
        writer = EvalWriter(layout, images_root=images, resolution=cfg.data.resolution)
    else:
        generator = load_generator(cfg, args.ckpt)
        settings = generation_settings(cfg, generator, args.ckpt)
        check_generation_settings(layout, settings)
        writer = EvalWriter(layout, generator=generator, settings=settings)
    trainer = eval_trainer(cfg, layout, generate=not args.score_only)
    records = run_predict(trainer, writer, dataset, eval_cfg.batch_size, cfg.data.num_workers)
    if records is not None and args.score_only:
        check_images_folder(images, records, layout, complete=eval_cfg.num_samples is None and not eval_cfg.drop_last)
    del writer, trainer  # frees the generator before scoring
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return records, settings


def rescore_run(layout: RunLayout, eval_cfg):
    """Score a generated run again (e.g. with the other protocol) from its manifest; nothing is regenerated."""
    records = read_manifest(layout.manifest)
    count = evaluated_count(len(records), eval_cfg)
    records = [r for r in records if r["index"] < count]
    settings_file = layout.generation_settings
    settings = json.loads(settings_file.read_text(encoding="utf-8")) if settings_file.is_file() else None
    return records, settings


if __name__ == "__main__":
    sys.exit(run(main))
