"""Pose metrics (AP / SAP / PCE) against hand computations and direct pycocotools runs on hand-written JSON."""

import contextlib
import io
import math

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from grpose.eval.pose_metrics import (
    COCO17_SIGMAS,
    build_coco_dt,
    build_coco_gt,
    pose_metrics,
    weighted_cosine_similarity,
)

# COCO keypoint sigmas (cocodataset.org keypoint evaluation), copied by hand for the oracle.
SIGMAS = np.array([.26, .25, .25, .35, .35, .79, .79, .72, .72, .62, .62, 1.07, 1.07, .87, .87, .89, .89]) / 10
THRESHOLDS = np.linspace(0.5, 0.95, 10)


def person(center=(256.0, 256.0), scale=60.0, seed=0, missing=()):
    """A 17-keypoint person, (x, y, 1) for present keypoints, (-1, -1, 0) for the missing indices."""
    rng = np.random.default_rng(seed)
    kpts = np.ones((17, 3))
    kpts[:, :2] = np.asarray(center) + rng.uniform(-scale, scale, size=(17, 2))
    kpts[list(missing)] = (-1.0, -1.0, 0.0)
    return kpts


def as_detections(poses, score=0.9):
    """Detections identical to the given [P, 17, 3] poses (keypoint score 1 everywhere)."""
    dets = []
    for p in poses:
        k = p.copy()
        k[:, 2] = 1.0
        dets.append((k, score))
    return dets


@pytest.fixture
def scene():
    """Six images: 0-3 people each, some keypoints missing, one image without anybody."""
    poses = [
        np.stack([person((150, 200), seed=1), person((350, 300), seed=2, missing=(0, 3, 4))]),
        np.stack([person((256, 256), 90, seed=3, missing=(15, 16))]),
        np.zeros((0, 17, 3)),
        np.stack([person((100, 120), 40, seed=4), person((300, 150), 40, seed=5), person((400, 400), 50, seed=6)]),
        np.stack([person((256, 300), 70, seed=7, missing=(1, 2))]),
        np.stack([person((200, 200), 100, seed=8)]),
    ]
    return poses


def coco_stats(gt_json, dt_json):
    """stats of a plain pycocotools keypoint evaluation, nothing from grpose involved."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_json
        gt.createIndex()
        dt = gt.loadRes(dt_json)
        ev = COCOeval(gt, dt, "keypoints")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


def hand_gt_json(poses_per_image, placeholder_area=False):
    """COCO GT written out by hand: v=2 for present keypoints, bbox over present ones (or over all 17)."""
    images, anns = [], []
    for image_id, poses in enumerate(poses_per_image, start=1):
        images.append({"id": image_id, "width": 512, "height": 512})
        for p in poses:
            vis = p[:, 2] > 0
            pts = p[:, :2] if placeholder_area else p[vis, :2]
            x0, y0 = pts.min(0)
            x1, y1 = pts.max(0)
            kp = []
            for (x, y, s) in p:
                kp += [float(x), float(y), 2.0] if s > 0 else [0.0, 0.0, 0.0]
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": 1,
                    "iscrowd": 0,
                    "keypoints": kp,
                    "num_keypoints": int(vis.sum()),
                    "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
                    "area": float((x1 - x0) * (y1 - y0)),
                }
            )
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def hand_dt_json(dets_per_image):
    return [
        {"image_id": i, "category_id": 1, "keypoints": [float(v) for v in k.reshape(-1)], "score": float(s)}
        for i, dets in enumerate(dets_per_image, start=1)
        for k, s in dets
    ]


# --------------------------------------------------------------------------------------------------------------
# Perfect detections
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["standard", "paper"])
def test_perfect_detections(scene, protocol):
    m = pose_metrics(scene, [as_detections(p) for p in scene], protocol=protocol)
    for key in ("AP", "AP50", "AP75"):
        assert m[key] == pytest.approx(1.0, abs=1e-12)
    assert m["PCE"] == 0.0
    assert m["num_images"] == 6
    if protocol == "standard":
        assert m["SAP"] == pytest.approx(1.0, abs=1e-12)
    else:
        # The release's y-bug makes even an identical pose score below 1 (see the SAP hand cases).
        assert 0.0 < m["SAP"] < 1.0


def test_perfect_detections_paper_sap_is_exact_when_bug_is_harmless():
    # Two visible joints on a diagonal: min-max x = y = [0, 1], so ||y|| = 1 and x = y; the y-bug changes nothing.
    p = np.full((17, 3), -1.0)
    p[:, 2] = 0
    p[5] = (100, 100, 1)
    p[6] = (200, 200, 1)
    m = pose_metrics([p[None]], [as_detections(p[None])], protocol="paper")
    # pycocotools' precision is tp / (tp + fp + eps): one true positive gives 1 - 1e-16.
    assert m["SAP"] == pytest.approx(1.0, abs=1e-12) and m["AP"] == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------------------------------
# AP against OKS
# --------------------------------------------------------------------------------------------------------------


def analytic_oks(shift, area):
    return float(np.mean(np.exp(-(shift**2) / (2 * area * (2 * SIGMAS) ** 2))))


def test_single_person_shift_matches_analytic_ap():
    gt = person((256, 256), 80, seed=11)
    x0, y0 = gt[:, :2].min(0)
    x1, y1 = gt[:, :2].max(0)
    area = (x1 - x0) * (y1 - y0)
    previous = 1.0
    seen_between = False
    for shift in [0.0, 2.0, 4.0, 6.0, 9.0, 13.0, 20.0, 40.0]:
        det = gt.copy()
        det[:, 0] += shift
        oks = analytic_oks(shift, area)
        expected = float(np.mean(THRESHOLDS <= oks))
        m = pose_metrics([gt[None]], [[(det, 0.8)]], protocol="standard")
        assert m["AP"] == pytest.approx(expected, abs=1e-12), (shift, oks)
        assert m["AP50"] == pytest.approx(1.0 if oks >= 0.5 else 0.0, abs=1e-12)
        assert m["AP"] <= previous
        previous = m["AP"]
        seen_between |= 0.0 < expected < 1.0
    assert seen_between, "no shift landed between the OKS thresholds; the test would not discriminate"


@pytest.mark.parametrize("n_images", [5, 9])
def test_standard_ap_equals_direct_pycocotools(scene, n_images):
    rng = np.random.default_rng(n_images)
    poses = (scene * 2)[:n_images]
    dets = []
    for p in poses:
        d = []
        for q in p:
            if rng.random() < 0.15:
                continue  # a missed person
            k = q.copy()
            k[:, :2] += rng.normal(0, rng.uniform(0, 10), size=(17, 2))
            k[:, 2] = rng.uniform(0.05, 1, 17)
            d.append((k, float(rng.uniform(0.1, 1))))
        if rng.random() < 0.3:  # a hallucinated person
            d.append((np.column_stack([rng.uniform(0, 512, (17, 2)), np.ones(17)]), float(rng.uniform(0.1, 1))))
        dets.append(d)
    m = pose_metrics(poses, dets, protocol="standard")
    stats = coco_stats(hand_gt_json(poses), hand_dt_json(dets))
    assert 0.0 < m["AP"] < 1.0
    for key, idx in {"AP": 0, "AP50": 1, "AP75": 2}.items():
        assert m[key] == pytest.approx(stats[idx], abs=1e-12)


def test_paper_ap_is_mean_of_direct_per_batch_evaluations(scene):
    rng = np.random.default_rng(3)
    poses = scene + [scene[0], scene[1], scene[3]]  # 9 images -> batches of 4, 4, 1
    dets = []
    for p in poses:
        d = []
        for q in p:
            k = q.copy()
            k[:, :2] += rng.normal(0, 6, size=(17, 2))
            d.append((k, float(rng.uniform(0.1, 1))))
        dets.append(d)
    m = pose_metrics(poses, dets, protocol="paper", batch_size=4)
    per_batch = []
    for start in range(0, 9, 4):
        stats = coco_stats(
            hand_gt_json(poses[start : start + 4], placeholder_area=True), hand_dt_json(dets[start : start + 4])
        )
        assert stats[0] >= 0
        per_batch.append(stats[0])
    assert m["AP"] == pytest.approx(np.mean(per_batch), abs=1e-12)


def test_paper_placeholder_area_raises_ap_and_moves_area_bins():
    # A small person (60 x 60 box, "medium") far from the origin with one missing keypoint: the paper GT box
    # stretches to (-1, -1), becomes "large", and its bigger OKS scale forgives the same shift.
    gt = person((420, 420), 30, seed=5, missing=(3,))
    det = gt.copy()
    det[:, 2] = 1.0
    det[:, 0] += 6.0
    det[3, :2] = (420, 420)  # the detector still outputs something for the missing joint
    std = pose_metrics([gt[None]], [[(det, 0.9)]], protocol="standard")
    paper = pose_metrics([gt[None]], [[(det, 0.9)]], protocol="paper")
    assert not math.isnan(std["APm"]) and math.isnan(std["APl"])
    assert math.isnan(paper["APm"]) and not math.isnan(paper["APl"])
    assert paper["AP"] > std["AP"]


def test_build_coco_gt_boxes():
    p = person((300, 200), 50, seed=9, missing=(0, 16))
    vis = p[:, 2] > 0
    std = build_coco_gt([p[None]], [7], protocol="standard")["annotations"][0]
    paper = build_coco_gt([p[None]], [7], protocol="paper")["annotations"][0]
    x0, y0 = p[vis, :2].min(0)
    x1, y1 = p[vis, :2].max(0)
    assert std["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    assert std["area"] == pytest.approx((x1 - x0) * (y1 - y0))
    assert paper["bbox"][:2] == [-1.0, -1.0]
    assert paper["area"] == pytest.approx((x1 + 1) * (y1 + 1))
    assert std["num_keypoints"] == paper["num_keypoints"] == 15
    assert std["image_id"] == 7 and std["id"] == 1


def test_people_without_keypoints_are_not_annotations():
    empty = np.full((17, 3), -1.0)
    empty[:, 2] = 0
    gt = build_coco_gt([np.stack([empty, person()])], [1])
    assert len(gt["annotations"]) == 1
    dt = build_coco_dt([[(person(), 0.5), (np.zeros((17, 3)), 0.9)]], [1])
    assert len(dt) == 1  # an all-zero-score detection is dropped, as xtcocotools does


# --------------------------------------------------------------------------------------------------------------
# PCE
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", ["standard", "paper"])
def test_pce_counts_missing_and_extra_people(scene, protocol):
    dets = [as_detections(p) for p in scene]
    dets[0] = dets[0][:1]  # one person missed: +1
    dets[3] = dets[3] + [(person((50, 50), seed=40), 0.01)]  # one extra, low score still counts: +1
    dets[2] = [(person(seed=41), 0.3), (person(seed=42), 0.2)]  # two people where there is nobody: +2
    m = pose_metrics(scene, dets, protocol=protocol, batch_size=3)
    assert m["PCE"] == pytest.approx(4 / 6)


def test_pce_pairs_images_even_when_some_have_nobody():
    # The release enumerated only images with GT, pairing counts with the wrong images; ours pairs by index.
    poses = [np.zeros((0, 17, 3)), np.stack([person(seed=1), person(seed=2)]), np.zeros((0, 17, 3))]
    dets = [[], as_detections(poses[1]), []]
    assert pose_metrics(poses, dets)["PCE"] == 0.0
    dets = [[], as_detections(poses[1])[:1], [(person(seed=3), 0.5)]]
    assert pose_metrics(poses, dets)["PCE"] == pytest.approx(2 / 3)


def test_no_people_anywhere():
    poses = [np.zeros((0, 17, 3))] * 3
    m = pose_metrics(poses, [[], [(person(), 0.5)], []], protocol="standard")
    assert math.isnan(m["AP"]) and math.isnan(m["SAP"])
    assert m["PCE"] == pytest.approx(1 / 3)
    m = pose_metrics(poses, [[], [], []], protocol="paper")
    assert math.isnan(m["AP"]) and m["PCE"] == 0.0


def test_no_detections_gives_zero_ap(scene):
    m = pose_metrics(scene, [[] for _ in scene])
    assert m["AP"] == 0.0 and m["SAP"] == 0.0
    assert m["PCE"] == pytest.approx(np.mean([len(p) for p in scene]))


def test_misaligned_inputs_fail():
    with pytest.raises(ValueError, match="aligned"):
        pose_metrics([np.zeros((0, 17, 3))], [[], []])
    with pytest.raises(ValueError, match="protocol"):
        pose_metrics([np.zeros((0, 17, 3))], [[]], protocol="fancy")


# --------------------------------------------------------------------------------------------------------------
# SAP similarity
# --------------------------------------------------------------------------------------------------------------


def three_joint_pose(points):
    p = np.full((17, 3), -1.0)
    p[:, 2] = 0
    for j, (x, y) in zip((5, 7, 9), points):
        p[j] = (x, y, 1)
    return p


def test_similarity_identical_and_scaled():
    g = person(seed=21, missing=(2, 8))
    assert weighted_cosine_similarity(g, g) == pytest.approx(1.0)
    scaled = g.copy()
    scaled[:, :2] *= 1.7
    assert weighted_cosine_similarity(g, scaled) == pytest.approx(1.0)


def test_similarity_translation_invariant_only_with_equal_sigmas():
    g = person(seed=22)
    moved = g.copy()
    moved[:, :2] += (35.0, -20.0)
    assert weighted_cosine_similarity(g, moved, sigmas=np.ones(17)) == pytest.approx(1.0)
    scaled_moved = moved.copy()
    scaled_moved[:, :2] *= 0.6
    assert weighted_cosine_similarity(g, scaled_moved, sigmas=np.ones(17)) == pytest.approx(1.0)
    # Dividing by per-joint sigmas before the min-max step makes a shift visible.
    assert weighted_cosine_similarity(g, moved) < 1.0 - 1e-6


def test_similarity_mirrored_pose_hand_value():
    # x = [0, 1, 2] -> u = [0, .5, 1]; mirrored -> [1, .5, 0]; cos_x = .25 / 1.25 = .2; y unchanged, cos_y = 1.
    g = three_joint_pose([(0, 0), (1, 2), (2, 1)])
    d = three_joint_pose([(10, 0), (9, 2), (8, 1)])
    assert weighted_cosine_similarity(g, d, sigmas=np.ones(17)) == pytest.approx(0.6)
    # Release bug: y_d := x_d_unit / ||y_d minmax|| with ||y_d minmax|| = sqrt(1.25); y_g . x_d = .5 / 1.25.
    expected_bug = (0.2 + 0.4 / math.sqrt(1.25)) / (math.sqrt(2) * math.sqrt(1 + 1 / 1.25))
    assert weighted_cosine_similarity(g, d, sigmas=np.ones(17), release_bug=True) == pytest.approx(expected_bug)


def test_similarity_ignores_joints_invisible_in_gt_and_nan_on_zero_range():
    g = person(seed=23, missing=(0, 1, 2))
    d = g.copy()
    d[0:3, :2] = (500, 3)  # garbage where GT has nothing
    d[0:3, 2] = 1
    assert weighted_cosine_similarity(g, d) == pytest.approx(1.0)
    single = np.full((17, 3), -1.0)
    single[:, 2] = 0
    single[4] = (100, 100, 1)
    assert math.isnan(weighted_cosine_similarity(single, person()))
    assert np.array_equal(COCO17_SIGMAS, SIGMAS)


def test_paper_sap_single_person_follows_bugged_similarity():
    g = person((256, 256), 80, seed=31)
    cos_bug = weighted_cosine_similarity(g, g, release_bug=True)
    m = pose_metrics([g[None]], [as_detections(g[None])], protocol="paper")
    assert m["SAP"] == pytest.approx(float(np.mean(THRESHOLDS <= cos_bug)), abs=1e-12)
    assert 0.0 < m["SAP"] < 1.0


def test_undefined_similarity_matches_only_in_paper_protocol():
    # A GT with one visible joint has no min-max range -> NaN. The release's matching loop lets NaN match.
    g = np.full((17, 3), -1.0)
    g[:, 2] = 0
    g[0] = (200, 200, 1)
    det = person((200, 200), 30, seed=33)
    assert pose_metrics([g[None]], [[(det, 0.9)]], protocol="standard")["SAP"] == 0.0
    assert pose_metrics([g[None]], [[(det, 0.9)]], protocol="paper")["SAP"] == pytest.approx(1.0, abs=1e-12)


def test_backends_agree(scene):
    pytest.importorskip("xtcocotools")
    rng = np.random.default_rng(5)
    dets = []
    for p in scene:
        dets.append([(q + np.column_stack([rng.normal(0, 5, (17, 2)), np.zeros(17)]), 0.5) for q in p])
    for protocol in ("standard", "paper"):
        a = pose_metrics(scene, dets, protocol=protocol, backend="xtcocotools")
        b = pose_metrics(scene, dets, protocol=protocol, backend="pycocotools")
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == pytest.approx(b[key], abs=1e-12, nan_ok=True)
