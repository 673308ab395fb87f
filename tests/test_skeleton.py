"""Skeleton definition and renderer: limbs, palette, pixel-exact drawing rules, tensor conversions."""

import numpy as np
import pytest
import torch

from grpose.data.skeleton import (
    COCO17_LIMBS,
    LIMB_COLORS,
    overlay_pose,
    pack_persons,
    pose_image_to_tensor,
    render_skeleton,
    tensor_to_uint8,
)

# The release's palette (seaborn hls palette, 16 hues, h=.01 l=.6 s=.65, int(255 * c)).
REFERENCE_COLORS = [
    (219, 94, 86), (219, 144, 86), (219, 194, 86), (194, 219, 86),
    (145, 219, 86), (95, 219, 86), (86, 219, 127), (86, 219, 177),
    (86, 211, 219), (86, 161, 219), (86, 111, 219), (111, 86, 219),
    (160, 86, 219), (210, 86, 219), (219, 86, 178), (219, 86, 128),
]
SPEC_LIMBS = [(0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8), (7, 9), (8, 10), (5, 11), (6, 12),
              (11, 13), (12, 14), (13, 15), (14, 16)]


def missing_person():
    return np.tile(np.array([-1.0, -1.0, 0.0]), (1, 17, 1))


def colors_in(img):
    return {tuple(int(v) for v in c) for c in np.unique(img.reshape(-1, 3), axis=0)}


def test_limbs_and_colors_match_the_reference():
    assert list(COCO17_LIMBS) == SPEC_LIMBS
    assert list(LIMB_COLORS) == REFERENCE_COLORS
    assert (5, 6) not in COCO17_LIMBS and (11, 12) not in COCO17_LIMBS


@pytest.mark.parametrize("limb", range(16))
def test_single_limb_is_drawn_in_its_color_and_nothing_else(limb):
    a, b = COCO17_LIMBS[limb]
    kps = missing_person()
    kps[0, a] = (30.5, 40.5, 0.9)
    kps[0, b] = (90.5, 70.5, 0.3)
    img = render_skeleton(kps, height=128, width=128)
    assert img.dtype == np.uint8 and img.shape == (128, 128, 3)
    assert tuple(img[55, 60]) == LIMB_COLORS[limb]  # midpoint (60, 55)
    assert colors_in(img) == {(0, 0, 0), LIMB_COLORS[limb]}  # no antialiasing, no other limb


def test_limb_with_one_missing_end_draws_nothing():
    kps = missing_person()
    kps[0, 5] = (20, 20, 0.9)  # left shoulder present, left elbow (7) missing
    kps[0, 7] = (60, 60, 0.0)
    assert render_skeleton(kps, 96, 96).max() == 0
    kps[0, 7] = (60, 60, 0.02)  # exactly at the threshold is still missing
    assert render_skeleton(kps, 96, 96).max() == 0
    kps[0, 7] = (-1, -1, 0.9)  # negative coordinates mark a missing keypoint whatever the score
    assert render_skeleton(kps, 96, 96).max() == 0
    kps[0, 7] = (60, 60, 0.021)
    assert render_skeleton(kps, 96, 96).max() > 0


def test_all_missing_draws_nothing():
    assert render_skeleton(np.zeros((3, 17, 3)), 64, 80).shape == (64, 80, 3)
    assert render_skeleton(np.zeros((3, 17, 3)), 64, 80).max() == 0
    assert render_skeleton(np.zeros((0, 17, 3)), 32, 32).max() == 0


def test_joint_dots_extend_beyond_the_line_ends():
    kps = missing_person()
    kps[0, 0] = (40, 50, 1.0)
    kps[0, 1] = (80, 50, 1.0)  # horizontal nose - left eye limb
    img = render_skeleton(kps, 100, 120, line_width=10)
    color = LIMB_COLORS[0]
    # Beyond the line's end (x < 40) only the radius-5 dot can have drawn.
    assert tuple(img[50, 36]) == color and tuple(img[50, 84]) == color
    assert tuple(img[50, 33]) == (0, 0, 0) and tuple(img[50, 87]) == (0, 0, 0)
    assert tuple(img[45, 40]) == color and tuple(img[45, 80]) == color  # the dot is taller than the line
    assert tuple(img[45, 60]) == (0, 0, 0)
    assert tuple(img[57, 60]) == (0, 0, 0)  # outside the 10 px line


def test_line_width_parameter():
    kps = missing_person()
    kps[0, 5] = (50, 10, 1.0)
    kps[0, 7] = (50, 90, 1.0)
    widths = []
    for w in (2, 6, 10):
        img = render_skeleton(kps, 100, 100, line_width=w)
        widths.append(int((img[50].max(axis=-1) > 0).sum()))
    assert widths[0] < widths[1] < widths[2]
    assert abs(widths[2] - 10) <= 1


def test_later_limbs_and_persons_overwrite():
    kps = np.tile(np.array([-1.0, -1.0, 0.0]), (2, 17, 1))
    kps[0, 0], kps[0, 1] = (10, 50, 1), (90, 50, 1)  # person 0, limb 0 horizontal
    kps[1, 14], kps[1, 16] = (50, 10, 1), (50, 90, 1)  # person 1, limb 15 vertical through the same midpoint
    img = render_skeleton(kps, 100, 100)
    assert tuple(img[50, 50]) == LIMB_COLORS[15]
    assert tuple(img[50, 20]) == LIMB_COLORS[0]
    # Within one person the later limb wins at a shared joint: limb 1 (0-2) drawn after limb 0 (0-1).
    one = missing_person()
    one[0, 0], one[0, 1], one[0, 2] = (50, 50, 1), (90, 50, 1), (10, 50, 1)
    assert tuple(render_skeleton(one, 100, 100)[50, 50]) == LIMB_COLORS[1]


def test_accepts_torch_and_single_person():
    kps = missing_person()
    kps[0, 11], kps[0, 13] = (10.7, 10.2, 1), (50.1, 40.9, 1)
    expected = render_skeleton(kps, 64, 64)
    np.testing.assert_array_equal(render_skeleton(torch.from_numpy(kps).float(), 64, 64), expected)
    np.testing.assert_array_equal(render_skeleton(kps[0], 64, 64), expected)
    with pytest.raises(ValueError, match=r"\[P, 17, 3\]"):
        render_skeleton(np.zeros((2, 18, 3)))


def test_tensor_round_trip():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    t = pose_image_to_tensor(img)
    assert t.dtype == torch.float32 and t.shape == (3, 20, 30)
    assert t.min() >= -1 and t.max() <= 1
    assert t[:, 0, 0].tolist() == pytest.approx((img[0, 0] / 127.5 - 1).tolist(), abs=1e-6)
    np.testing.assert_array_equal(tensor_to_uint8(t), img)
    np.testing.assert_array_equal(tensor_to_uint8(torch.stack([t, t])), np.stack([img, img]))
    with pytest.raises(ValueError):
        pose_image_to_tensor(img.astype(np.float32))


def test_overlay_only_changes_skeleton_pixels():
    image = np.full((40, 40, 3), 100, dtype=np.uint8)
    pose = np.zeros_like(image)
    pose[10:20, 10:20] = (200, 0, 50)
    out = overlay_pose(image, pose, alpha=0.5)
    np.testing.assert_array_equal(out[:10], image[:10])
    assert tuple(out[15, 15]) == (150, 50, 75)
    np.testing.assert_array_equal(overlay_pose(image, pose, alpha=1.0)[10:20, 10:20], pose[10:20, 10:20])
    with pytest.raises(ValueError):
        overlay_pose(image, pose[:20])


def test_pack_persons_marks_missing_and_drops_empty_persons():
    kps = np.zeros((3, 17, 3))
    kps[0, :, :2], kps[0, :, 2] = 5.0, 0.9
    kps[0, 3] = (70.0, 5.0, 0.9)  # outside a 64-wide canvas
    kps[0, 4] = (5.0, 5.0, 0.02)  # not above the threshold
    # person 1 has no keypoint above the threshold
    kps[2, 0] = (10.0, 20.0, 0.5)
    out, n = pack_persons(kps, max_persons=4, height=64, width=64)
    assert n == 2 and out.shape == (4, 17, 3) and out.dtype == np.float32
    assert out[0, 3].tolist() == [-1, -1, 0] and out[0, 4].tolist() == [-1, -1, 0]
    assert out[0, 0].tolist() == pytest.approx([5, 5, 0.9])
    assert out[1, 0].tolist() == pytest.approx([10, 20, 0.5])  # person 2 moved up into slot 1
    assert (out[2:] == np.array([-1, -1, 0])).all()
    out, n = pack_persons(kps, max_persons=1, height=64, width=64)
    assert n == 1 and out[0, 0].tolist() == pytest.approx([5, 5, 0.9])
