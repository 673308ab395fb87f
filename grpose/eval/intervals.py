"""95% intervals for every reported metric: percentile bootstrap over images (or over the `paper` protocol's
batches) with a fixed seed, and the spread over generation seeds when a method was run with several.

How each interval is computed is written down in docs/evaluation.md ("Confidence intervals").
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class BootstrapSettings:
    """`eval.bootstrap_*` keys: resamples for AP/SAP/PCE/CLIP-Score, fewer for FID/KID (each replicate recomputes
    them from the feature rows), the seed of the resampling generator and the confidence level."""

    resamples: int = 1000
    quality_resamples: int = 200
    seed: int = 0
    confidence: float = 0.95

    def rng(self, *salt: Any) -> np.random.Generator:
        """A generator per metric (and scenario): intervals do not change when another metric is switched off."""
        words = [int(self.seed)] + [sum(ord(c) * 31**i for i, c in enumerate(str(s))) % 2**32 for s in salt]
        return np.random.default_rng(words)

    def as_dict(self) -> dict[str, Any]:
        return {"resamples": self.resamples, "quality_resamples": self.quality_resamples, "seed": self.seed,
                "confidence": self.confidence, "method": "percentile bootstrap"}


def percentile_interval(replicates: Sequence[float], point: Optional[float], confidence: float = 0.95
                        ) -> Optional[dict[str, float]]:
    """The percentile interval of bootstrap replicates, `{low, high, half_width}`; NaN replicates (a resample
    where the metric is undefined, e.g. no GT person drawn) are dropped. The interval always contains the point
    estimate: when a skewed statistic puts the point outside the percentiles (possible for FID/KID, whose
    replicates are biased upwards), the nearer bound is moved to it. `half_width` = (high - low) / 2, the `±` of
    the markdown tables. None when the point or every replicate is undefined."""
    if point is None or not math.isfinite(point):
        return None
    values = np.asarray([v for v in replicates if v is not None and math.isfinite(v)], dtype=np.float64)
    if values.size == 0:
        return None
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    low, high = min(float(low), point), max(float(high), point)
    return {"low": low, "high": high, "half_width": (high - low) / 2.0}


def resample_indices(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """[resamples, n] indices drawn with replacement."""
    return rng.integers(0, n, size=(resamples, n))


def bootstrap_mean(values: Sequence[float], settings: BootstrapSettings, *salt: Any, scale: float = 1.0
                   ) -> Optional[dict[str, float]]:
    """Interval of the mean of i.i.d. values (PCE, CLIP-Score, any per-batch mean) times `scale`."""
    x = np.asarray(values, dtype=np.float64) * scale
    if x.size == 0:
        return None
    counts = _counts(x.size, settings.resamples, settings.rng("mean", *salt))
    return percentile_interval(counts @ x / x.size, float(x.mean()), settings.confidence)


def _counts(n: int, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of n units is drawn in each resample: [resamples, n] (the same draws as resample_indices)."""
    idx = resample_indices(n, resamples, rng)
    counts = np.zeros((resamples, n), dtype=np.float64)
    np.add.at(counts, (np.repeat(np.arange(resamples), n), idx.ravel()), 1.0)
    return counts


def normal_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """mean ± z * s / sqrt(n): the analytic interval the bootstrap of a mean must approach (tests, docs)."""
    from statistics import NormalDist

    x = np.asarray(values, dtype=np.float64)
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    half = z * x.std(ddof=1) / math.sqrt(x.size)
    return float(x.mean() - half), float(x.mean() + half)


# ------------------------------------------------------------------------------------------- seed spread
def seed_spread(values: Sequence[Optional[float]], confidence: float = 0.95) -> Optional[dict[str, Any]]:
    """Mean over generation seeds with a Student-t interval (mean ± t * s / sqrt(k)), plus min/max and std.
    None with fewer than two defined values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if x.size < 2:
        return None
    from scipy.stats import t as student_t

    half = float(student_t.ppf(0.5 + confidence / 2.0, x.size - 1) * x.std(ddof=1) / math.sqrt(x.size))
    mean = float(x.mean())
    return {"mean": mean, "low": mean - half, "high": mean + half, "half_width": half, "std": float(x.std(ddof=1)),
            "min": float(x.min()), "max": float(x.max()), "num_seeds": int(x.size)}


# ------------------------------------------------------------------------------------------- pose AP / SAP
class PerImageCOCOEval:
    """COCO keypoint evaluation run once per image (`COCOeval.evaluate`), then re-accumulated for any multiset
    of images: a bootstrap replicate is a weighting of the images, and AP is recomputed from the stored matches
    with COCOeval's own accumulation rule (area range `all`, maxDets 20, 101-point interpolated precision,
    averaged over the OKS thresholds .50:.05:.95). With every weight 1 it reproduces `stats[0]` exactly.

    Detections are sorted by score once over the whole set; a resample only changes the weights in the
    cumulative true/false-positive sums, so a replicate costs O(#detections x #thresholds).
    """

    def __init__(self, evaluator: Any, n_images: int):
        p = evaluator.params
        self.rec_thrs = np.asarray(p.recThrs, dtype=np.float64)
        self.num_thresholds = len(p.iouThrs)
        max_det = p.maxDets[-1]
        area_all = 0  # params.areaRng[0] is "all"
        num_area = len(p.areaRng)
        image_ids = list(p.imgIds)
        if len(image_ids) != n_images:
            raise ValueError(f"PerImageCOCOEval: {len(image_ids)} evaluated images, expected {n_images}")
        scores, matched, ignored, owner = [], [], [], []
        self.gt_per_image = np.zeros(n_images, dtype=np.float64)
        for i in range(n_images):
            e = evaluator.evalImgs[area_all * n_images + i] if num_area else None
            if e is None:
                continue
            self.gt_per_image[i] = float(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
            d = np.asarray(e["dtScores"][:max_det], dtype=np.float64)
            if d.size == 0:
                continue
            scores.append(d)
            # the matched GT's id; unmatched is 0 (pycocotools) or -1 (xtcocotools), and GT ids start at 1
            matched.append(np.asarray(e["dtMatches"])[:, :max_det] > 0)
            ignored.append(np.asarray(e["dtIgnore"])[:, :max_det].astype(bool))
            owner.append(np.full(d.size, i))
        if scores:
            all_scores = np.concatenate(scores)
            order = np.argsort(-all_scores, kind="mergesort")  # COCOeval's sort, over images in id order
            tp = np.concatenate(matched, axis=1)[:, order]
            dt_ignore = np.concatenate(ignored, axis=1)[:, order]
            self.owner = np.concatenate(owner)[order]
            self.tp = (tp & ~dt_ignore).astype(np.float64)
            self.fp = (~tp & ~dt_ignore).astype(np.float64)
        else:
            self.owner = np.zeros(0, dtype=np.int64)
            self.tp = self.fp = np.zeros((self.num_thresholds, 0))

    def ap(self, weights: np.ndarray) -> float:
        """AP (a fraction) of the images weighted by `weights` [n_images] (counts of a resample); NaN without GT."""
        num_gt = float(weights @ self.gt_per_image)
        if num_gt == 0:
            return math.nan
        w = weights[self.owner]
        keep = w > 0
        w = w[keep]
        tp_sum = np.cumsum(self.tp[:, keep] * w, axis=1)
        fp_sum = np.cumsum(self.fp[:, keep] * w, axis=1)
        total = 0.0
        for t in range(self.num_thresholds):
            q = np.zeros(len(self.rec_thrs))
            if tp_sum.shape[1]:
                recall = tp_sum[t] / num_gt
                precision = tp_sum[t] / (fp_sum[t] + tp_sum[t] + np.spacing(1))
                precision = np.maximum.accumulate(precision[::-1])[::-1]  # COCOeval's envelope
                where = np.searchsorted(recall, self.rec_thrs, side="left")
                valid = where < len(precision)
                q[valid] = precision[where[valid]]
            total += float(q.mean())
        return total / self.num_thresholds


def per_image_evaluations(gt_poses: Sequence[Any], detections: Sequence[Sequence[Any]], image_size: Any
                          ) -> dict[str, PerImageCOCOEval]:
    """`standard` protocol: per-image OKS (AP) and SAP-similarity evaluations of the whole set, run once."""
    from grpose.eval import pose_metrics as pm

    backend = pm._resolve_backend("auto")
    coco_cls, cocoeval_cls = pm._backend_classes(backend)
    n = len(gt_poses)
    ids = list(range(1, n + 1))
    gt = pm.build_coco_gt(gt_poses, ids, image_size, "standard")
    dt = pm.build_coco_dt(detections, ids)
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = pm._coco_from_dict(coco_cls, gt)
        coco_dt = (coco_gt.loadRes([dict(d) for d in dt]) if dt else
                   pm._coco_from_dict(coco_cls, {"images": gt["images"], "categories": gt["categories"],
                                                 "annotations": []}))
        for name in ("AP", "SAP"):
            if name == "AP":
                evaluator = cocoeval_cls(coco_gt, coco_dt, "keypoints")
            else:
                evaluator = pm._similarity_class_for(backend)(coco_gt, coco_dt, release_bug=False, nan_matches=False)
            evaluator.evaluate()
            out[name] = PerImageCOCOEval(evaluator, n)
    return out


def pose_intervals(gt_poses: Sequence[Any], detections: Sequence[Sequence[Any]], groups: Mapping[str, Sequence[int]],
                   points: Mapping[str, Mapping[str, Any]], protocol: str, batch_size: int, image_size: Any,
                   settings: BootstrapSettings) -> dict[str, dict[str, Any]]:
    """Intervals of AP and SAP (x100, as in Table 1) and PCE for each group of image positions (`all` and the
    scenarios). `points[group]` holds the metric values the report shows (pose_metrics' output).

    `standard`: images are resampled (with their GT and detections); AP/SAP re-accumulated from the per-image
    evaluations, PCE the mean of the resampled per-image errors. `paper`: the metric is a mean over consecutive
    batches of `batch_size` images, so the batches are the resampled units (their per-batch values computed once).
    """
    from grpose.eval import pose_metrics as pm

    out: dict[str, dict[str, Any]] = {}
    if protocol == "standard":
        evals = per_image_evaluations(gt_poses, detections, image_size)
        errors = pm._person_counts(gt_poses, detections)
        for group, positions in groups.items():
            positions = np.asarray(positions, dtype=np.int64)
            counts = _counts(len(positions), settings.resamples, settings.rng("pose", group))
            weights = np.zeros((settings.resamples, len(gt_poses)))
            weights[:, positions] = counts
            result = {}
            for name in ("AP", "SAP"):
                replicates = [100.0 * evals[name].ap(w) for w in weights]
                point = points[group].get(name)
                result[name] = percentile_interval(replicates, None if point is None else 100.0 * point,
                                                   settings.confidence)
            result["PCE"] = percentile_interval(counts @ errors[positions] / len(positions),
                                                float(errors[positions].mean()), settings.confidence)
            result["unit"] = "image"
            out[group] = result
        return out
    for group, positions in groups.items():
        batches = [list(positions[s:s + batch_size]) for s in range(0, len(positions), batch_size)]
        # `positions` of a scenario are not consecutive in the manifest; the report's per-scenario numbers batch
        # them in this same order (pose_metrics over the scenario's images), so the batches match.
        per_batch = [pm.pose_metrics([gt_poses[i] for i in b], [detections[i] for i in b], protocol="paper",
                                     batch_size=len(b), image_size=image_size) for b in batches]
        counts = _counts(len(batches), settings.resamples, settings.rng("pose", group))
        result = {}
        for name, scale in (("AP", 100.0), ("SAP", 100.0), ("PCE", 1.0)):
            values = np.asarray([m[name] for m in per_batch], dtype=np.float64) * scale
            defined = np.isfinite(values)
            point = points[group].get(name)
            if point is None or not defined.any():
                result[name] = None
                continue
            # a batch without GT has no AP; the point estimate skips it, so each replicate does too
            num = counts[:, defined] @ values[defined]
            den = counts[:, defined].sum(axis=1)
            replicates = np.where(den > 0, num / np.maximum(den, 1), np.nan)
            result[name] = percentile_interval(replicates, point * scale, settings.confidence)
        result["unit"] = f"batch of {batch_size}"
        out[group] = result
    return out


# ----------------------------------------------------------------------------------------------- FID / KID
def fid_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """Fréchet distance of two feature sets: |mu_r - mu_f|^2 + tr S_r + tr S_f - 2 tr sqrt(S_r S_f).

    With fewer images than feature dimensions (a 250-image scenario, 2048-d features) tr sqrt(S_r S_f) is the
    nuclear norm of X_r X_f^T / sqrt((n_r - 1)(n_f - 1)) for the centred feature rows X (the non-zero eigenvalues
    of S_r S_f are the squared singular values of that n_r x n_f matrix), which is exact and needs no d x d matrix
    square root; otherwise the d x d route (eigh of S_r, then of sqrt(S_r) S_f sqrt(S_r)).
    """
    real = np.asarray(real, dtype=np.float64)
    fake = np.asarray(fake, dtype=np.float64)
    n_r, n_f, d = real.shape[0], fake.shape[0], real.shape[1]
    mu_r, mu_f = real.mean(0), fake.mean(0)
    xr, xf = real - mu_r, fake - mu_f
    tr_r = float((xr * xr).sum()) / (n_r - 1)
    tr_f = float((xf * xf).sum()) / (n_f - 1)
    if min(n_r, n_f) <= d:
        cross = float(np.linalg.svd(xr @ xf.T, compute_uv=False).sum()) / math.sqrt((n_r - 1) * (n_f - 1))
    else:
        s_r, s_f = xr.T @ xr / (n_r - 1), xf.T @ xf / (n_f - 1)
        vals, vecs = np.linalg.eigh(s_r)
        root = (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T
        cross = float(np.sqrt(np.clip(np.linalg.eigvalsh(root @ s_f @ root), 0, None)).sum())
    return float(((mu_r - mu_f) ** 2).sum() + tr_r + tr_f - 2.0 * cross)


class FIDBootstrap:
    """FID of resampled real/generated feature rows from Gram matrices computed once.

    For rows drawn with indices (i, j), every term of `fid_from_features` is a function of inner products:
    |mu_r - mu_f|^2 and tr S from the means of the Gram blocks, and the centred cross matrix X_r X_f^T is the
    double-centred block G_rf[i, j]. A replicate then costs O(n^2) plus an n x n eigendecomposition instead of
    work in the feature dimension. Exact up to float rounding (the value of `fid_from_features` on the resampled
    rows to ~1e-7 relative).
    """

    def __init__(self, real: np.ndarray, fake: np.ndarray):
        real = np.asarray(real, dtype=np.float64)
        fake = np.asarray(fake, dtype=np.float64)
        self.g_rr, self.g_ff, self.g_rf = real @ real.T, fake @ fake.T, real @ fake.T

    def fid(self, idx_r: np.ndarray, idx_f: np.ndarray) -> float:
        n_r, n_f = len(idx_r), len(idx_f)
        rr = self.g_rr[np.ix_(idx_r, idx_r)]
        ff = self.g_ff[np.ix_(idx_f, idx_f)]
        rf = self.g_rf[np.ix_(idx_r, idx_f)]
        mu2_r, mu2_f, mu_rf = rr.mean(), ff.mean(), rf.mean()
        tr_r = (np.trace(rr) - n_r * mu2_r) / (n_r - 1)
        tr_f = (np.trace(ff) - n_f * mu2_f) / (n_f - 1)
        cross = rf - rf.mean(axis=0, keepdims=True) - rf.mean(axis=1, keepdims=True) + mu_rf
        small = cross @ cross.T if n_r <= n_f else cross.T @ cross
        nuclear = float(np.sqrt(np.clip(np.linalg.eigvalsh(small), 0, None)).sum())
        return float(mu2_r + mu2_f - 2 * mu_rf + tr_r + tr_f - 2 * nuclear / math.sqrt((n_r - 1) * (n_f - 1)))


def _poly_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    # torchmetrics' KID kernel: (x . y / d + 1)^3
    return (x @ y.T / x.shape[1] + 1.0) ** 3


class KIDBootstrap:
    """Unbiased MMD^2 (KID's statistic) of resampled real/generated sets from kernel matrices computed once."""

    def __init__(self, real: np.ndarray, fake: np.ndarray):
        real = np.asarray(real, dtype=np.float64)
        fake = np.asarray(fake, dtype=np.float64)
        self.k_rr, self.k_ff, self.k_rf = _poly_kernel(real, real), _poly_kernel(fake, fake), _poly_kernel(real, fake)

    @staticmethod
    def _within(k: np.ndarray, idx: np.ndarray) -> float:
        sub = k[np.ix_(idx, idx)]
        m = len(idx)
        return float((sub.sum() - np.trace(sub)) / (m * (m - 1)))

    def mmd2(self, idx_r: np.ndarray, idx_f: np.ndarray) -> float:
        return (self._within(self.k_rr, idx_r) + self._within(self.k_ff, idx_f)
                - 2.0 * float(self.k_rf[np.ix_(idx_r, idx_f)].mean()))


def quality_intervals(features: Mapping[str, tuple[Any, Any, Any, Any]], points: Mapping[str, Any],
                      kid_scale: float, settings: BootstrapSettings) -> dict[str, dict[str, Any]]:
    """FID and KID intervals per scenario and for their mean over scenarios.

    `features[scenario]` = (real FID features, generated FID features, real KID features, generated KID
    features). A replicate resamples the real and the generated rows of every scenario independently (with
    replacement, within the scenario), recomputes FID (`fid_from_features`) and the unbiased MMD^2 x kid_scale,
    and the overall value of the replicate is the mean over scenarios, as for the point estimate. KID's point
    estimate is torchmetrics' mean over random subsets; its replicates use the full resampled sets (the same
    expectation, far cheaper), so the interval describes image sampling, not subset noise.
    """
    names = list(features)
    fid_reps = np.full((settings.quality_resamples, len(names)), np.nan)
    kid_reps = np.full((settings.quality_resamples, len(names)), np.nan)
    for j, name in enumerate(names):
        real_fid, fake_fid, real_kid, fake_kid = (np.asarray(f, dtype=np.float64) for f in features[name])
        rng = settings.rng("quality", name)
        has_kid = points["scenarios"][name].get("KID") is not None
        kid = KIDBootstrap(real_kid, fake_kid) if has_kid else None
        # Gram matrices while the sets are smaller than the feature width (a 250-image scenario, 2048-d features)
        small = max(len(real_fid), len(fake_fid)) <= 4 * real_fid.shape[1]
        gram = FIDBootstrap(real_fid, fake_fid) if small else None
        for r in range(settings.quality_resamples):
            idx_r = rng.integers(0, len(real_fid), len(real_fid))
            idx_f = rng.integers(0, len(fake_fid), len(fake_fid))
            fid_reps[r, j] = (gram.fid(idx_r, idx_f) if gram is not None
                              else fid_from_features(real_fid[idx_r], fake_fid[idx_f]))
            if kid is not None:
                kid_reps[r, j] = kid.mmd2(idx_r, idx_f) * kid_scale
    out: dict[str, dict[str, Any]] = {}
    for j, name in enumerate(names):
        scen = points["scenarios"][name]
        out[name] = {"FID": percentile_interval(fid_reps[:, j], scen.get("FID"), settings.confidence),
                     "KID": percentile_interval(kid_reps[:, j], scen.get("KID"), settings.confidence),
                     "unit": "feature row"}
    kid_cols = [j for j, name in enumerate(names) if points["scenarios"][name].get("KID") is not None]
    out["all"] = {
        "FID": percentile_interval(fid_reps.mean(axis=1), points.get("FID"), settings.confidence),
        "KID": (percentile_interval(kid_reps[:, kid_cols].mean(axis=1), points.get("KID"), settings.confidence)
                if kid_cols else None),
        "unit": "feature row, within each scenario",
    }
    return out


# ---------------------------------------------------------------------------------------------- CLIP-Score
def clip_interval(per_image: Sequence[float], protocol: str, batch_size: int, point: float,
                  settings: BootstrapSettings) -> Optional[dict[str, Any]]:
    """`standard`: the mean of per-image scores, images resampled. `paper`: the mean of per-batch means
    (each clipped at 0, as torchmetrics does), batches resampled."""
    scores = np.asarray(per_image, dtype=np.float64)
    if protocol == "paper":
        units = np.asarray([max(float(scores[s:s + batch_size].mean()), 0.0)
                            for s in range(0, len(scores), batch_size)])
        unit = f"batch of {batch_size}"
    else:
        units, unit = scores, "image"
    counts = _counts(len(units), settings.resamples, settings.rng("clip"))
    interval = percentile_interval(np.maximum(counts @ units / len(units), 0.0), point, settings.confidence)
    return None if interval is None else {**interval, "unit": unit}


# ------------------------------------------------------------------------------------------------- report
def table1_intervals(results: Mapping[str, Any]) -> dict[str, Any]:
    """The intervals of the Table 1 numbers (same scale: AP/SAP x100, KID x kid_scale) and of the per-scenario
    AP / PCE / FID / KID, gathered from the metric sections of `score_run`'s results."""
    table: dict[str, Any] = {}
    scenarios: dict[str, dict[str, Any]] = {}
    pose = (results.get("pose") or {}).get("intervals")
    if pose:
        table.update({k: pose["all"].get(k) for k in ("AP", "SAP", "PCE")})
        for name, value in pose.items():
            if name != "all":
                scenarios.setdefault(name, {}).update({k: value.get(k) for k in ("AP", "PCE")})
    quality = (results.get("quality") or {}).get("intervals")
    if quality:
        table.update({k: quality["all"].get(k) for k in ("FID", "KID")})
        for name, value in quality.items():
            if name != "all":
                scenarios.setdefault(name, {}).update({k: value.get(k) for k in ("FID", "KID")})
    clip = (results.get("clip") or {}).get("interval")
    if clip:
        table["CLIP-Score"] = clip
    return {"table1": table, "scenarios": scenarios}


def format_value(value: Optional[float], interval: Optional[Mapping[str, float]] = None, digits: int = 2) -> str:
    """`49.50 ± 0.80` (± the half-width of the percentile interval), `49.50` without an interval, `n/a` when
    undefined. A KID of 0.0123 keeps 2 significant digits in its ± instead of printing `± 0.00`."""
    if value is None or not math.isfinite(value):
        return "n/a"
    text = f"{value + 0.0:.{digits}f}"
    if text.startswith("-") and float(text) == 0.0:  # -0.001 prints as 0.00, not -0.00
        text = text[1:]
    if interval:
        half = interval["half_width"]
        shown = f"{half:.{digits}f}"
        if half > 0 and float(shown) == 0.0:
            shown = f"{half:.2g}"
        text += f" ± {shown}"
    return text


def bootstrap_settings(eval_cfg: Any) -> Optional[BootstrapSettings]:
    """The `eval.*` bootstrap keys as settings; None when `eval.intervals` is off."""
    if not eval_cfg.get("intervals", True):
        return None
    return BootstrapSettings(resamples=int(eval_cfg.bootstrap_resamples),
                             quality_resamples=int(eval_cfg.bootstrap_quality_resamples),
                             seed=int(eval_cfg.bootstrap_seed), confidence=float(eval_cfg.confidence))
