"""Non-finite (NaN / inf) keypoints kept away from COCOeval, counted, and reported in metrics.json and metrics.md.

COCOeval skips a GT/detection pair only when `oks < threshold`; an OKS of NaN compares false, so a detection with a
single NaN coordinate matches its person at every threshold (pycocotools and xtcocotools alike). The guard below
runs before both protocols build their COCO dicts.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

DROPPED_DETECTIONS = "dropped_nonfinite_detections"
DROPPED_GT_KEYPOINTS = "dropped_nonfinite_gt_keypoints"
NONFINITE_KEYS = (DROPPED_DETECTIONS, DROPPED_GT_KEYPOINTS)

# How a missing keypoint is stored in the batch contract; a non-finite GT keypoint becomes one.
_MISSING = (-1.0, -1.0, 0.0)


def _finite_detection(det: Any) -> bool:
    """False only for a well-formed detection holding a NaN/inf; malformed ones are left to pose_metrics' checks."""
    try:
        kpts, score = det
        kpts = np.asarray(kpts, dtype=np.float64)
        score = float(score)
    except (TypeError, ValueError):
        return True
    return bool(np.isfinite(kpts).all()) and math.isfinite(score)


def _finite_gt(poses: Any) -> tuple[Any, int]:
    """`poses` with every keypoint that has a non-finite x, y or score set to missing, and how many were."""
    try:
        arr = np.asarray(poses, dtype=np.float64)
    except (TypeError, ValueError):
        return poses, 0
    if arr.size == 0 or arr.shape[-1] != 3:
        return poses, 0
    bad = ~np.isfinite(arr).all(axis=-1)
    if not bad.any():
        return poses, 0
    arr = arr.copy()
    arr[bad] = _MISSING
    return arr, int(bad.sum())


def drop_nonfinite(
    gt_poses: Sequence[Any], detections: Sequence[Sequence[Any]]
) -> tuple[list[Any], list[list[Any]], dict[str, int]]:
    """Inputs of `pose_metrics` without NaN/inf, and the counts of what was removed (a warning when any was).

    - A detection with any non-finite number (x, y or score of any keypoint, or the person score) is dropped
      whole, before AP, SAP and PCE: the estimator produced no usable person there, and no single coordinate of
      it can be trusted to match.
    - A GT keypoint with a non-finite x, y or score is treated as missing, (-1, -1, 0), the way COCO treats an
      unlabelled keypoint (v = 0); the person's other keypoints are kept. A person left with no present keypoint
      is no annotation, as usual.
    """
    counts = dict.fromkeys(NONFINITE_KEYS, 0)
    clean_gt = []
    for poses in gt_poses:
        poses, n_bad = _finite_gt(poses)
        counts[DROPPED_GT_KEYPOINTS] += n_bad
        clean_gt.append(poses)
    clean_dets = []
    for dets in detections:
        kept = [det for det in dets if _finite_detection(det)]
        counts[DROPPED_DETECTIONS] += len(dets) - len(kept)
        clean_dets.append(kept)
    if any(counts.values()):
        log.warning("pose metrics: %s", nonfinite_summary(counts))
    return clean_gt, clean_dets, counts


def nonfinite_summary(counts: dict[str, Any]) -> str:
    return (f"dropped {counts.get(DROPPED_DETECTIONS, 0)} detection(s) with NaN/inf values and treated "
            f"{counts.get(DROPPED_GT_KEYPOINTS, 0)} ground-truth keypoint(s) with NaN/inf values as missing "
            "(docs/evaluation.md, 'Non-finite keypoints')")


def nonfinite_report_lines(pose: dict[str, Any] | None) -> list[str]:
    """The metrics.md warning for a run whose pose inputs held NaN/inf (nothing when they did not)."""
    if not pose or not any(pose.get(key) for key in NONFINITE_KEYS):
        return []
    return [f"**Warning:** pose scoring {nonfinite_summary(pose)}.", ""]
