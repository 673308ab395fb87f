"""Procedurally posed COCO-17 stick figures with captions: a download-free dataset for the demo and the tests.

Every sample is a deterministic function of (seed, index): 1-3 people with human proportions and random limb
angles, drawn as coloured bodies on a simple scene, plus the skeleton hint and a caption that describes them.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

from grpose.data.skeleton import pack_persons, pose_image_to_tensor, render_skeleton

# Scene name -> (caption phrase, sky/top colour, ground/bottom colour or None for a plain background).
SYNTHETIC_SCENES: dict[str, tuple[str, tuple[int, int, int], Optional[tuple[int, int, int]]]] = {
    "park": ("in a park", (140, 190, 235), (70, 150, 60)),
    "beach": ("on a beach", (120, 180, 240), (225, 205, 150)),
    "studio": ("in a grey studio", (128, 128, 128), None),
    "night_street": ("on a street at night", (25, 25, 55), (75, 75, 80)),
}

_BODY_COLORS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "blue": (35, 70, 210),
    "yellow": (235, 210, 40),
    "purple": (130, 50, 170),
    "orange": (240, 130, 20),
    "white": (240, 240, 240),
    "pink": (240, 120, 180),
    "black": (20, 20, 20),
}
_SKIN_TONES = ((240, 205, 170), (200, 150, 110), (140, 95, 60), (95, 60, 40))

# Action -> caption phrase; each has its own range of limb angles in `_sample_angles`.
_ACTIONS: dict[str, str] = {
    "standing": "standing",
    "waving": "waving",
    "arms_up": "with raised arms",
    "arms_out": "with arms stretched out",
    "walking": "walking",
    "dancing": "dancing",
}
_COUNT_WORDS = {1: "a person", 2: "two people", 3: "three people"}

# Segment lengths as fractions of the person's height (roughly adult proportions, head top to ankle).
_TORSO, _SHOULDER_HALF, _HIP_HALF = 0.30, 0.11, 0.08
_NECK_TO_NOSE, _UPPER_ARM, _FOREARM, _THIGH, _SHIN = 0.09, 0.17, 0.15, 0.24, 0.23
_HEAD_RADIUS = 0.075
_MISSING_PROB = 0.04  # probability that an individual keypoint is un-annotated (score 0)


def _default_skeleton_width(resolution: int) -> int:
    # The reference draws width 10 at 512 px; keep the same proportion but never thinner than 2 px.
    return max(2, round(10 * resolution / 512))


def _sample_angles(rng: np.random.Generator, action: str) -> dict[str, float]:
    """Limb angles in radians measured from straight down, positive away from the body's midline."""
    u = rng.uniform

    def arm_down():
        return u(0.05, 0.5), u(-0.2, 0.5)

    def arm_up():
        return u(2.2, 2.9), u(-0.5, 0.5)

    def leg_straight():
        return u(0.0, 0.15), u(-0.1, 0.05)

    if action == "standing":
        arms, legs = (arm_down(), arm_down()), (leg_straight(), leg_straight())
    elif action == "waving":
        arms = (arm_up(), arm_down()) if rng.random() < 0.5 else (arm_down(), arm_up())
        legs = (leg_straight(), leg_straight())
    elif action == "arms_up":
        arms, legs = (arm_up(), arm_up()), (leg_straight(), leg_straight())
    elif action == "arms_out":
        arms = ((u(1.3, 1.8), u(-0.2, 0.2)), (u(1.3, 1.8), u(-0.2, 0.2)))
        legs = ((u(0.05, 0.3), u(-0.1, 0.05)), (u(0.05, 0.3), u(-0.1, 0.05)))
    elif action == "walking":
        arms = ((u(-0.3, 0.4), u(0.0, 0.5)), (u(-0.3, 0.4), u(0.0, 0.5)))
        stride = u(0.2, 0.45)
        legs = ((stride, u(-0.3, 0.0)), (u(-0.25, 0.0), u(0.0, 0.2)))
        if rng.random() < 0.5:
            legs = legs[::-1]
    elif action == "dancing":
        arms = ((u(0.0, 3.0), u(-1.2, 1.2)), (u(0.0, 3.0), u(-1.2, 1.2)))
        legs = ((u(0.0, 0.6), u(-0.6, 0.3)), (u(0.0, 0.6), u(-0.6, 0.3)))
    else:
        raise ValueError(f"unknown action {action!r}; expected one of {sorted(_ACTIONS)}")
    (lu, lf), (ru, rf) = arms
    (lt, ls), (rt, rs) = legs
    return {"l_upper": lu, "l_fore": lf, "r_upper": ru, "r_fore": rf,
            "l_thigh": lt, "l_shin": ls, "r_thigh": rt, "r_shin": rs}


def _canonical_pose(rng: np.random.Generator, action: str) -> np.ndarray:
    """17x2 COCO keypoints of a front-facing person of height 1 with the pelvis at the origin (y down)."""
    lean = rng.uniform(-0.2, 0.2)
    up = np.array([np.sin(lean), -np.cos(lean)])
    # The person's left is the image's right for a front-facing person (COCO left/right are the person's own).
    left = np.array([np.cos(lean), np.sin(lean)])
    down = -up
    tilt = lean + rng.uniform(-0.25, 0.25)
    head_up = np.array([np.sin(tilt), -np.cos(tilt)])
    head_left = np.array([np.cos(tilt), np.sin(tilt)])
    angles = _sample_angles(rng, action)

    def direction(angle, side):
        return np.cos(angle) * down + side * np.sin(angle) * left

    kps = np.zeros((17, 2))
    pelvis = np.zeros(2)
    neck = pelvis + _TORSO * up
    kps[0] = neck + _NECK_TO_NOSE * head_up
    kps[1], kps[2] = kps[0] + 0.03 * head_up + 0.03 * head_left, kps[0] + 0.03 * head_up - 0.03 * head_left
    kps[3], kps[4] = kps[0] + 0.015 * head_up + 0.065 * head_left, kps[0] + 0.015 * head_up - 0.065 * head_left
    for side, prefix, shoulder, elbow, wrist, hip, knee, ankle in (
        (1.0, "l", 5, 7, 9, 11, 13, 15),
        (-1.0, "r", 6, 8, 10, 12, 14, 16),
    ):
        kps[shoulder] = neck + side * _SHOULDER_HALF * left
        upper = angles[f"{prefix}_upper"]
        kps[elbow] = kps[shoulder] + _UPPER_ARM * direction(upper, side)
        kps[wrist] = kps[elbow] + _FOREARM * direction(upper + angles[f"{prefix}_fore"], side)
        kps[hip] = pelvis + side * _HIP_HALF * left
        thigh = angles[f"{prefix}_thigh"]
        kps[knee] = kps[hip] + _THIGH * direction(thigh, side)
        kps[ankle] = kps[knee] + _SHIN * direction(thigh + angles[f"{prefix}_shin"], side)
    return kps


def _draw_person(draw: ImageDraw.ImageDraw, kps: np.ndarray, height: float, body, skin) -> None:
    """A filled body along the full (un-dropped) skeleton: the photo shows people whether annotated or not."""
    pts = [tuple(p) for p in kps.tolist()]
    limb_w = max(2, int(round(0.07 * height)))
    legs = tuple(int(0.6 * c) for c in body)  # darker trousers so legs and arms differ in the photo
    for a, b, color in ((11, 13, legs), (13, 15, legs), (12, 14, legs), (14, 16, legs)):
        draw.line([pts[a], pts[b]], fill=color, width=limb_w)
    draw.polygon([pts[5], pts[6], pts[12], pts[11]], fill=body)
    for a, b in ((5, 7), (7, 9), (6, 8), (8, 10)):
        draw.line([pts[a], pts[b]], fill=body, width=limb_w)
    neck = (kps[5] + kps[6]) / 2
    draw.line([tuple(neck), pts[0]], fill=skin, width=max(1, limb_w // 2))
    center = (kps[3] + kps[4]) / 2
    r = _HEAD_RADIUS * height
    draw.ellipse([center[0] - r, center[1] - r, center[0] + r, center[1] + r], fill=skin)


class SyntheticPoseDataset(Dataset):
    """Samples with the project's batch contract (see `grpose.data.humanart`); nothing is read from disk."""

    def __init__(
        self,
        num_samples: int,
        resolution: int = 64,
        max_persons: int = 10,
        seed: int = 0,
        prompt_dropout: float = 0.0,
        skeleton_width: Optional[int] = None,
        score_threshold: float = 0.02,
    ):
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {prompt_dropout}")
        if max_persons < 1:
            raise ValueError(f"max_persons must be >= 1, got {max_persons}")
        self.num_samples = int(num_samples)
        self.resolution = int(resolution)
        self.max_persons = int(max_persons)
        self.seed = int(seed)
        self.prompt_dropout = float(prompt_dropout)
        self.skeleton_width = int(skeleton_width) if skeleton_width else _default_skeleton_width(self.resolution)
        self.score_threshold = float(score_threshold)
        self.scenes = tuple(SYNTHETIC_SCENES)

    def __len__(self) -> int:
        return self.num_samples

    def scenario_of(self, index: int) -> str:
        return self.scenes[index % len(self.scenes)]

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"index {index} out of range for {self.num_samples} synthetic samples")
        res = self.resolution
        rng = np.random.default_rng([self.seed, index])
        scene = self.scenario_of(index)
        scene_phrase, top, bottom = SYNTHETIC_SCENES[scene]
        action = list(_ACTIONS)[int(rng.integers(len(_ACTIONS)))]
        n_persons = min(int(rng.choice([1, 2, 3], p=[0.5, 0.3, 0.2])), self.max_persons)
        color_names = [str(c) for c in rng.choice(list(_BODY_COLORS), size=n_persons, replace=False)]

        image = Image.new("RGB", (res, res), tuple(int(c) for c in np.clip(np.array(top) + rng.integers(-15, 16, 3),
                                                                            0, 255)))
        draw = ImageDraw.Draw(image)
        if bottom is not None:
            horizon = rng.uniform(0.45, 0.65) * res
            draw.rectangle([0, horizon, res, res], fill=bottom)

        size_range = {1: (0.55, 0.95), 2: (0.45, 0.8), 3: (0.35, 0.7)}[max(1, min(n_persons, 3))]
        persons = []
        for i in range(n_persons):
            height = rng.uniform(*size_range) * res
            canon = _canonical_pose(rng, action)
            feet_y = rng.uniform(0.78, 1.05) * res  # sometimes below the frame, so ankles go missing
            center_x = ((i + 0.5) / n_persons + rng.uniform(-0.1, 0.1) / n_persons) * res
            kps = canon * height
            kps += np.array([center_x, feet_y - kps[[15, 16], 1].max()])
            persons.append((feet_y, kps, height, _BODY_COLORS[color_names[i]],
                            _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]))
        # Farther people (feet higher in the frame) are drawn first so nearer ones occlude them.
        order = sorted(range(n_persons), key=lambda i: persons[i][0])
        all_kps = np.zeros((n_persons, 17, 3))
        for slot, i in enumerate(order):
            _, kps, height, body, skin = persons[i]
            _draw_person(draw, kps, height, body, skin)
            scores = rng.uniform(0.3, 1.0, 17)
            scores[rng.random(17) < _MISSING_PROB] = 0.0
            all_kps[slot, :, :2] = kps
            all_kps[slot, :, 2] = scores

        keypoints, num_persons = pack_persons(all_kps, self.max_persons, res, res, self.score_threshold)
        hint = render_skeleton(keypoints, res, res, self.skeleton_width, self.score_threshold)

        ordered_colors = [color_names[i] for i in order]
        colors = ordered_colors[0] if n_persons == 1 else ", ".join(ordered_colors[:-1]) + " and " + ordered_colors[-1]
        prompt = f"{_COUNT_WORDS[n_persons]} in {colors} {_ACTIONS[action]} {scene_phrase}"
        # A separate stream, so the dropout rate never changes the picture drawn for an index.
        if self.prompt_dropout > 0 and np.random.default_rng([self.seed, index, 1]).random() < self.prompt_dropout:
            prompt = ""
        return {
            "image": pose_image_to_tensor(np.asarray(image, dtype=np.uint8)),
            "hint": pose_image_to_tensor(hint),
            "keypoints": torch.from_numpy(keypoints),
            "num_persons": num_persons,
            "prompt": prompt,
            "id": f"synthetic_{self.seed}_{index:06d}",
            "scenario": scene,
            "pose_path": "",
        }
