"""Pose conditions for inference from keypoint arrays, HumanSD `.npz` files, COCO keypoint JSON or rendered skeletons.

Keypoints are mapped onto the square output canvas the way the datasets map them (short side to the resolution,
centre crop) and drawn with the one skeleton renderer of `grpose.data.skeleton`.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np
import torch
from PIL import Image

from grpose.data.humanart import BadSampleError, load_pose_npz, resize_and_crop
from grpose.data.skeleton import pack_persons, pose_image_to_tensor, render_skeleton, tensor_to_uint8
from .errors import MissingFileError, PoseInputError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
ACCEPTED_FORMATS = (
    "a keypoint array [17, 3] or [P, 17, 3] (x, y, score in pixels; numpy, torch or nested lists)",
    "a HumanSD pose file .npz (arr_0: a list of person dicts with 'keypoints')",
    "a .npy file holding a [P, 17, 3] keypoint array",
    "a COCO keypoint .json: an annotations file with 'images' and 'annotations' (flat 51-number 'keypoints'), "
    "a list of persons (dicts with 'keypoints', or bare keypoint lists), or one person dict",
    f"a rendered skeleton image ({', '.join(IMAGE_SUFFIXES)}), used as is",
)

# The reference renders limbs 10 px wide on a 512 px canvas.
REFERENCE_SKELETON_WIDTH = 10
REFERENCE_RESOLUTION = 512
# A rendered skeleton is mostly black background; anything brighter than this is probably a photo.
_MAX_SKELETON_COVERAGE = 0.5

PoseLike = Union["PoseCondition", str, os.PathLike, np.ndarray, torch.Tensor, Image.Image, Sequence]


def _formats_hint() -> str:
    return "accepted pose inputs: " + "; ".join(ACCEPTED_FORMATS)


@dataclass(frozen=True)
class PoseCondition:
    """A pose ready for the pipeline.

    `image` is the 3 x R x R condition in [-1, 1]. `keypoints` is [P, 17, 3] in output pixels with missing
    keypoints as (-1, -1, 0), or None when the pose came as a rendered skeleton image. `source` names the input.
    """

    image: torch.Tensor
    keypoints: Optional[np.ndarray]
    source: str

    @property
    def resolution(self) -> int:
        return int(self.image.shape[-1])

    def to_uint8(self) -> np.ndarray:
        """The rendered pose as uint8 R x R x 3 (for saving or overlays)."""
        return tensor_to_uint8(self.image)


def skeleton_width_for(resolution: int) -> int:
    """Limb width at `resolution` with the reference's proportion (10 px at 512), never thinner than 2 px.

    Pass the training config's `data.skeleton_width` instead when the adapter was trained with another width.
    """
    return max(2, round(REFERENCE_SKELETON_WIDTH * resolution / REFERENCE_RESOLUTION))


# ----------------------------------------------------------------------------------------------------------------
# Reading keypoint files
# ----------------------------------------------------------------------------------------------------------------


def _person_keypoints(value: Any, where: str) -> np.ndarray:
    try:
        kp = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PoseInputError(f"{where}: keypoints are not numeric ({err}); {_formats_hint()}") from err
    if kp.size != 51:
        raise PoseInputError(f"{where}: keypoints must hold 17 x (x, y, score) = 51 numbers, got shape {kp.shape}; "
                             f"{_formats_hint()}")
    return kp.reshape(17, 3)


def _stack(persons: list[np.ndarray]) -> np.ndarray:
    return np.stack(persons) if persons else np.zeros((0, 17, 3))


def _same_image(image_id: Any, wanted: Union[int, str]) -> bool:
    return str(image_id) == str(wanted)


def _coco_annotations_file(data: dict, path: Path, image_id: Optional[Union[int, str]]):
    """Persons and image size of one image of a COCO annotations file (`images` + `annotations`)."""
    annotations = data.get("annotations")
    if not isinstance(annotations, list):
        raise PoseInputError(f"{path}: 'annotations' must be a list of COCO annotation dicts")
    images = [img for img in data.get("images", []) if isinstance(img, dict) and "id" in img]
    with_keypoints = [a for a in annotations if isinstance(a, dict) and "keypoints" in a]
    if image_id is None:
        ids = list(dict.fromkeys(a.get("image_id") for a in with_keypoints))
        if len(ids) != 1:
            names = [f"{img['id']} ({img.get('file_name', '?')})" for img in images[:5]] or [str(i) for i in ids[:5]]
            raise PoseInputError(
                f"{path} holds keypoints of {len(ids)} images; choose one with image_id (an image id or file name), "
                f"e.g. {', '.join(names)}"
            )
        chosen = ids[0]
    else:
        match = [img for img in images if _same_image(img["id"], image_id)
                 or img.get("file_name") == str(image_id) or Path(str(img.get("file_name", ""))).name == str(image_id)]
        if match:
            chosen = match[0]["id"]
        elif any(_same_image(a.get("image_id"), image_id) for a in with_keypoints):
            chosen = image_id
        else:
            raise PoseInputError(f"{path} has no image with id or file name {image_id!r}")
    persons = [_person_keypoints(a["keypoints"], f"{path}: annotation {a.get('id', i)}")
               for i, a in enumerate(with_keypoints) if _same_image(a.get("image_id"), chosen)]
    image = next((img for img in images if _same_image(img["id"], chosen)), None)
    size = None
    if image is not None and "width" in image and "height" in image:
        size = (int(image["width"]), int(image["height"]))
    return _stack(persons), size


def read_keypoint_json(path: Union[str, os.PathLike], image_id: Optional[Union[int, str]] = None):
    """Persons [P, 17, 3] from a COCO-style keypoint JSON, and the annotated image's (width, height) when known.

    COCO's visibility flag (0 unlabelled, 1 occluded, 2 visible) takes the score's place, so unlabelled keypoints
    (v = 0) count as missing and labelled ones as present.
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise PoseInputError(f"cannot read pose file {path} as JSON: {err}; {_formats_hint()}") from err
    if isinstance(data, dict) and "annotations" in data:
        return _coco_annotations_file(data, path, image_id)
    if isinstance(data, dict) and "keypoints" in data:
        return _person_keypoints(data["keypoints"], str(path))[None], None
    if isinstance(data, list):
        persons = []
        for i, person in enumerate(data):
            if isinstance(person, dict):
                if "keypoints" not in person:
                    raise PoseInputError(f"{path}: person {i} is a dict without 'keypoints'; {_formats_hint()}")
                # A COCO results file lists persons of many images; keep the chosen one's.
                if image_id is not None and "image_id" in person and not _same_image(person["image_id"], image_id):
                    continue
                persons.append(_person_keypoints(person["keypoints"], f"{path}: person {i}"))
            else:
                persons.append(_person_keypoints(person, f"{path}: person {i}"))
        return _stack(persons), None
    raise PoseInputError(f"{path} is JSON but not a keypoint file (found a {type(data).__name__} without "
                         f"'annotations' or 'keypoints'); {_formats_hint()}")


def read_keypoints(path: Union[str, os.PathLike], image_id: Optional[Union[int, str]] = None):
    """Persons [P, 17, 3] (source pixels) from a .npz, .npy or .json pose file, and the image size if it is known."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_keypoint_json(path, image_id)
    if suffix == ".npz":
        try:
            return load_pose_npz(path), None
        except BadSampleError as err:
            raise PoseInputError(f"{err}; {_formats_hint()}") from err
    if suffix == ".npy":
        try:
            array = np.load(path, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise PoseInputError(f"cannot read pose file {path} as a numeric .npy array: {err}; {_formats_hint()}") \
                from err
        return _keypoint_array(array, str(path)), None
    raise PoseInputError(f"{path} is not a keypoint file (.json, .npz or .npy); {_formats_hint()}")


def _keypoint_array(array: Any, where: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    try:
        kps = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise PoseInputError(f"{where}: not a numeric keypoint array ({err}); {_formats_hint()}") from err
    if kps.size == 0:
        return np.zeros((0, 17, 3))
    if kps.ndim == 2:
        kps = kps[None]
    if kps.ndim != 3 or kps.shape[1:] != (17, 3):
        raise PoseInputError(f"{where}: keypoints must have shape [17, 3] or [P, 17, 3], got {kps.shape}; "
                             f"{_formats_hint()}")
    return kps


# ----------------------------------------------------------------------------------------------------------------
# Mapping onto the output canvas
# ----------------------------------------------------------------------------------------------------------------


def _check_size(image_size: Sequence[int], where: str) -> tuple[int, int]:
    if len(image_size) != 2 or min(int(s) for s in image_size) < 1:
        raise PoseInputError(f"{where}: image_size must be (width, height) in pixels, got {image_size!r}")
    return int(image_size[0]), int(image_size[1])


def center_crop_keypoints(keypoints: np.ndarray, image_size: Sequence[int], resolution: int) -> np.ndarray:
    """Keypoints of a (width, height) image -> pixels of the `resolution` square the evaluation datasets cut out.

    Runs the datasets' own `resize_and_crop` (on a blank image of that size) so inference poses land exactly where
    training and evaluation poses do.
    """
    width, height = _check_size(image_size, "center_crop_keypoints")
    _, mapped = resize_and_crop(Image.new("L", (width, height)), keypoints, resolution, random_crop=False)
    return mapped


def _crop_box(image_size: Sequence[int], resolution: int) -> tuple[int, int, int, int]:
    """(resized width, resized height, left, top) of the datasets' centre crop, read off the keypoint transform.

    Two probe points, the image's corners (0, 0) and (width, height), come back as (-left, -top) and
    (new_width - left, new_height - top).
    """
    width, height = image_size
    probe = np.zeros((1, 17, 3))
    probe[0, 1, :2] = (width, height)
    mapped = center_crop_keypoints(probe, image_size, resolution)[0]
    left, top = -mapped[0, 0], -mapped[0, 1]
    return int(round(mapped[1, 0] + left)), int(round(mapped[1, 1] + top)), int(round(left)), int(round(top))


def keypoints_to_pose(
    keypoints: Any,
    resolution: int = 512,
    image_size: Optional[Sequence[int]] = None,
    skeleton_width: Optional[int] = None,
    score_threshold: float = 0.02,
    max_persons: int = 10,
    source: str = "keypoint array",
) -> PoseCondition:
    """Map persons [P, 17, 3] given in pixels of a (width, height) image onto the output canvas and render them.

    `image_size` None means the keypoints are already in pixels of the `resolution` x `resolution` output. As in
    the datasets, keypoints with score <= `score_threshold` or outside the canvas are dropped and at most
    `max_persons` persons are kept.
    """
    kps = _keypoint_array(keypoints, source)
    if image_size is not None:
        kps = center_crop_keypoints(kps, _check_size(image_size, source), resolution)
    packed, num_persons = pack_persons(kps, max_persons, resolution, resolution, score_threshold)
    scored = int((kps[..., 2] > score_threshold).sum())
    kept = int((packed[..., 2] > score_threshold).sum())
    if kept < scored:
        frame = f"a {image_size[0]}x{image_size[1]} image" if image_size is not None else \
            f"the {resolution}x{resolution} output (no image_size given)"
        log.warning("%s: %d of %d keypoints fall outside the %dx%d canvas (or beyond %d persons) and are not drawn; "
                    "the keypoints were taken to be in pixels of %s", source, scored - kept, scored, resolution,
                    resolution, max_persons, frame)
    if num_persons == 0:
        log.warning("%s: no keypoint is present on the canvas; the pose condition is an empty black image", source)
    width = int(skeleton_width) if skeleton_width is not None else skeleton_width_for(resolution)
    image = render_skeleton(packed, resolution, resolution, width, score_threshold)
    return PoseCondition(image=pose_image_to_tensor(image), keypoints=packed[:num_persons], source=source)


def skeleton_image_to_pose(image: Image.Image, resolution: int = 512, source: str = "skeleton image") -> PoseCondition:
    """Use a rendered skeleton as is: nearest-neighbour resize (and centre crop when not square) to the canvas.

    Nearest keeps the palette colours exact; the crop is the datasets' short-side resize + centre crop.
    """
    rgb = image.convert("RGB")
    new_w, new_h, left, top = _crop_box(rgb.size, resolution)
    if (new_w, new_h) != rgb.size:
        rgb = rgb.resize((new_w, new_h), Image.Resampling.NEAREST)
    array = np.asarray(rgb.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
    coverage = float((array.max(axis=-1) > 0).mean())
    if coverage > _MAX_SKELETON_COVERAGE:
        log.warning("%s: %.0f%% of its pixels are not black; a pose condition is a skeleton drawn on black (pass the "
                    "keypoints instead of a photo)", source, 100 * coverage)
    return PoseCondition(image=pose_image_to_tensor(array), keypoints=None, source=source)


def load_pose(
    pose: PoseLike,
    resolution: int = 512,
    image_size: Optional[Sequence[int]] = None,
    image_id: Optional[Union[int, str]] = None,
    skeleton_width: Optional[int] = None,
    score_threshold: float = 0.02,
    max_persons: int = 10,
) -> PoseCondition:
    """Any accepted pose input -> PoseCondition at `resolution` (see ACCEPTED_FORMATS).

    Keypoint inputs are in pixels of an image of `image_size` = (width, height); for a COCO annotations file the
    image's own size is used when `image_size` is None, otherwise None means pixels of the output canvas.
    `image_id` selects the image of a COCO file holding several (an id or a file name). Rendered skeleton images
    ignore `image_size`, `image_id`, `skeleton_width` and `score_threshold`: they are used as drawn.
    """
    if resolution < 1:
        raise ValueError(f"resolution must be positive, got {resolution}")
    if isinstance(pose, PoseCondition):
        if pose.resolution != resolution or tuple(pose.image.shape) != (3, resolution, resolution):
            raise PoseInputError(f"{pose.source}: a pose of shape {tuple(pose.image.shape)} was passed where the "
                                 f"output is {resolution}x{resolution}; load it again with resolution={resolution}")
        return pose
    render = dict(resolution=resolution, skeleton_width=skeleton_width, score_threshold=score_threshold,
                  max_persons=max_persons)
    if isinstance(pose, Image.Image):
        return skeleton_image_to_pose(pose, resolution)
    if isinstance(pose, (str, os.PathLike)):
        path = Path(pose)
        if not path.is_file():
            raise MissingFileError(f"pose file {path} does not exist; {_formats_hint()}")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            try:
                with Image.open(path) as img:
                    img.load()
                    return skeleton_image_to_pose(img, resolution, source=str(path))
            except (OSError, ValueError, Image.DecompressionBombError) as err:
                raise PoseInputError(f"cannot read skeleton image {path}: {err}; {_formats_hint()}") from err
        if suffix not in (".json", ".npz", ".npy"):
            raise PoseInputError(f"unknown pose file format {path} (suffix {suffix or 'none'!r}); {_formats_hint()}")
        keypoints, file_size = read_keypoints(path, image_id)
        return keypoints_to_pose(keypoints, image_size=image_size if image_size is not None else file_size,
                                 source=str(path), **render)
    if isinstance(pose, (np.ndarray, torch.Tensor, list, tuple)):
        return keypoints_to_pose(pose, image_size=image_size, **render)
    raise PoseInputError(f"cannot use a {type(pose).__name__} as a pose; {_formats_hint()}")
