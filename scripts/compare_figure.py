"""A picture of several evaluated runs side by side: per test sample the conditioning pose, then each run's image
with that pose drawn over it, then the real image.

    python scripts/compare_figure.py outputs/demo outputs/demo_base --out outputs/demo/comparison.png [--rows 6]

The runs must come from the same test split (eval_pose.py writes `manifest.jsonl` with the sample ids); a
sample missing from one run is left out.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from grpose.cli import run
from grpose.data.skeleton import overlay_pose, render_skeleton
from grpose.errors import EvalInputError
from grpose.eval.run_layout import RunLayout, read_manifest

PANEL = 160
CAPTION = 30


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders written by eval_pose.py (outputs/<run>)")
    parser.add_argument("--out", required=True, help="PNG to write")
    parser.add_argument("--rows", type=int, default=6, help="test samples shown")
    parser.add_argument("--labels", nargs="+", help="column titles (default: the run folders' names)")
    parser.add_argument("--skeleton-width", type=int, default=3, help="width of the drawn pose, in image pixels")
    return parser.parse_args(argv)


def _tile(array: np.ndarray) -> Image.Image:
    return Image.fromarray(np.ascontiguousarray(array)).resize((PANEL, PANEL), Image.NEAREST)


def main(argv: Optional[Sequence[str]] = None) -> Path:
    args = parse_args(argv)
    layouts = [RunLayout(Path(r)) for r in args.runs]
    labels = args.labels or [layout.run_dir.name for layout in layouts]
    if len(labels) != len(layouts):
        raise EvalInputError(f"--labels names {len(labels)} columns for {len(layouts)} runs")
    manifests = [{r["id"]: r for r in read_manifest(layout.manifest)} for layout in layouts]
    ids = [i for i in manifests[0] if all(i in m for m in manifests[1:])][: args.rows]
    if not ids:
        raise EvalInputError(f"the runs {', '.join(args.runs)} share no test sample")
    titles = ["condition", *labels, "real"]
    figure = Image.new("RGB", (len(titles) * PANEL, CAPTION + len(ids) * (PANEL + CAPTION)), "white")
    draw = ImageDraw.Draw(figure)
    for col, title in enumerate(titles):
        draw.text((col * PANEL + 4, 8), title, fill="black")
    for row, sample_id in enumerate(ids):
        top = CAPTION + row * (PANEL + CAPTION)
        first = manifests[0][sample_id]
        real = np.asarray(Image.open(layouts[0].resolve(first["real_image"])).convert("RGB"))
        height, width = real.shape[:2]
        pose = render_skeleton(np.asarray(first["keypoints"], dtype=np.float64).reshape(-1, 17, 3), height, width,
                               args.skeleton_width)
        panels = [pose]
        for layout, manifest in zip(layouts, manifests):
            image = np.asarray(Image.open(layout.resolve(manifest[sample_id]["image"])).convert("RGB"))
            panels.append(overlay_pose(image, pose))
        panels.append(real)
        for col, panel in enumerate(panels):
            figure.paste(_tile(panel), (col * PANEL, top))
        caption = textwrap.shorten(first["prompt"] or "(empty prompt)", width=len(titles) * PANEL // 6)
        draw.text((4, top + PANEL + 6), caption, fill="black")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.save(out)
    print(f"wrote {out} ({len(ids)} samples x {len(layouts)} runs)")
    return out


if __name__ == "__main__":
    sys.exit(run(main))
