"""Human-Art in the HumanSD layout: mapping JSON + images + per-image pose `.npz`, resized, cropped and rendered.

Every dataset of the project returns the same sample dict (the batch contract used by training and evaluation):
`image` and `hint` (float32 3xHxW in [-1, 1]), `keypoints` (float32 [max_persons, 17, 3], missing = (-1, -1, 0)),
`num_persons` (int), `prompt`, `id`, `scenario` and `pose_path` (str: the pose file, `root` joined).
"""

from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from pathlib import Path
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from grpose.data.skeleton import pack_persons, pose_image_to_tensor, render_skeleton
from ..errors import ConfigError, DataError, MissingFileError
from ..safe_pickle import UnsafePickleError, read_npz

log = logging.getLogger(__name__)

# The 19 Human-Art validation scenarios of the evaluation protocol, 250 images each.
HUMANART_VAL_SCENARIOS: tuple[str, ...] = (
    "acrobatics", "cosplay", "dance", "drama", "movie",
    "cartoon", "digital_art", "ink_painting", "kids_drawing", "mural", "oil_painting", "shadow_play", "sketch",
    "stained_glass", "ukiyoe", "watercolor",
    "garage_kits", "relief", "sculpture",
)

HUMANART_HINT = (
    "Human-Art in the HumanSD layout (images/, pose/ and mapping_file_training.json / mapping_file_validation.json) "
    "is distributed by its authors on request: https://idea-research.github.io/HumanArt/ . See docs/data.md."
)

_NPZ_ERRORS = (OSError, ValueError, EOFError, KeyError, TypeError, AttributeError, ImportError,
               zipfile.BadZipFile, pickle.UnpicklingError)
_IMAGE_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


class BadSampleError(DataError):
    """A sample whose image or pose file cannot be read; the message names the file."""


class MappingEntry(NamedTuple):
    id: str
    img_path: str
    prompt: str
    pose_path: str


def resolve_mapping_path(root: str | os.PathLike, mapping_file: str | os.PathLike) -> Path:
    """An absolute path as is; a relative one under `root` first, then relative to the working directory."""
    mapping = Path(mapping_file)
    candidates = [mapping] if mapping.is_absolute() else [Path(root) / mapping, mapping]
    for candidate in candidates:
        if candidate.exists():
            return candidate
    tried = " or ".join(str(c) for c in dict.fromkeys(candidates))
    raise MissingFileError(f"mapping file {mapping_file} not found (looked for {tried})")


def load_mapping(path: str | os.PathLike) -> list[MappingEntry]:
    """Read a HumanSD mapping JSON `{id: {img_path, prompt, pose_path}}`, or a folder of them (merged by id)."""
    path = Path(path)
    files = sorted(path.glob("*.json")) if path.is_dir() else [path]
    if not files:
        raise MissingFileError(f"mapping folder {path} contains no *.json mapping files")
    merged: dict[str, MappingEntry] = {}
    for file in files:
        try:
            with open(file, encoding="utf-8") as f:
                raw = json.load(f)
        except json.JSONDecodeError as err:
            raise DataError(f"mapping file {file} is not valid JSON: {err}") from None
        if not isinstance(raw, dict):
            raise DataError(f"mapping file {file} must hold a JSON object {{id: {{img_path, prompt, pose_path}}}}, "
                             f"got {type(raw).__name__}")
        for key, item in raw.items():
            fields = {}
            for name in MappingEntry._fields[1:]:
                value = item.get(name) if isinstance(item, dict) else None
                if not isinstance(value, str):
                    raise DataError(f"mapping file {file}: entry {key!r} needs string fields img_path, prompt and "
                                     f"pose_path; {name!r} is {value!r}")
                fields[name] = value
            entry = MappingEntry(id=str(key), **fields)
            if merged.get(entry.id, entry) != entry:
                raise DataError(f"mapping file {file}: id {key!r} also appears in another file with different paths")
            merged[entry.id] = entry
    return list(merged.values())


def humanart_scenario(img_path: str) -> str:
    """Human-Art's scenario is the image's parent folder, e.g. images/2D_virtual_human/cartoon/x.jpg -> cartoon."""
    return Path(img_path).parent.name


def load_pose_npz(path: str | os.PathLike) -> np.ndarray:
    """Persons of a HumanSD pose file as float64 [P, 17, 3] (x, y, score in the source image's pixels).

    The file's `arr_0` is a pickled list of per-person dicts with a 17x3 `keypoints` entry (mmpose output); a plain
    numeric [P, 17, 3] array is accepted as well. Raises `BadSampleError` naming the file when it is malformed, and
    `UnsafePickleError` (never skipped) when its pickle asks for anything but numpy arrays and plain containers.
    """
    try:
        # The HumanSD format is a pickled object array: unpickled without running code (UnsafePickleError is
        # never a skippable bad sample, a crafted file means the data source is not what it claims).
        arrays = read_npz(path, what="pose file")
        if "arr_0" not in arrays:
            raise BadSampleError(f"pose file {path} has no 'arr_0' array (found {list(arrays)})")
        persons = arrays["arr_0"]
    except (BadSampleError, UnsafePickleError):
        raise
    except _NPZ_ERRORS as err:
        raise BadSampleError(f"cannot read pose file {path}: {type(err).__name__}: {err}") from err
    if persons.dtype != object:
        arr = np.asarray(persons, dtype=np.float64)
        if arr.size == 0:
            return np.zeros((0, 17, 3))
        if arr.shape[-2:] != (17, 3) or arr.ndim not in (2, 3):
            raise BadSampleError(f"pose file {path}: numeric arr_0 must be [P, 17, 3], got shape {arr.shape}")
        return arr.reshape(-1, 17, 3)
    keypoints = []
    for i, person in enumerate(persons.reshape(-1)):
        if not isinstance(person, dict) or "keypoints" not in person:
            raise BadSampleError(f"pose file {path}: person {i} is not a dict with 'keypoints' "
                                 f"(got {type(person).__name__})")
        try:
            kp = np.asarray(person["keypoints"], dtype=np.float64)
        except (TypeError, ValueError) as err:
            raise BadSampleError(f"pose file {path}: person {i} keypoints are not numeric: {err}") from err
        if kp.size != 51:
            raise BadSampleError(f"pose file {path}: person {i} keypoints must be 17x3, got shape {kp.shape}")
        keypoints.append(kp.reshape(17, 3))
    return np.stack(keypoints) if keypoints else np.zeros((0, 17, 3))


def save_pose_npz(path: str | os.PathLike, keypoints: np.ndarray) -> None:
    """Write persons [P, 17, 3] as a HumanSD pose file (list of dicts with `keypoints` and a mean `score`)."""
    kps = np.asarray(keypoints, dtype=np.float32).reshape(-1, 17, 3)
    persons = np.empty(len(kps), dtype=object)
    for i, kp in enumerate(kps):
        persons[i] = {"keypoints": kp, "score": float(kp[:, 2].mean())}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, persons)


def load_rgb_image(path: str | os.PathLike) -> Image.Image:
    """Decode an image to RGB (EXIF orientation is ignored, as in the reference, so poses stay aligned)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except _IMAGE_ERRORS as err:
        raise BadSampleError(f"cannot read image {path}: {type(err).__name__}: {err}") from err


def resize_and_crop(
    image: Image.Image, keypoints: np.ndarray, resolution: int, random_crop: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Short side to `resolution` (area averaging when shrinking), then a `resolution` square crop.

    Keypoints follow in continuous pixel coordinates (x' = x * scale - offset, like the reference's albumentations
    pipeline). The crop offset is random (torch's RNG, so data-loader workers are seeded by PyTorch) or centred.
    Returns the uint8 crop and the transformed [P, 17, 3] keypoints (scores untouched, nothing removed yet).
    """
    w, h = image.size
    short = min(w, h)
    new_w = max(resolution, int(round(w * resolution / short)))
    new_h = max(resolution, int(round(h * resolution / short)))
    if (new_w, new_h) != (w, h):
        shrinking = new_w < w
        image = image.resize((new_w, new_h), Image.Resampling.BOX if shrinking else Image.Resampling.BICUBIC)
    if random_crop:
        left = int(torch.randint(0, new_w - resolution + 1, ()).item())
        top = int(torch.randint(0, new_h - resolution + 1, ()).item())
    else:
        left, top = (new_w - resolution) // 2, (new_h - resolution) // 2
    crop = np.asarray(image.crop((left, top, left + resolution, top + resolution)), dtype=np.uint8)
    kps = np.array(keypoints, dtype=np.float64, copy=True).reshape(-1, 17, 3)
    kps[..., 0] = kps[..., 0] * (new_w / w) - left
    kps[..., 1] = kps[..., 1] * (new_h / h) - top
    return crop, kps


class HumanSDPoseDataset(Dataset):
    """Human-Art (or any dataset in the HumanSD mapping layout) as samples of the batch contract."""

    dataset_name = "Human-Art"
    download_hint = HUMANART_HINT

    def __init__(
        self,
        root: str | os.PathLike,
        mapping_file: str | os.PathLike,
        resolution: int = 512,
        train: bool = True,
        prompt_dropout: float = 0.5,
        max_persons: int = 10,
        score_threshold: float = 0.02,
        skeleton_width: int = 10,
        scenarios: Optional[Sequence[str]] = None,
        skip_bad_samples: bool = False,
    ):
        if not 0.0 <= prompt_dropout <= 1.0:
            raise ValueError(f"prompt_dropout must be in [0, 1], got {prompt_dropout}")
        if resolution < 1 or max_persons < 1 or skeleton_width < 1:
            raise ValueError("resolution, max_persons and skeleton_width must be positive")
        self.root = Path(root)
        if not self.root.is_dir():
            raise MissingFileError(f"{self.dataset_name} folder {self.root} does not exist (data.root). "
                                    f"{self.download_hint}")
        try:
            self.mapping_path = resolve_mapping_path(self.root, mapping_file)
        except FileNotFoundError as err:
            raise MissingFileError(f"{err}. {self.download_hint}") from None
        self.resolution = int(resolution)
        self.train = bool(train)
        self.prompt_dropout = float(prompt_dropout) if train else 0.0
        self.max_persons = int(max_persons)
        self.score_threshold = float(score_threshold)
        self.skeleton_width = int(skeleton_width)
        self.skip_bad_samples = bool(skip_bad_samples)
        self.bad_samples = 0  # in this process; the collate function reports skips made inside workers

        entries = load_mapping(self.mapping_path)
        self.entries = entries
        self.scenarios = [self.scenario_of(e.img_path) for e in entries]
        if scenarios is not None:
            self._filter_scenarios(list(scenarios))
        if not self.entries:
            raise DataError(f"mapping {self.mapping_path} has no entries")

    def scenario_of(self, img_path: str) -> str:
        return humanart_scenario(img_path)

    def _filter_scenarios(self, wanted: list[str]) -> None:
        present = sorted(set(self.scenarios))
        unknown = [s for s in wanted if s not in present]
        if not wanted or unknown:
            raise ConfigError(f"unknown scenario(s) {unknown or wanted} for {self.mapping_path}; scenarios in this "
                             f"mapping: {', '.join(present)}")
        keep = [i for i, s in enumerate(self.scenarios) if s in set(wanted)]
        self.entries = [self.entries[i] for i in keep]
        self.scenarios = [self.scenarios[i] for i in keep]

    def scenario_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.scenarios:
            counts[s] = counts.get(s, 0) + 1
        return dict(sorted(counts.items()))

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> Optional[dict]:
        if not self.skip_bad_samples:
            return self.load_sample(index)
        try:
            return self.load_sample(index)
        except BadSampleError as err:
            # Skipped, counted and reported (collate + BadSampleReporter); never replaced by a neighbour.
            self.bad_samples += 1
            log.warning("skipping bad sample %s: %s", self.entries[index].id, err)
            return None

    def load_sample(self, index: int) -> dict:
        entry = self.entries[index]
        image = load_rgb_image(self.root / entry.img_path)
        persons = load_pose_npz(self.root / entry.pose_path)
        res = self.resolution
        crop, kps = resize_and_crop(image, persons, res, random_crop=self.train)
        keypoints, num_persons = pack_persons(kps, self.max_persons, res, res, self.score_threshold)
        hint = render_skeleton(keypoints, res, res, self.skeleton_width, self.score_threshold)
        prompt = entry.prompt
        if self.prompt_dropout > 0 and torch.rand(()).item() < self.prompt_dropout:
            prompt = ""
        return {
            "image": pose_image_to_tensor(crop),
            "hint": pose_image_to_tensor(hint),
            "keypoints": torch.from_numpy(keypoints),
            "num_persons": num_persons,
            "prompt": prompt,
            "id": entry.id,
            "scenario": self.scenarios[index],
            "pose_path": str(self.root / entry.pose_path),
        }
