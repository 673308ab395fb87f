"""The files of one evaluation run, `outputs/<run>/`: where images, real crops, the manifest and the reports live,
and how they are written (atomically, so an interrupted run never leaves a half-written file behind).

Generation writes these files and scoring reads them; neither imports the other.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..errors import MissingFileError

_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def image_filename(sample_id: str) -> str:
    """`<id>.png`; an id with characters unsafe in a file name gets them replaced plus a short hash of the id,
    so two ids never share a file."""
    sample_id = str(sample_id)
    if _SAFE_NAME.fullmatch(sample_id):
        return f"{sample_id}.png"
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", sample_id).lstrip(".") or "id"
    return f"{cleaned}-{hashlib.sha1(sample_id.encode()).hexdigest()[:8]}.png"


@dataclass(frozen=True)
class RunLayout:
    """Where a run's files live: `<output_dir>/<run>/{images,real}/<scenario>/<id>.png`, `manifest.jsonl`, ..."""

    run_dir: Path

    @property
    def images_dir(self) -> Path:
        return self.run_dir / "images"

    @property
    def real_dir(self) -> Path:
        return self.run_dir / "real"

    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.jsonl"

    @property
    def generation_settings(self) -> Path:
        return self.run_dir / "generation.json"

    @property
    def parts_dir(self) -> Path:
        return self.run_dir / ".manifest_parts"

    @property
    def metrics_json(self) -> Path:
        return self.run_dir / "metrics.json"

    @property
    def metrics_md(self) -> Path:
        return self.run_dir / "metrics.md"

    def image_path(self, scenario: str, sample_id: str, root: Optional[Path] = None) -> Path:
        return (root if root is not None else self.images_dir) / scenario / image_filename(sample_id)

    def real_path(self, scenario: str, sample_id: str) -> Path:
        return self.real_dir / scenario / image_filename(sample_id)

    def relative(self, path: Path) -> str:
        """A path stored in the manifest: relative to the run folder when inside it, else absolute."""
        try:
            return str(Path(path).resolve().relative_to(self.run_dir.resolve()))
        except ValueError:
            return str(Path(path).resolve())

    def resolve(self, stored: str) -> Path:
        path = Path(stored)
        return path if path.is_absolute() else self.run_dir / path


def save_png(image: np.ndarray, path: Path) -> None:
    """Write atomically: a crash mid-write never leaves a truncated PNG that a resumed run would take as done."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    Image.fromarray(np.ascontiguousarray(image)).save(tmp, format="PNG")
    os.replace(tmp, path)


def write_text_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def read_manifest(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise MissingFileError(f"manifest {path} does not exist; generate the images first (eval_pose.py without "
                                f"--score-only) or score a folder with --score-only --images DIR")
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
