"""Bootstrap intervals against independent computations: the analytic normal interval of a mean, COCOeval's own
AP on the unresampled set, torchmetrics' FID/KID, and the rule that an interval contains its point estimate."""

import math

import numpy as np
import pytest
import torch

from grpose.eval import pose_metrics as pm
from grpose.eval.intervals import (BootstrapSettings, KIDBootstrap, bootstrap_mean, clip_interval,
                                   fid_from_features, format_value, normal_interval, per_image_evaluations,
                                   percentile_interval, pose_intervals, quality_intervals, seed_spread)

BACKENDS = ["pycocotools"] + (["xtcocotools"] if pm._resolve_backend("auto") == "xtcocotools" else [])


def _person(rng):
    kp = np.zeros((17, 3))
    kp[:, :2] = rng.uniform(100, 400, 2) + rng.normal(0, 40, (17, 2))
    kp[:, 2] = 1.0
    kp[rng.random(17) < 0.2] = [-1, -1, 0]
    return kp


def synthetic_set(n, seed=0):
    """n images with 0-2 persons each; most detected with noise of varying size, some missed, some false."""
    rng = np.random.default_rng(seed)
    gts, dets = [], []
    for _ in range(n):
        persons = [_person(rng) for _ in range(rng.integers(0, 3))]
        gts.append(np.stack(persons) if persons else np.zeros((0, 17, 3)))
        found = []
        for p in persons:
            if rng.random() < 0.8:
                k = p.copy()
                k[:, :2] += rng.normal(0, rng.uniform(1, 15), (17, 2))
                k[:, 2] = rng.uniform(0.1, 1, 17)
                found.append((k, float(rng.random())))
        if rng.random() < 0.3:
            k = _person(rng)
            k[:, 2] = 0.5
            found.append((k, float(rng.random())))
        dets.append(found)
    return gts, dets


@pytest.mark.parametrize("backend", BACKENDS)
def test_unresampled_reaccumulation_is_cocoeval_ap(backend, monkeypatch):
    gts, dets = synthetic_set(120)
    monkeypatch.setattr(pm, "_resolve_backend", lambda b="auto": backend)
    want = pm.pose_metrics(gts, dets, protocol="standard", backend=backend)
    evals = per_image_evaluations(gts, dets, 512)
    ones = np.ones(len(gts))
    assert evals["AP"].ap(ones) == pytest.approx(want["AP"], abs=1e-12)
    assert evals["SAP"].ap(ones) == pytest.approx(want["SAP"], abs=1e-12)
    # weights are multiplicities: weight 2 on every image is the set twice, the same AP
    assert evals["AP"].ap(2 * ones) == pytest.approx(want["AP"], abs=1e-12)
    # a subset by weights is the subset evaluated on its own
    half = np.r_[np.ones(60), np.zeros(60)]
    assert evals["AP"].ap(half) == pytest.approx(pm.pose_metrics(gts[:60], dets[:60], backend=backend)["AP"],
                                                 abs=1e-12)


def test_pce_bootstrap_matches_the_normal_interval():
    """PCE is the mean of i.i.d. per-image errors: its bootstrap interval approaches mean ± 1.96 s / sqrt(n).
    Tolerance: each bound within 12% of the analytic half-width (Monte-Carlo and discreteness error at
    n = 400 images, 4000 resamples)."""
    gts, dets = synthetic_set(400, seed=1)
    point = pm.pose_metrics(gts, dets, protocol="standard")
    settings = BootstrapSettings(resamples=4000, seed=3)
    got = pose_intervals(gts, dets, {"all": list(range(400))}, {"all": point}, "standard", 4, 512, settings)
    errors = pm._person_counts(gts, dets)
    low, high = normal_interval(errors)
    half = (high - low) / 2
    assert got["all"]["PCE"]["low"] == pytest.approx(low, abs=0.12 * half)
    assert got["all"]["PCE"]["high"] == pytest.approx(high, abs=0.12 * half)
    assert got["all"]["unit"] == "image"


def test_bootstrap_mean_matches_the_normal_interval_for_continuous_values():
    values = np.random.default_rng(5).normal(30.0, 4.0, 500)  # e.g. per-image CLIP-Scores
    got = bootstrap_mean(values, BootstrapSettings(resamples=4000))
    low, high = normal_interval(values)
    assert got["low"] == pytest.approx(low, abs=0.06 * (high - low))
    assert got["high"] == pytest.approx(high, abs=0.06 * (high - low))
    standard = clip_interval(values, "standard", 4, float(values.mean()), BootstrapSettings(resamples=4000))
    assert standard["half_width"] == pytest.approx((high - low) / 2, rel=0.1) and standard["unit"] == "image"


def test_paper_protocol_resamples_batches():
    gts, dets = synthetic_set(64, seed=2)
    point = pm.pose_metrics(gts, dets, protocol="paper", batch_size=4)
    got = pose_intervals(gts, dets, {"all": list(range(64))}, {"all": point}, "paper", 4, 512,
                         BootstrapSettings(resamples=500))["all"]
    assert got["unit"] == "batch of 4"
    per_batch_pce = [pm._person_counts(gts[s:s + 4], dets[s:s + 4]).mean() for s in range(0, 64, 4)]
    low, high = normal_interval(per_batch_pce)
    assert got["PCE"]["low"] == pytest.approx(low, abs=0.25 * (high - low))
    for name in ("AP", "SAP"):
        assert got[name]["low"] <= 100 * point[name] <= got[name]["high"]


def test_intervals_always_contain_the_point_estimate():
    rng = np.random.default_rng(0)
    for _ in range(20):
        replicates = rng.normal(0, 1, 50)
        point = float(rng.normal(0, 3))  # often far outside the replicates
        interval = percentile_interval(replicates, point)
        assert interval["low"] <= point <= interval["high"]
    assert percentile_interval([math.nan] * 5, 1.0) is None and percentile_interval([1.0], None) is None
    # FID replicates are biased upwards (resampling duplicates rows); the interval still holds the point
    real, fake = rng.normal(0, 1, (40, 8)), rng.normal(0.3, 1, (40, 8))
    point = fid_from_features(real, fake)
    out = quality_intervals({"s": (real, fake, real, fake)}, {"FID": point, "KID": 0.1,
                                                              "scenarios": {"s": {"FID": point, "KID": 0.1}}},
                            100.0, BootstrapSettings(quality_resamples=50))
    for key in ("FID", "KID"):
        assert out["all"][key]["low"] <= out["all"][key]["high"]
    assert out["s"]["FID"]["low"] <= point <= out["s"]["FID"]["high"]
    assert out["s"]["KID"]["low"] <= 0.1 <= out["s"]["KID"]["high"]


@pytest.mark.parametrize("n, d", [(30, 64), (200, 16)])  # fewer images than dimensions, and more
def test_fid_from_features_matches_torchmetrics(n, d):
    from torchmetrics.image.fid import FrechetInceptionDistance

    from grpose.eval.quality import _PrecomputedFeatures

    rng = np.random.default_rng(n)
    real, fake = rng.normal(0, 1, (n, d)), rng.normal(0.2, 1.3, (n + 5, d))
    fid = FrechetInceptionDistance(feature=_PrecomputedFeatures(d))
    fid.update(torch.from_numpy(real).float(), real=True)
    fid.update(torch.from_numpy(fake).float(), real=False)
    assert fid_from_features(real, fake) == pytest.approx(float(fid.compute()), rel=2e-3)


@pytest.mark.parametrize("n, d", [(30, 64), (120, 16)])
def test_gram_fid_of_a_resample_is_the_fid_of_the_resampled_rows(n, d):
    from grpose.eval.intervals import FIDBootstrap

    rng = np.random.default_rng(d)
    real, fake = rng.normal(0, 1, (n, d)), rng.normal(0.2, 1.1, (n + 7, d))
    i, j = rng.integers(0, n, n), rng.integers(0, n + 7, n + 7)
    assert FIDBootstrap(real, fake).fid(i, j) == pytest.approx(fid_from_features(real[i], fake[j]), rel=1e-6)


def test_kid_statistic_matches_torchmetrics_on_the_full_sets():
    from torchmetrics.image.kid import KernelInceptionDistance

    from grpose.eval.quality import _PrecomputedFeatures

    rng = np.random.default_rng(1)
    real, fake = rng.normal(0, 1, (50, 12)), rng.normal(0.3, 1, (50, 12))
    kid = KernelInceptionDistance(feature=_PrecomputedFeatures(12), subsets=1, subset_size=50)
    kid.update(torch.from_numpy(real).float(), real=True)
    kid.update(torch.from_numpy(fake).float(), real=False)
    want = float(kid.compute()[0])
    assert KIDBootstrap(real, fake).mmd2(np.arange(50), np.arange(50)) == pytest.approx(want, rel=1e-3)


def test_seed_spread_and_formatting():
    spread = seed_spread([49.0, 50.0, 51.0])
    assert spread["mean"] == 50.0 and spread["num_seeds"] == 3
    assert spread["half_width"] == pytest.approx(4.302653 * 1.0 / math.sqrt(3), rel=1e-5)  # t_{0.975, 2} * s/sqrt(3)
    assert seed_spread([1.0]) is None
    assert format_value(49.5, {"half_width": 0.8}) == "49.50 ± 0.80"
    assert format_value(0.0123, {"half_width": 0.00042}) == "0.01 ± 0.00042"
    assert format_value(None) == "n/a" and format_value(3.14159) == "3.14"


def test_resampling_is_seeded():
    values = np.arange(100.0)
    a = bootstrap_mean(values, BootstrapSettings(resamples=200, seed=1))
    assert a == bootstrap_mean(values, BootstrapSettings(resamples=200, seed=1))
    assert a != bootstrap_mean(values, BootstrapSettings(resamples=200, seed=2))
