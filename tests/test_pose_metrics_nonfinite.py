"""NaN/inf keypoints never score as matches: a far detection with one NaN coordinate gets AP 0, not 1."""

import json
import logging
import math

import numpy as np
import pytest
from omegaconf import OmegaConf

from grpose.config import EvalConfig
from grpose.eval.finite_inputs import NONFINITE_KEYS, drop_nonfinite
from grpose.eval.run_layout import RunLayout
from grpose.eval.pose_metrics import METRIC_KEYS, _evaluate, build_coco_dt, build_coco_gt, pose_metrics
from grpose.eval.report import write_report

PROTOCOLS = ("standard", "paper")
SCORES = ("AP", "AP50", "AP75", "APm", "APl", "SAP")


def person(center=(256.0, 256.0), scale=60.0, seed=0):
    rng = np.random.default_rng(seed)
    kpts = np.ones((17, 3))
    kpts[:, :2] = np.asarray(center) + rng.uniform(-scale, scale, size=(17, 2))
    return kpts


def far_detection(gt, nan_at=None):
    """The GT person moved 200 px away (OKS ~ 0), optionally with the value at index `nan_at` set to NaN."""
    det = gt.copy()
    det[:, :2] += 200.0
    if nan_at is not None:
        det[nan_at] = math.nan
    return det


def same(a, b):
    return a == b or (math.isnan(a) and math.isnan(b))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_unguarded_cocoeval_scores_a_nan_detection_as_a_perfect_match(protocol):
    """The bug the guard exists for, straight through COCOeval (pycocotools' own matching)."""
    gt = person()
    coco_gt = build_coco_gt([gt[None]], [1], 512, protocol)
    far = _evaluate(coco_gt, build_coco_dt([[(far_detection(gt), 0.9)]], [1]), "pycocotools")
    with_nan = _evaluate(coco_gt, build_coco_dt([[(far_detection(gt, nan_at=(3, 0)), 0.9)]], [1]), "pycocotools")
    assert far[0] == 0.0
    assert with_nan[0] == pytest.approx(1.0)  # AP 0 -> 1 for one NaN coordinate


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("bad", [(3, 0), (0, 1), (5, 2)], ids=["x", "y", "keypoint score"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_nonfinite_detection_is_dropped_in_both_protocols(protocol, bad, value, caplog):
    gt = person()
    det = far_detection(gt)
    det[bad] = value
    with caplog.at_level(logging.WARNING, logger="grpose.eval.finite_inputs"):
        guarded = pose_metrics([gt[None]], [[(det, 0.9)]], protocol=protocol)
    finite_far = pose_metrics([gt[None]], [[(far_detection(gt), 0.9)]], protocol=protocol)
    nothing = pose_metrics([gt[None]], [[]], protocol=protocol)
    assert guarded["AP"] == finite_far["AP"] == 0.0
    # dropped means "never returned by the estimator": every metric, PCE included, as with no detection
    assert all(same(guarded[k], nothing[k]) for k in METRIC_KEYS)
    assert guarded["dropped_nonfinite_detections"] == 1 and guarded["dropped_nonfinite_gt_keypoints"] == 0
    assert "dropped 1 detection(s) with NaN/inf" in caplog.text


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_nonfinite_person_score_drops_the_detection_and_keeps_the_good_one(protocol):
    gt = person()
    good = gt.copy()
    m = pose_metrics([gt[None]], [[(good, 0.8), (far_detection(gt), math.nan)]], protocol=protocol)
    assert m["AP"] == pytest.approx(1.0) and m["PCE"] == 0.0
    assert m["dropped_nonfinite_detections"] == 1


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_nonfinite_gt_keypoint_counts_as_missing(protocol, value):
    gt = person(seed=4)
    det = gt.copy()
    det[:, :2] += 3.0  # close but not exact, so OKS depends on which GT keypoints count
    broken, missing = gt.copy(), gt.copy()
    broken[7, 1] = value
    missing[7] = (-1.0, -1.0, 0.0)
    guarded = pose_metrics([broken[None]], [[(det, 0.9)]], protocol=protocol)
    reference = pose_metrics([missing[None]], [[(det, 0.9)]], protocol=protocol)
    assert all(same(guarded[k], reference[k]) for k in METRIC_KEYS)
    assert guarded["dropped_nonfinite_gt_keypoints"] == 1 and guarded["dropped_nonfinite_detections"] == 0


def test_nonfinite_placeholder_of_a_missing_gt_keypoint_is_counted_too():
    """`paper` puts the placeholders of missing keypoints into the GT area, so a NaN there matters as well."""
    gt = person()
    gt[2] = (math.nan, math.nan, 0.0)
    clean, dets, counts = drop_nonfinite([gt[None]], [[]])
    assert counts == {"dropped_nonfinite_detections": 0, "dropped_nonfinite_gt_keypoints": 1}
    assert np.array_equal(clean[0][0, 2], [-1.0, -1.0, 0.0]) and np.isfinite(clean[0]).all()
    assert math.isnan(gt[2, 0])  # the caller's array is not modified


def test_finite_inputs_report_zero_counts_and_unchanged_metrics():
    gt = person()
    m = pose_metrics([gt[None]], [[(gt.copy(), 0.9)]])
    assert {k: m[k] for k in NONFINITE_KEYS} == dict.fromkeys(NONFINITE_KEYS, 0)
    assert m["AP"] == pytest.approx(1.0)


def test_counts_reach_metrics_json_and_a_warning_line_in_metrics_md(tmp_path):
    gt = person()
    pose = pose_metrics([gt[None], gt[None]], [[(far_detection(gt, nan_at=(0, 0)), 0.9)], [(gt.copy(), 0.9)]],
                        protocol="paper")
    pose["scenarios"] = {}
    records = [{"scenario": "dance"}, {"scenario": "dance"}]
    eval_cfg = OmegaConf.merge(OmegaConf.structured(EvalConfig),
                               {"protocol": "paper", "kid_scale": 100.0, "min_scenario_images": 50})
    layout = RunLayout(tmp_path / "run")
    write_report(layout, "run", {"pose": pose}, records, eval_cfg)
    saved = json.loads(layout.metrics_json.read_text())
    assert saved["pose"]["dropped_nonfinite_detections"] == 1
    assert saved["pose"]["dropped_nonfinite_gt_keypoints"] == 0
    markdown = layout.metrics_md.read_text()
    assert "**Warning:** pose scoring dropped 1 detection(s) with NaN/inf values" in markdown

    clean = pose_metrics([gt[None]], [[(gt.copy(), 0.9)]])
    clean["scenarios"] = {}
    write_report(layout, "run", {"pose": clean}, records[:1], eval_cfg)
    assert "Warning" not in layout.metrics_md.read_text()
