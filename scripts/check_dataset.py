"""Check a HumanSD-layout dataset folder against its mapping JSON before training or evaluation.

Usage: python scripts/check_dataset.py ROOT MAPPING [--max-samples N] [--workers 8]
Reports missing or unreadable images, missing or malformed pose files and per-folder person/keypoint statistics;
exits with status 1 when any sample is broken.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


import numpy as np

from grpose.cli import run
from grpose.errors import MissingFileError
from grpose.data.humanart import (
    BadSampleError,
    MappingEntry,
    humanart_scenario,
    load_mapping,
    load_pose_npz,
    load_rgb_image,
    resolve_mapping_path,
)
from grpose.safe_pickle import UnsafePickleError  # noqa: E402


@dataclass
class SampleReport:
    id: str
    group: str
    image_error: Optional[str] = None  # "missing" | "unreadable"
    pose_error: Optional[str] = None  # "missing" | "malformed"
    message: str = ""
    persons: int = 0  # persons with at least one present keypoint inside the image
    keypoints: int = 0  # present keypoints over those persons

    @property
    def broken(self) -> bool:
        return self.image_error is not None or self.pose_error is not None


def check_sample(root: Path, entry: MappingEntry, score_threshold: float) -> SampleReport:
    report = SampleReport(id=entry.id, group=humanart_scenario(entry.img_path))
    messages = []
    size = None
    image_path = root / entry.img_path
    if not image_path.is_file():
        report.image_error = "missing"
        messages.append(f"missing image {image_path}")
    else:
        try:
            size = load_rgb_image(image_path).size
        except BadSampleError as err:
            report.image_error = "unreadable"
            messages.append(str(err))
    pose_path = root / entry.pose_path
    if not pose_path.is_file():
        report.pose_error = "missing"
        messages.append(f"missing pose file {pose_path}")
    else:
        try:
            persons = load_pose_npz(pose_path)
        except (BadSampleError, UnsafePickleError) as err:  # a refused pickle is listed as a bad pose too
            report.pose_error = "malformed"
            messages.append(str(err))
        else:
            present = persons[..., 2] > score_threshold
            if size is not None:
                w, h = size
                present &= (persons[..., 0] >= 0) & (persons[..., 0] < w)
                present &= (persons[..., 1] >= 0) & (persons[..., 1] < h)
            per_person = present.sum(axis=-1)
            report.persons = int((per_person > 0).sum())
            report.keypoints = int(per_person.sum())
    report.message = "; ".join(messages)
    return report


def summarize(reports: list[SampleReport]) -> list[list[str]]:
    header = ["folder", "samples", "missing img", "bad img", "missing pose", "bad pose", "no person",
              "persons/img", "max persons", "kpts/person"]
    groups: dict[str, list[SampleReport]] = {}
    for r in reports:
        groups.setdefault(r.group, []).append(r)
    rows = [header]
    for name, items in sorted(groups.items()) + [("TOTAL", reports)]:
        ok = [r for r in items if r.pose_error is None]
        persons = np.array([r.persons for r in ok]) if ok else np.zeros(1)
        total_persons = int(persons.sum())
        rows.append([
            name,
            str(len(items)),
            str(sum(r.image_error == "missing" for r in items)),
            str(sum(r.image_error == "unreadable" for r in items)),
            str(sum(r.pose_error == "missing" for r in items)),
            str(sum(r.pose_error == "malformed" for r in items)),
            str(sum(r.persons == 0 for r in ok)),
            f"{persons.mean():.2f}",
            str(int(persons.max())),
            f"{sum(r.keypoints for r in ok) / total_persons:.1f}" if total_persons else "-",
        ])
    return rows


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for n, row in enumerate(rows):
        cells = [cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(cells))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("root", help="dataset folder that the mapping's img_path / pose_path are relative to")
    parser.add_argument("mapping", help="mapping JSON (absolute, relative to ROOT, or relative to here) or a folder "
                                        "of them")
    parser.add_argument("--max-samples", type=int, default=None, help="check only the first N entries")
    parser.add_argument("--workers", type=int, default=8, help="threads reading files")
    parser.add_argument("--score-threshold", type=float, default=0.02, help="a keypoint counts above this score")
    parser.add_argument("--show-errors", type=int, default=20, help="how many broken samples to list")
    args = parser.parse_args(argv)

    root = Path(args.root)
    if not root.is_dir():
        raise MissingFileError(f"dataset folder {root} does not exist")
    mapping_path = resolve_mapping_path(root, args.mapping)
    entries = load_mapping(mapping_path)
    if args.max_samples is not None:
        entries = entries[: max(0, args.max_samples)]
    print(f"checking {len(entries)} entries of {mapping_path} under {root}")

    with ThreadPoolExecutor(max_workers=max(1, args.workers)) as pool:
        reports = list(pool.map(lambda e: check_sample(root, e, args.score_threshold), entries))

    print(format_table(summarize(reports)))
    broken = [r for r in reports if r.broken]
    if broken:
        print(f"\n{len(broken)} broken samples:")
        for r in broken[: args.show_errors]:
            print(f"  {r.id}: {r.message}")
        if len(broken) > args.show_errors:
            print(f"  ... and {len(broken) - args.show_errors} more (--show-errors N lists more)")
        return 1
    print("\nall samples readable")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
