"""Pose metrics for generated images: COCO OKS AP, SAP (HumanSD's CAP) and PCE against the conditioning poses.

Two protocols (docs/evaluation.md): ``standard`` (one dataset-level COCO evaluation) and ``paper`` (the GRPose/Stable-Pose
release: per-batch-of-4 evaluation averaged over batches, placeholder-inflated GT areas, the release's SAP quirks).
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from ..errors import MissingExtraError

from grpose.eval.finite_inputs import drop_nonfinite

PROTOCOLS = ("standard", "paper")

#: COCO-17 per-keypoint OKS sigmas (COCO keypoint evaluation; xtcocotools' and pycocotools' defaults).
COCO17_SIGMAS = np.array(
    [0.26, 0.25, 0.25, 0.35, 0.35, 0.79, 0.79, 0.72, 0.72, 0.62, 0.62, 1.07, 1.07, 0.87, 0.87, 0.89, 0.89]
) / 10.0

COCO17_KEYPOINT_NAMES = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder", "right_shoulder", "left_elbow",
    "right_elbow", "left_wrist", "right_wrist", "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle",
    "right_ankle",
)
# 1-based, as in the COCO person category; only stored as metadata in the GT dict.
_COCO17_SKELETON = [
    [16, 14], [14, 12], [17, 15], [15, 13], [12, 13], [6, 12], [7, 13], [6, 7], [6, 8], [7, 9], [8, 10], [9, 11],
    [2, 3], [1, 2], [1, 3], [2, 4], [3, 5], [4, 6], [5, 7],
]

METRIC_KEYS = ("AP", "AP50", "AP75", "APm", "APl", "SAP", "PCE", "num_images")
# Positions of the reported numbers in COCOeval.stats for iouType="keypoints".
_STATS_INDEX = {"AP": 0, "AP50": 1, "AP75": 2, "APm": 3, "APl": 4}

#: One detected person: (keypoints [17, 3] as (x, y, score), person score).
Detection = tuple[np.ndarray, float]


# --------------------------------------------------------------------------------------------------------------
# COCO backends
# --------------------------------------------------------------------------------------------------------------


def _resolve_backend(backend: str) -> str:
    if backend == "auto":
        try:
            import xtcocotools.cocoeval  # noqa: F401
        except (ImportError, ValueError):
            # ValueError: a PyPI xtcocotools wheel built against numpy 1 under numpy 2 ("dtype size changed").
            # pycocotools gives the same numbers, so falling back loses nothing.
            return "pycocotools"
        return "xtcocotools"
    if backend not in ("xtcocotools", "pycocotools"):
        raise ValueError(f"pose_metrics: backend must be 'auto', 'xtcocotools' or 'pycocotools', got {backend!r}.")
    return backend


def _backend_classes(backend: str) -> tuple[type, type]:
    """(COCO, COCOeval) of a backend. Both give identical keypoint numbers with ``use_area=True``."""
    if backend == "xtcocotools":
        try:
            from xtcocotools.coco import COCO
            from xtcocotools.cocoeval import COCOeval
        except ImportError as err:
            raise MissingExtraError(
                "pose_metrics: backend 'xtcocotools' requested but it is not importable; install it "
                "(`pip install --no-binary xtcocotools --no-build-isolation xtcocotools` under numpy 2) or use "
                "backend='pycocotools'."
            ) from err
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    return COCO, COCOeval


# --------------------------------------------------------------------------------------------------------------
# SAP similarity (HumanSD paper section 5.1, "CAP")
# --------------------------------------------------------------------------------------------------------------


def _min_max(v: np.ndarray) -> np.ndarray | None:
    span = float(v.max() - v.min())
    if span == 0.0:
        return None
    return (v - v.min()) / span


def weighted_cosine_similarity(
    gt_kpts: np.ndarray,
    dt_kpts: np.ndarray,
    sigmas: np.ndarray = COCO17_SIGMAS,
    release_bug: bool = False,
) -> float:
    """Pose similarity used by SAP/CAP (HumanSD paper section 5.1).

    On the joints visible in the ground truth (score/v > 0): divide x and y of both poses by the per-joint sigmas,
    min-max normalise x and y separately per pose, L2-normalise each, concatenate (x, y) and take the cosine.
    Division by sigmas happens before the min-max step, so the measure is scale invariant but only translation
    invariant when the visible joints share one sigma.

    ``release_bug=True`` reproduces the released code's line that L2-normalises the detection's y as
    ``yd = xd / ||yd||`` (the detection's y-vector replaced by its unit x-vector over the norm of its min-max
    y-vector); use it for the ``paper`` protocol only.

    Returns NaN when no GT joint is visible or when any of the four min-max ranges is zero (e.g. one visible
    joint); what NaN means for matching is decided by :class:`SimilarityCOCOeval`.
    """
    g = np.asarray(gt_kpts, dtype=np.float64).reshape(-1, 3)
    d = np.asarray(dt_kpts, dtype=np.float64).reshape(-1, 3)
    sig = np.asarray(sigmas, dtype=np.float64).reshape(-1)
    if not (g.shape == d.shape and g.shape[0] == sig.shape[0]):
        raise ValueError(
            f"weighted_cosine_similarity: gt {g.shape}, detection {d.shape} and sigmas {sig.shape} must describe the "
            "same number of keypoints."
        )
    visible = g[:, 2] > 0
    if not visible.any():
        return math.nan
    parts = [_min_max(v[visible, axis] / sig[visible]) for v in (g, d) for axis in (0, 1)]
    if any(p is None for p in parts):
        return math.nan
    xg, yg, xd, yd = parts
    xg_u = xg / np.linalg.norm(xg)
    yg_u = yg / np.linalg.norm(yg)
    xd_u = xd / np.linalg.norm(xd)
    yd_u = xd_u / np.linalg.norm(yd) if release_bug else yd / np.linalg.norm(yd)
    gv = np.concatenate([xg_u, yg_u])
    dv = np.concatenate([xd_u, yd_u])
    return float(gv @ dv / (np.linalg.norm(gv) * np.linalg.norm(dv)))


class _SimilarityMixin:
    """Replaces OKS by :func:`weighted_cosine_similarity` in a COCOeval; matching and accumulation are inherited.

    ``nan_matches`` decides what an undefined similarity does. The release's matching loop skips a pair only when
    ``similarity < threshold``; NaN compares false, so there a NaN pair *matches* at every threshold (and steals the
    detection from earlier GTs). ``nan_matches=False`` (the ``standard`` protocol) makes such pairs never match.
    """

    def __init__(
        self,
        cocoGt: Any = None,
        cocoDt: Any = None,
        *,
        release_bug: bool = False,
        nan_matches: bool = False,
        sigmas: np.ndarray = COCO17_SIGMAS,
    ) -> None:
        super().__init__(cocoGt, cocoDt, "keypoints")
        self.release_bug = release_bug
        self.nan_matches = nan_matches
        self.similarity_sigmas = np.asarray(sigmas, dtype=np.float64)

    def computeOks(self, imgId: Any, catId: Any) -> Any:  # noqa: N802 - COCOeval's hook name
        p = self.params
        gts = self._gts[imgId, catId]
        dts = self._dts[imgId, catId]
        # Same detection order and truncation as COCOeval.computeOks, which evaluateImg relies on.
        order = np.argsort([-d["score"] for d in dts], kind="mergesort")
        dts = [dts[i] for i in order][: p.maxDets[-1]]
        if len(gts) == 0 or len(dts) == 0:
            return []
        sims = np.zeros((len(dts), len(gts)))
        for j, gt in enumerate(gts):
            for i, dt in enumerate(dts):
                s = weighted_cosine_similarity(
                    gt["keypoints"], dt["keypoints"], self.similarity_sigmas, release_bug=self.release_bug
                )
                if math.isnan(s) and not self.nan_matches:
                    s = -math.inf
                sims[i, j] = s
        return sims


@functools.cache
def _similarity_eval_class(backend: str) -> type:
    _, base = _backend_classes(backend)
    return type("SimilarityCOCOeval", (_SimilarityMixin, base), {"__doc__": _SimilarityMixin.__doc__})


_DEFAULT_BACKEND = _resolve_backend("auto")


class SimilarityCOCOeval(_SimilarityMixin, _backend_classes(_DEFAULT_BACKEND)[1]):
    """COCOeval (xtcocotools if importable, else pycocotools) whose OKS is replaced by the SAP similarity.

    The same thresholds .50:.05:.95, maxDets 20 and area bins as keypoint AP; ``stats[0]`` is SAP.
    """


def _similarity_class_for(backend: str) -> type:
    if backend == _DEFAULT_BACKEND:
        return SimilarityCOCOeval
    return _similarity_eval_class(backend)


# --------------------------------------------------------------------------------------------------------------
# COCO dicts
# --------------------------------------------------------------------------------------------------------------


def _check_protocol(protocol: str) -> None:
    if protocol not in PROTOCOLS:
        raise ValueError(f"pose metrics: protocol must be one of {PROTOCOLS}, got {protocol!r}.")


def _as_pose_array(poses: Any, index: int) -> np.ndarray:
    arr = np.asarray(poses, dtype=np.float64)
    if arr.size == 0:
        return np.zeros((0, 17, 3))
    if arr.ndim != 3 or arr.shape[1:] != (17, 3):
        raise ValueError(f"gt_poses[{index}]: expected an array [P, 17, 3] (x, y, score), got shape {arr.shape}.")
    return arr


def _present(person: np.ndarray) -> np.ndarray:
    """Keypoints that exist in the condition: score > 0 (missing ones are stored as (-1, -1, 0))."""
    return person[:, 2] > 0


def _gt_annotation(person: np.ndarray, protocol: str) -> dict[str, Any]:
    present = _present(person)
    if protocol == "paper":
        # The release writes the raw (x, y, score) triplets and takes bbox/area over all 17 points, the (-1, -1)
        # placeholders included; this inflates the OKS scale and moves the area bins.
        kpts = person.copy()
        extent = person[:, :2]
    else:
        kpts = np.zeros_like(person)
        kpts[present, :2] = person[present, :2]
        kpts[present, 2] = 2.0
        extent = person[present, :2]
    x0, y0 = extent.min(axis=0)
    x1, y1 = extent.max(axis=0)
    w, h = float(x1 - x0), float(y1 - y0)
    return {
        "category_id": 1,
        "iscrowd": 0,
        "keypoints": [float(v) for v in kpts.reshape(-1)],
        # pycocotools ignores a GT with num_keypoints == 0; xtcocotools recounts v > 0 itself. Counting v > 0
        # here keeps both backends identical.
        "num_keypoints": int(present.sum()),
        "bbox": [float(x0), float(y0), w, h],
        "area": w * h,
    }


def _image_size_wh(image_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(image_size, int):
        return image_size, image_size
    w, h = image_size
    return int(w), int(h)


def build_coco_gt(
    gt_poses: Sequence[Any],
    image_ids: Sequence[int],
    image_size: int | Sequence[int] = 512,
    protocol: str = "standard",
) -> dict[str, Any]:
    """COCO keypoint ground truth for the conditioning poses.

    ``gt_poses[i]`` is a float array [P, 17, 3] (x, y, score) in pixels of the generated image, missing keypoints
    (-1, -1, 0). A person with no present keypoint is not an annotation. ``standard``: bbox/area from the present
    keypoints, v = 2 for present ones. ``paper``: the release's raw triplets and placeholder-inclusive bbox/area.
    """
    _check_protocol(protocol)
    if len(gt_poses) != len(image_ids):
        raise ValueError(f"build_coco_gt: {len(gt_poses)} pose arrays but {len(image_ids)} image ids.")
    width, height = _image_size_wh(image_size)
    images, annotations = [], []
    for index, (poses, image_id) in enumerate(zip(gt_poses, image_ids)):
        images.append({"id": int(image_id), "width": width, "height": height})
        for person in _as_pose_array(poses, index):
            if not _present(person).any():
                continue
            ann = _gt_annotation(person, protocol)
            # ids start at 1: pycocotools uses 0 in its match arrays to mean "unmatched".
            ann.update(id=len(annotations) + 1, image_id=int(image_id))
            annotations.append(ann)
    categories = [
        {
            "id": 1,
            "name": "person",
            "supercategory": "person",
            "keypoints": list(COCO17_KEYPOINT_NAMES),
            "skeleton": _COCO17_SKELETON,
        }
    ]
    return {"images": images, "annotations": annotations, "categories": categories}


def _as_detection(det: Any, index: int) -> tuple[np.ndarray, float]:
    try:
        kpts, score = det
    except (TypeError, ValueError) as err:
        raise ValueError(f"detections[{index}]: each detection must be (keypoints [17, 3], person score).") from err
    kpts = np.asarray(kpts, dtype=np.float64)
    if kpts.shape != (17, 3):
        raise ValueError(f"detections[{index}]: keypoints must have shape (17, 3), got {kpts.shape}.")
    return kpts, float(score)


def build_coco_dt(detections: Sequence[Sequence[Detection]], image_ids: Sequence[int]) -> list[dict[str, Any]]:
    """COCO keypoint results (``loadRes`` input) for per-image detections ``[(keypoints [17, 3], score), ...]``.

    Detections whose keypoint scores are all <= 0 are dropped, as xtcocotools (the release's evaluator) does, so
    both backends agree. Area and bbox are left to ``loadRes`` (keypoint extent), as in the release.
    """
    if len(detections) != len(image_ids):
        raise ValueError(f"build_coco_dt: {len(detections)} detection lists but {len(image_ids)} image ids.")
    results = []
    for index, (dets, image_id) in enumerate(zip(detections, image_ids)):
        for det in dets:
            kpts, score = _as_detection(det, index)
            if not (kpts[:, 2] > 0).any():
                continue
            results.append(
                {
                    "image_id": int(image_id),
                    "category_id": 1,
                    "keypoints": [float(v) for v in kpts.reshape(-1)],
                    "score": score,
                }
            )
    return results


# --------------------------------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------------------------------


def _coco_from_dict(coco_cls: type, dataset: dict[str, Any]) -> Any:
    coco = coco_cls()
    coco.dataset = dataset
    coco.createIndex()
    return coco


def _evaluate(
    gt: dict[str, Any],
    dt: list[dict[str, Any]],
    backend: str,
    similarity: dict[str, bool] | None = None,
) -> np.ndarray:
    """COCOeval ``stats`` (10 numbers, -1 where undefined); OKS when ``similarity`` is None, else SAP."""
    coco_cls, cocoeval_cls = _backend_classes(backend)
    # pycocotools prints progress on every call; the numbers are what we keep.
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = _coco_from_dict(coco_cls, gt)
        if dt:
            # loadRes mutates its input (adds id/area/bbox); give it copies so callers can reuse theirs.
            coco_dt = coco_gt.loadRes([dict(d) for d in dt])
        else:
            # loadRes indexes anns[0]; with no detections at all the result set is simply empty.
            coco_dt = _coco_from_dict(
                coco_cls, {"images": list(gt["images"]), "categories": gt["categories"], "annotations": []}
            )
        if similarity is None:
            evaluator = cocoeval_cls(coco_gt, coco_dt, "keypoints")
        else:
            evaluator = _similarity_class_for(backend)(coco_gt, coco_dt, **similarity)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return np.asarray(evaluator.stats, dtype=np.float64)


def _person_counts(gt_poses: Sequence[Any], detections: Sequence[Sequence[Detection]]) -> np.ndarray:
    """|#GT persons - #detections| per image, indexed by image (unlike the release, which enumerates only images
    with GT and so shifts the pairing when some image has nobody). All detections count, no score filter."""
    errors = []
    for index, (poses, dets) in enumerate(zip(gt_poses, detections)):
        n_gt = sum(1 for person in _as_pose_array(poses, index) if _present(person).any())
        errors.append(abs(n_gt - len(dets)))
    return np.asarray(errors, dtype=np.float64)


def _stats_to_metrics(oks_stats: np.ndarray, sap_stats: np.ndarray) -> dict[str, float]:
    out = {key: float(oks_stats[i]) for key, i in _STATS_INDEX.items()}
    out["SAP"] = float(sap_stats[0])
    # pycocotools' -1 means "no GT in this area range / set": undefined, not a score.
    return {k: (math.nan if v == -1 else v) for k, v in out.items()}


def pose_metrics(
    gt_poses: Sequence[Any],
    detections: Sequence[Sequence[Detection]],
    protocol: str = "standard",
    batch_size: int = 4,
    image_size: int | Sequence[int] = 512,
    backend: str = "auto",
) -> dict[str, float]:
    """AP / AP50 / AP75 / APm / APl / SAP (fractions in [0, 1]), PCE and num_images.

    ``gt_poses[i]``: [P, 17, 3] conditioning poses of image i; ``detections[i]``: list of
    (keypoints [17, 3], person score) found in generated image i.

    ``standard``: one dataset-level COCO keypoint evaluation (OKS, COCO-17 sigmas, maxDets 20, use_area) and one
    SAP evaluation with the fixed similarity (undefined similarities never match); PCE = mean over images.

    ``paper``: images are cut into consecutive batches of ``batch_size``; each batch gets its
    own evaluation with the placeholder-inclusive GT area, the SAP ``yd = xd/||yd||`` bug and NaN-matching; every
    metric is the mean over batches of the per-batch values. A batch whose value is -1 (no GT person in it, or none
    in that area bin) is skipped for that metric: the release would average the -1 in, which nobody intends
    (Stable-Pose issue #10). PCE is the mean of per-batch means. A metric undefined everywhere is NaN.

    In both protocols, detections holding NaN/inf are dropped and non-finite GT keypoints count as missing
    (`grpose.eval.finite_inputs.drop_nonfinite`); the counts come back as `dropped_nonfinite_detections` and
    `dropped_nonfinite_gt_keypoints`.
    """
    _check_protocol(protocol)
    if len(gt_poses) != len(detections):
        raise ValueError(
            f"pose_metrics: {len(gt_poses)} ground-truth images but {len(detections)} detection lists; they must "
            "be aligned per image."
        )
    if batch_size < 1:
        raise ValueError(f"pose_metrics: batch_size must be >= 1, got {batch_size}.")
    backend = _resolve_backend(backend)
    n = len(gt_poses)
    if n == 0:
        raise ValueError("pose_metrics: no images given.")
    image_ids = list(range(1, n + 1))
    gt_poses, detections, dropped = drop_nonfinite(gt_poses, detections)
    pce = _person_counts(gt_poses, detections)

    if protocol == "standard":
        gt = build_coco_gt(gt_poses, image_ids, image_size, protocol)
        dt = build_coco_dt(detections, image_ids)
        oks = _evaluate(gt, dt, backend)
        sap = _evaluate(gt, dt, backend, similarity={"release_bug": False, "nan_matches": False})
        metrics = _stats_to_metrics(oks, sap)
        metrics["PCE"] = float(pce.mean())
    else:
        per_batch: dict[str, list[float]] = {key: [] for key in (*_STATS_INDEX, "SAP", "PCE")}
        for start in range(0, n, batch_size):
            ids = image_ids[start : start + batch_size]
            gt = build_coco_gt(gt_poses[start : start + batch_size], ids, image_size, protocol)
            dt = build_coco_dt(detections[start : start + batch_size], ids)
            oks = _evaluate(gt, dt, backend)
            sap = _evaluate(gt, dt, backend, similarity={"release_bug": True, "nan_matches": True})
            for key, value in _stats_to_metrics(oks, sap).items():
                if not math.isnan(value):
                    per_batch[key].append(value)
            per_batch["PCE"].append(float(pce[start : start + batch_size].mean()))
        metrics = {key: (float(np.mean(v)) if v else math.nan) for key, v in per_batch.items()}
    metrics["num_images"] = n
    return {**{key: metrics[key] for key in METRIC_KEYS}, **dropped}
