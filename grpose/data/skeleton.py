"""COCO-17 limbs, their colours and the skeleton renderer that turns keypoints into the pose condition image.

This is the only place the skeleton is defined; datasets, sampling grids and `scripts/pose2img.py` all call it.
"""

from __future__ import annotations

import colorsys
from typing import Union

import numpy as np
import torch
from PIL import Image, ImageDraw

# The 16 HumanSD limbs. There is deliberately no shoulder-shoulder or hip-hip link: the pretrained
# lineage (HumanSD, Stable-Pose, GRPose) was trained on exactly these.
COCO17_LIMBS: tuple[tuple[int, int], ...] = (
    (0, 1), (0, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7), (6, 8),
    (7, 9), (8, 10), (5, 11), (6, 12), (11, 13), (12, 14), (13, 15), (14, 16),
)


def _hls_palette(n_colors: int, h: float = 0.01, lightness: float = 0.6, saturation: float = 0.65):
    """seaborn's `color_palette("hls", n)` (evenly spaced hues from `h`) as 0..255 ints, truncated like the release."""
    colors = []
    for i in range(n_colors):
        hue = (i / n_colors + h) % 1.0
        rgb = colorsys.hls_to_rgb(hue, lightness, saturation)
        colors.append(tuple(int(255 * c) for c in rgb))
    return tuple(colors)


LIMB_COLORS: tuple[tuple[int, int, int], ...] = _hls_palette(len(COCO17_LIMBS))

ArrayLike = Union[np.ndarray, torch.Tensor]


def _as_keypoint_array(keypoints: ArrayLike) -> np.ndarray:
    kps = keypoints.detach().cpu().numpy() if isinstance(keypoints, torch.Tensor) else np.asarray(keypoints)
    kps = kps.astype(np.float64, copy=False)
    if kps.ndim == 2:
        kps = kps[None]
    if kps.ndim != 3 or kps.shape[1:] != (17, 3):
        raise ValueError(f"keypoints must have shape [P, 17, 3] (x, y, score), got {tuple(kps.shape)}")
    return kps


def keypoint_present(keypoints: ArrayLike, score_threshold: float = 0.02) -> np.ndarray:
    """Boolean [P, 17]: score above the threshold and non-negative coordinates ((-1, -1, 0) marks a missing one)."""
    kps = _as_keypoint_array(keypoints)
    return (kps[..., 2] > score_threshold) & (kps[..., 0] >= 0) & (kps[..., 1] >= 0)


def pack_persons(
    keypoints: ArrayLike, max_persons: int, height: int, width: int, score_threshold: float = 0.02
) -> tuple[np.ndarray, int]:
    """The sample contract's keypoint tensor: float32 [max_persons, 17, 3] and the number of persons kept.

    A keypoint is kept when its score is above the threshold and it lies inside the height x width canvas; the
    others become (-1, -1, 0). Persons left with no keypoint are dropped, then the first `max_persons` are kept.
    """
    kps = _as_keypoint_array(keypoints) if len(keypoints) else np.zeros((0, 17, 3))
    inside = (kps[..., 0] >= 0) & (kps[..., 0] < width) & (kps[..., 1] >= 0) & (kps[..., 1] < height)
    keep = inside & (kps[..., 2] > score_threshold)
    out = np.tile(np.array([-1.0, -1.0, 0.0], dtype=np.float32), (max_persons, 17, 1))
    persons = [p for p in range(len(kps)) if keep[p].any()][:max_persons]
    for slot, p in enumerate(persons):
        out[slot][keep[p]] = kps[p][keep[p]]
    return out, len(persons)


def render_skeleton(
    keypoints: ArrayLike,
    height: int = 512,
    width: int = 512,
    line_width: int = 10,
    score_threshold: float = 0.02,
) -> np.ndarray:
    """Draw the persons' limbs on a black canvas; returns uint8 [height, width, 3] RGB.

    `keypoints` is [P, 17, 3] (or [17, 3]) in pixel coordinates of the canvas. A limb is drawn only when both of its
    ends are present, as a `line_width` line plus filled dots of radius `line_width // 2` at both ends in the limb's
    colour; later limbs and persons overwrite earlier ones. PIL draws without antialiasing, so every drawn pixel
    has exactly a palette colour.
    """
    kps = _as_keypoint_array(keypoints)
    present = keypoint_present(kps, score_threshold)
    canvas = Image.new("RGB", (int(width), int(height)), (0, 0, 0))
    draw = ImageDraw.Draw(canvas)
    radius = int(line_width) // 2
    for person, person_present in zip(kps, present):
        if not person_present.any():
            continue
        # Continuous coordinates (pixel i spans [i, i+1), the convention of the crop transform) -> the pixel that
        # contains the point, as the reference's integer cv2 drawing did.
        # NaN is never present; the clip only keeps absurd coordinates from overflowing the integer cast.
        coords = np.clip(np.nan_to_num(person[:, :2], nan=-1.0), -1e6, 1e6)
        points = np.floor(coords).astype(np.int64)
        for (a, b), color in zip(COCO17_LIMBS, LIMB_COLORS):
            if not (person_present[a] and person_present[b]):
                continue
            (xa, ya), (xb, yb) = points[a].tolist(), points[b].tolist()
            draw.line([(xa, ya), (xb, yb)], fill=color, width=int(line_width))
            for x, y in ((xa, ya), (xb, yb)):
                if radius > 0:
                    draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=color)
                else:  # PIL draws nothing for a zero-size ellipse
                    draw.point((x, y), fill=color)
    return np.asarray(canvas, dtype=np.uint8).copy()


def pose_image_to_tensor(img_uint8: np.ndarray) -> torch.Tensor:
    """uint8 HxWx3 -> float32 3xHxW in [-1, 1] (the scaling used for both the image and the hint)."""
    arr = np.asarray(img_uint8)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected a uint8 HxWx3 image, got dtype {arr.dtype} and shape {arr.shape}")
    # numpy, not torch ops: tiny torch kernels cost milliseconds each inside data-loader workers.
    chw = arr.transpose(2, 0, 1).astype(np.float32) / np.float32(127.5) - np.float32(1.0)
    return torch.from_numpy(np.ascontiguousarray(chw))


def tensor_to_uint8(t: torch.Tensor) -> np.ndarray:
    """Inverse of `pose_image_to_tensor`: 3xHxW (or Bx3xHxW) in [-1, 1] -> uint8 HxWx3 (or BxHxWx3)."""
    if t.ndim not in (3, 4) or t.shape[-3] != 3:
        raise ValueError(f"expected a 3xHxW or Bx3xHxW tensor, got shape {tuple(t.shape)}")
    scaled = ((t.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return scaled.movedim(-3, -1).numpy()


def overlay_pose(image_uint8: np.ndarray, pose_uint8: np.ndarray, alpha: float = 0.7) -> np.ndarray:
    """Blend the skeleton over the image wherever the pose image is non-black (sample grids)."""
    image = np.asarray(image_uint8)
    pose = np.asarray(pose_uint8)
    if image.shape != pose.shape or image.dtype != np.uint8 or pose.dtype != np.uint8:
        raise ValueError(f"image and pose must be uint8 arrays of the same shape, got {image.dtype}{image.shape} "
                         f"and {pose.dtype}{pose.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    mask = pose.max(axis=-1, keepdims=True) > 0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * pose.astype(np.float32)
    return np.where(mask, np.rint(blended), image).astype(np.uint8)
