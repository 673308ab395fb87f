"""Scoring a run's manifest with the metric modules (pose, FID/KID, CLIP-Score) and writing `metrics.json` plus a
markdown report shaped like GRPose paper Table 1 with a per-scenario table.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import os
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from omegaconf import DictConfig, OmegaConf
from torch import nn
from tqdm.auto import tqdm

from grpose.errors import EvalInputError, MissingFileError
from grpose.eval.finite_inputs import nonfinite_report_lines
from grpose.eval.run_layout import RunLayout

TABLE1_COLUMNS = ("AP", "SAP", "PCE", "FID", "KID", "CLIP-Score")


# ------------------------------------------------------------------------------------------------ weights
def check_scoring_weights(eval_cfg: DictConfig, quality_feature: Optional[nn.Module] = None,
                          pose_estimator=None) -> None:
    """Fail before any image is generated when a metric's weights or extras are missing (each module's own error)."""
    metrics = set(eval_cfg.metrics)
    if "pose" in metrics and pose_estimator is None:
        from grpose.eval.pose_estimator import checkpoint_hint, require_mmpose, resolve_mmpose_config

        require_mmpose()
        if eval_cfg.pose_evaluator == "vitpose_topdown":
            config, checkpoint, key = eval_cfg.vitpose_config, eval_cfg.vitpose_checkpoint, "vitpose_checkpoint"
            if not str(config).startswith("vitpose_"):
                config = resolve_mmpose_config(config)
        else:
            config = resolve_mmpose_config(eval_cfg.pose_estimator_config)
            checkpoint, key = eval_cfg.pose_estimator_checkpoint, "pose_estimator_checkpoint"
        if checkpoint is not None and not Path(checkpoint).expanduser().is_file():
            hint = checkpoint_hint(f"{config}.py" if str(config).startswith("vitpose_") else config)
            raise MissingFileError(f"eval.{key}: {checkpoint} does not exist. Download {hint} and point "
                                    f"eval.{key} at it.")
    if "quality" in metrics and quality_feature is None and eval_cfg.quality_feature_config is None:
        from grpose.eval.quality import resolve_inception_weights

        resolve_inception_weights(eval_cfg.inception_weights)
    if "clip" in metrics:
        from grpose.eval.clip_score import clip_loader

        clip_loader(eval_cfg.clip_model)


def build_pose_estimator(eval_cfg: DictConfig, device: str):
    """The bottom-up evaluator (the `paper` protocol feeds it channel-swapped images as the release did), or
    SP-Ctrl's top-down ViTPose on boxes from the conditioning poses (`eval.pose_evaluator`)."""
    from grpose.eval.pose_estimator import BottomUpPoseEstimator, TopDownPoseEstimator

    if eval_cfg.pose_evaluator == "vitpose_topdown":
        return TopDownPoseEstimator(eval_cfg.vitpose_config, eval_cfg.vitpose_checkpoint, device=device,
                                    flip_test=eval_cfg.flip_test)

    return BottomUpPoseEstimator(eval_cfg.pose_estimator_config, eval_cfg.pose_estimator_checkpoint, device=device,
                                 flip_test=eval_cfg.flip_test, pose_nms_thr=eval_cfg.pose_nms_thr,
                                 swap_rgb_bgr=eval_cfg.protocol == "paper")


def quality_feature_network(eval_cfg: DictConfig, device: str):
    """FID/KID's feature network: a pose backbone when `eval.quality_feature_config` names one, else the Inception
    weights file (None: the torch hub cache)."""
    if eval_cfg.quality_feature_config is None:
        return eval_cfg.inception_weights
    from grpose.eval.pose_estimator import PooledPoseFeatures

    return PooledPoseFeatures(eval_cfg.quality_feature_config, eval_cfg.quality_feature_checkpoint,
                              eval_cfg.quality_feature_size).to(device)


# ------------------------------------------------------------------------------------------------ scoring
def _by_scenario(records: Sequence[dict[str, Any]]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for position, record in enumerate(records):
        groups[record["scenario"]].append(position)
    return dict(sorted(groups.items()))


def gt_poses(record: dict[str, Any]) -> np.ndarray:
    """The conditioning persons of a manifest record as [P, 17, 3] in the generated image's pixels."""
    return np.asarray(record["keypoints"], dtype=np.float64).reshape(-1, 17, 3)


def score_pose(records: Sequence[dict[str, Any]], layout: RunLayout, estimator, protocol: str,
               paper_batch_size: int, image_size: int, min_scenario_images: int,
               progress: bool = True, bootstrap=None, evaluator: str = "higherhrnet_bottomup") -> dict[str, Any]:
    """AP/SAP/PCE over all images (manifest order) and per scenario; detections are computed once per image and
    stored in the run's `detections.json`. `bootstrap` (BootstrapSettings) adds their intervals."""
    from grpose.eval.alignment_report import write_detections
    from grpose.eval.pose_metrics import pose_metrics
    from grpose.eval.quality import load_image

    poses = [gt_poses(r) for r in records]
    detections = []
    top_down = getattr(estimator, "needs_person_boxes", False)  # top-down: boxes from the conditioning poses
    for record, pose in tqdm(zip(records, poses), total=len(records), desc="pose detection", unit="img",
                             disable=not progress):
        image = load_image(layout.resolve(record["image"]))
        detections.extend(estimator.predict([image], [pose]) if top_down else estimator.predict([image]))
    write_detections(layout.run_dir / "detections.json", records, detections, evaluator)

    def metrics(positions: Sequence[int]) -> dict[str, Any]:
        return pose_metrics([poses[i] for i in positions], [detections[i] for i in positions], protocol=protocol,
                            batch_size=paper_batch_size, image_size=image_size)

    result = metrics(range(len(records)))
    result["num_detections"] = int(sum(len(d) for d in detections))
    groups = {name: positions for name, positions in _by_scenario(records).items()
              if len(positions) >= min_scenario_images}
    result["scenarios"] = {name: metrics(positions) for name, positions in groups.items()}
    if bootstrap is not None:
        from grpose.eval.intervals import pose_intervals

        result["intervals"] = pose_intervals(poses, detections, {"all": list(range(len(records))), **groups},
                                             {"all": result, **result["scenarios"]}, protocol, paper_batch_size,
                                             image_size, bootstrap)
    return result


def score_quality(records: Sequence[dict[str, Any]], layout: RunLayout, protocol: str, kid_scale: float,
                  min_scenario_images: int, feature: nn.Module | str | None, device: str,
                  progress: bool = True, bootstrap=None) -> dict[str, Any]:
    """FID/KID per scenario against that scenario's real crops, then the mean over scenarios (QualityMetrics)."""
    from grpose.eval.quality import QualityMetrics

    groups = _by_scenario(records)
    kept = {name: positions for name, positions in groups.items() if len(positions) >= min_scenario_images}
    if not kept:
        raise EvalInputError(f"FID/KID: no scenario has at least {min_scenario_images} images "
                             f"(eval.min_scenario_images); "
                             f"evaluate more samples or drop 'quality' from eval.metrics")
    scenarios = {
        name: ([layout.resolve(records[i]["real_image"]) for i in positions],
               [layout.resolve(records[i]["image"]) for i in positions])
        for name, positions in kept.items()
    }
    quality = QualityMetrics(protocol=protocol, feature=feature, kid_scale=kid_scale, device=device,
                             progress=progress)
    result = quality.evaluate(scenarios)
    result["skipped_scenarios"] = sorted(set(groups) - set(kept))
    if bootstrap is not None:
        from grpose.eval.intervals import quality_intervals

        result["intervals"] = quality_intervals(quality.features, result, kid_scale, bootstrap)
    return result


def score_clip(records: Sequence[dict[str, Any]], layout: RunLayout, model_path: str, protocol: str,
               paper_batch_size: int, device: str, progress: bool = True, bootstrap=None) -> dict[str, Any]:
    from grpose.eval.clip_score import clip_score

    batch_size = paper_batch_size if protocol == "paper" else 64  # standard: batching does not change the score
    value, per_image = clip_score([layout.resolve(r["image"]) for r in records], [r["prompt"] for r in records],
                                  model_path, batch_size=batch_size, protocol=protocol, device=device,
                                  progress=progress, return_per_image=True)
    result = {"CLIP-Score": value, "num_images": len(records)}
    if bootstrap is not None:
        from grpose.eval.intervals import clip_interval

        result["interval"] = clip_interval(per_image, protocol, paper_batch_size, value, bootstrap)
    return result


def score_run(records: Sequence[dict[str, Any]], layout: RunLayout, eval_cfg: DictConfig, image_size: int,
              device: str = "cpu", quality_feature: Optional[nn.Module] = None, pose_estimator=None,
              progress: bool = True) -> dict[str, Any]:
    """Every metric of `eval_cfg.metrics` on the manifest records. `quality_feature` replaces Inception and
    `pose_estimator` (anything with `.predict(list of uint8 RGB arrays)`) the configured estimator."""
    if not records:
        raise EvalInputError(f"{layout.run_dir}: no images to score")
    from grpose.eval.intervals import bootstrap_settings

    protocol = eval_cfg.protocol
    bootstrap = bootstrap_settings(eval_cfg)
    results: dict[str, Any] = {}
    if "pose" in eval_cfg.metrics:
        estimator = pose_estimator if pose_estimator is not None else build_pose_estimator(eval_cfg, device)
        results["pose"] = score_pose(records, layout, estimator, protocol, eval_cfg.paper_batch_size, image_size,
                                     eval_cfg.min_scenario_images, progress, bootstrap, eval_cfg.pose_evaluator)
    if "quality" in eval_cfg.metrics:
        feature = quality_feature if quality_feature is not None else quality_feature_network(eval_cfg, device)
        results["quality"] = score_quality(records, layout, protocol, float(eval_cfg.kid_scale),
                                           eval_cfg.min_scenario_images, feature, device, progress, bootstrap)
    if "clip" in eval_cfg.metrics:
        results["clip"] = score_clip(records, layout, eval_cfg.clip_model, protocol, eval_cfg.paper_batch_size,
                                     device, progress, bootstrap)
    return results


# ------------------------------------------------------------------------------------------------- report
def _finite(value: Any) -> Optional[float]:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def table1_row(results: dict[str, Any]) -> dict[str, Optional[float]]:
    """Paper Table 1 numbers: AP and SAP x100, PCE as is, FID, KID (already x kid_scale), CLIP-Score.
    A metric that was not computed is absent; one that is undefined (no GT, too few images) is None."""
    row: dict[str, Optional[float]] = {}
    pose, quality, clip = results.get("pose"), results.get("quality"), results.get("clip")
    if pose is not None:
        row["AP"] = None if _finite(pose["AP"]) is None else 100.0 * pose["AP"]
        row["SAP"] = None if _finite(pose["SAP"]) is None else 100.0 * pose["SAP"]
        row["PCE"] = _finite(pose["PCE"])
    if quality is not None:
        row["FID"] = _finite(quality["FID"])
        row["KID"] = _finite(quality["KID"])
    if clip is not None:
        row["CLIP-Score"] = _finite(clip["CLIP-Score"])
    return row


def _json_safe(value: Any) -> Any:
    """NaN/inf become null so metrics.json is strict JSON; numpy scalars become Python numbers."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return _finite(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def _fmt(row: dict[str, Any], key: str, intervals: Optional[dict[str, Any]] = None) -> str:
    from grpose.eval.intervals import format_value

    if key not in row:
        return "–"  # not computed
    return format_value(row[key], (intervals or {}).get(key))


def render_markdown(report: dict[str, Any]) -> str:
    """The Table 1 row of this run plus a per-scenario table."""
    row = report["table1"]
    intervals = report.get("intervals") or {}
    evaluator = (f" · pose evaluator `{report['pose_evaluator']}`"
                 if "pose" in report and "pose_evaluator" in report else "")
    lines = [
        f"# Evaluation of `{report['run']}`",
        "",
        f"Protocol `{report['protocol']}`{evaluator} · {report['num_images']} images in "
        f"{len(report['scenario_counts'])} scenario(s) · AP and SAP ×100 · KID ×{report['kid_scale']:g}",
        "",
        "| Method | " + " | ".join(TABLE1_COLUMNS) + " |",
        "|:--" + "|--:" * len(TABLE1_COLUMNS) + "|",
        f"| {report['run']} | " + " | ".join(_fmt(row, c, intervals.get("table1")) for c in TABLE1_COLUMNS) + " |",
        "",
        *nonfinite_report_lines(report.get("pose")),
    ]
    if intervals.get("settings"):
        b = intervals["settings"]
        lines += [f"± is the half-width of the {100 * b['confidence']:g}% percentile bootstrap interval "
                  f"({b['resamples']} resamples over images, or over batches under the `paper` protocol; "
                  f"{b['quality_resamples']} for FID/KID; seed {b['seed']}); metrics.json holds its bounds.", ""]
    pose_scen = (report.get("pose") or {}).get("scenarios", {})
    quality_scen = (report.get("quality") or {}).get("scenarios", {})
    names = sorted(set(pose_scen) | set(quality_scen))
    if names:
        lines += ["## Per scenario", "", "| Scenario | Images | AP | PCE | FID | KID |", "|:--|--:|--:|--:|--:|--:|"]
        for name in names:
            cells: dict[str, Optional[float]] = {}
            if "pose" in report:
                ap = pose_scen.get(name, {}).get("AP")
                cells["AP"] = None if _finite(ap) is None else 100.0 * ap
                cells["PCE"] = _finite(pose_scen.get(name, {}).get("PCE"))
            if "quality" in report:
                cells["FID"] = _finite(quality_scen.get(name, {}).get("FID"))
                cells["KID"] = _finite(quality_scen.get(name, {}).get("KID"))
            scen_iv = (intervals.get("scenarios") or {}).get(name)
            lines.append(f"| {name} | {report['scenario_counts'][name]} | "
                         + " | ".join(_fmt(cells, c, scen_iv) for c in ("AP", "PCE", "FID", "KID")) + " |")
        lines.append("")
    skipped = sorted(set(report["scenario_counts"]) - set(names))
    if skipped and ("pose" in report or "quality" in report):
        lines += [f"Left out of the per-scenario metrics (fewer than {report['eval']['min_scenario_images']} "
                  f"images): {', '.join(skipped)}.", ""]
    lines += ["`–`: not computed; `n/a`: undefined (no ground-truth person, or too few images for KID's subset "
              "size). Protocols: docs/evaluation.md.", ""]
    return "\n".join(lines)


def write_report(layout: RunLayout, run: str, results: dict[str, Any], records: Sequence[dict[str, Any]],
                 eval_cfg: DictConfig, cfg: Optional[DictConfig] = None,
                 generation: Optional[dict[str, Any]] = None) -> dict[str, Any]:
    """Write `metrics.json` (all numbers, protocol, counts, settings) and `metrics.md`; returns the report."""
    counts: dict[str, int] = defaultdict(int)
    for record in records:
        counts[record["scenario"]] += 1
    report = {
        "run": run,
        "protocol": eval_cfg.protocol,
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "num_images": len(records),
        "scenario_counts": dict(sorted(counts.items())),
        "kid_scale": float(eval_cfg.kid_scale),
        "pose_evaluator": eval_cfg.pose_evaluator,
        "table1": table1_row(results),
        "intervals": _intervals_section(results, eval_cfg),
        **results,
        "eval": OmegaConf.to_container(eval_cfg, resolve=True),
        "generation": generation,
        "config": OmegaConf.to_container(cfg, resolve=True) if cfg is not None else None,
    }
    report = _json_safe(report)
    _write(layout.metrics_json, json.dumps(report, indent=2) + "\n")
    _write(layout.metrics_md, render_markdown(report))
    return report


def _intervals_section(results: dict[str, Any], eval_cfg: DictConfig) -> Optional[dict[str, Any]]:
    from grpose.eval.intervals import bootstrap_settings, table1_intervals

    bootstrap = bootstrap_settings(eval_cfg)
    return None if bootstrap is None else {**table1_intervals(results), "settings": bootstrap.as_dict()}


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
