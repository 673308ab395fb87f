"""A run's visual alignment report: a static HTML page (`outputs/<run>/alignment/index.html`, images referenced
relatively) with, per generated image, the conditioning skeleton and the detected skeleton over it and its
per-image OKS, worst first, a bar chart of AP per scenario and a per-keypoint table of missed keypoints and pixel
errors. Also the run's stored detections (`detections.json`), which the report is drawn from.
"""

from __future__ import annotations

import html
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from grpose.errors import MissingFileError
from grpose.data.skeleton import overlay_pose, render_skeleton
from grpose.eval.pose_metrics import COCO17_KEYPOINT_NAMES, COCO17_SIGMAS

DETECTIONS_VERSION = 1


# ------------------------------------------------------------------------------------------------ detections
def write_detections(path: Path, records: Sequence[dict[str, Any]], detections: Sequence[Sequence[Any]],
                     evaluator: str) -> None:
    """Per image (manifest id) its detected persons `{"keypoints": [17 x 3], "score"}` and the evaluator name."""
    if len(records) != len(detections):
        raise ValueError(f"write_detections: {len(records)} records but {len(detections)} detection lists")
    payload = {
        "version": DETECTIONS_VERSION,
        "pose_evaluator": evaluator,
        "images": {r["id"]: [{"keypoints": np.asarray(k, dtype=np.float64).round(3).tolist(), "score": float(s)}
                             for k, s in dets] for r, dets in zip(records, detections)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_detections(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist; score the run's pose metrics first (eval_pose.py with "
                                f"'pose' in --metrics), which stores the detections there")
    data = json.loads(path.read_text(encoding="utf-8"))
    data["images"] = {k: [(np.asarray(d["keypoints"], dtype=np.float64).reshape(17, 3), float(d["score"]))
                          for d in v] for k, v in data["images"].items()}
    return data


# -------------------------------------------------------------------------------------------- per-image OKS
def oks(gt: np.ndarray, dt: np.ndarray, sigmas: np.ndarray = COCO17_SIGMAS) -> float:
    """COCO OKS of one detection against one GT person: mean over the GT's present keypoints of
    exp(-d^2 / (2 * area * (2 sigma)^2)), area = the box of the present keypoints (the `standard` protocol's GT
    area). NaN when the GT has no present keypoint."""
    present = gt[:, 2] > 0
    if not present.any():
        return math.nan
    extent = gt[present, :2]
    area = float(np.prod(extent.max(0) - extent.min(0)))
    d2 = ((gt[present, :2] - dt[present, :2]) ** 2).sum(1)
    e = d2 / ((2 * sigmas[present]) ** 2) / (area + np.spacing(1)) / 2
    return float(np.exp(-e).mean())


def best_match(person: np.ndarray, detections: Sequence[Any]) -> tuple[float, Optional[np.ndarray]]:
    """The detection [17, 3] with the highest OKS against one conditioning person, and that OKS; (0.0, None) when
    the image has no detection. The one matching rule of the per-image OKS and the per-keypoint table."""
    scored = [(oks(person, np.asarray(k, dtype=np.float64)), np.asarray(k, dtype=np.float64)) for k, _ in detections]
    return max(scored, key=lambda pair: pair[0], default=(0.0, None))


def image_oks(gt_persons: np.ndarray, detections: Sequence[Any]) -> Optional[float]:
    """Per-image alignment: for each conditioning person, the best OKS over the image's detections (0 when there
    is none), averaged over the persons. None for an image without a conditioning person."""
    persons = [p for p in np.asarray(gt_persons, dtype=np.float64).reshape(-1, 17, 3) if (p[:, 2] > 0).any()]
    if not persons:
        return None
    return float(np.mean([best_match(p, detections)[0] for p in persons]))


def keypoint_errors(gt_images: Sequence[np.ndarray], detections: Sequence[Sequence[Any]]) -> list[dict[str, Any]]:
    """Where the keypoints miss, per COCO keypoint, over every conditioning person of every image.

    Each person is matched with its best-OKS detection in its image (`best_match`). For each keypoint the
    person has: `missed` is the fraction of those keypoints the match lacks (no detection in the image, or the
    keypoint at confidence 0), `median_px` / `p90_px` the median and 90th percentile of the distance in pixels
    where the match has it (None when it never does). Returns one dict per keypoint, in COCO order, with `name`
    and `present` (how many conditioning persons have that keypoint)."""
    distances: list[list[float]] = [[] for _ in COCO17_KEYPOINT_NAMES]
    present = np.zeros(len(COCO17_KEYPOINT_NAMES), dtype=int)
    missed = np.zeros(len(COCO17_KEYPOINT_NAMES), dtype=int)
    for gt_persons, dets in zip(gt_images, detections):
        for person in np.asarray(gt_persons, dtype=np.float64).reshape(-1, 17, 3):
            has = person[:, 2] > 0
            if not has.any():
                continue
            _, match = best_match(person, dets)
            for j in np.flatnonzero(has):
                present[j] += 1
                if match is None or match[j, 2] <= 0:
                    missed[j] += 1
                else:
                    distances[j].append(float(np.hypot(*(match[j, :2] - person[j, :2]))))
    rows = []
    for j, name in enumerate(COCO17_KEYPOINT_NAMES):
        d = np.asarray(distances[j])
        rows.append({"name": name, "present": int(present[j]),
                     "missed": float(missed[j] / present[j]) if present[j] else None,
                     "median_px": float(np.median(d)) if d.size else None,
                     "p90_px": float(np.percentile(d, 90)) if d.size else None})
    return rows


def _keypoint_table(rows: Sequence[dict[str, Any]]) -> str:
    def number(value: Optional[float], fmt: str) -> str:
        return "n/a" if value is None else format(value, fmt)

    lines = ["<table><tr><th>keypoint</th><th>conditioning persons with it</th><th>missed</th>"
             "<th>median error (px)</th><th>90th percentile (px)</th></tr>"]
    for row in rows:
        lines.append(f"<tr><td>{row['name']}</td><td class=\"num\">{row['present']}</td>"
                     f"<td class=\"num\">{number(None if row['missed'] is None else 100 * row['missed'], '.0f')} %</td>"
                     f"<td class=\"num\">{number(row['median_px'], '.1f')}</td>"
                     f"<td class=\"num\">{number(row['p90_px'], '.1f')}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------- drawing
def overlay_panels(image: np.ndarray, gt_persons: np.ndarray, detections: Sequence[Any],
                   display_size: int = 320) -> np.ndarray:
    """[generated image + conditioning skeleton | generated image + detected skeleton], one uint8 strip, drawn
    with the project's skeleton renderer. The image is first resized so its short side is `display_size`
    (nearest neighbour when enlarging a tiny image, bilinear when shrinking) and the skeletons are drawn at that
    size (line width 10 px per 512 px, at least 3), over the image dimmed to 60% so the limbs stand out."""
    from PIL import Image

    h, w = image.shape[:2]
    factor = display_size / min(h, w)
    if factor != 1:
        size = (max(1, round(w * factor)), max(1, round(h * factor)))
        image = np.asarray(Image.fromarray(image).resize(size, Image.NEAREST if factor > 1 else Image.BILINEAR))
    h, w = image.shape[:2]
    base = (image.astype(np.float32) * 0.6).astype(np.uint8)
    width = max(3, round(10 * min(h, w) / 512))

    def scaled(persons: np.ndarray) -> np.ndarray:
        out = np.array(persons, dtype=np.float64).reshape(-1, 17, 3)
        present = out[..., 2] > 0
        out[..., :2] = np.where(present[..., None], out[..., :2] * factor, -1.0)
        return out

    cond = render_skeleton(scaled(gt_persons), height=h, width=w, line_width=width)
    found = np.stack([np.asarray(k) for k, _ in detections]) if len(detections) else np.zeros((0, 17, 3))
    det = render_skeleton(scaled(found), height=h, width=w, line_width=width, score_threshold=0.0)
    gap = np.full((h, max(2, w // 32), 3), 255, dtype=np.uint8)
    return np.concatenate([overlay_pose(base, cond, alpha=1.0), gap, overlay_pose(base, det, alpha=1.0)], axis=1)


def _bar_chart(names: Sequence[str], values: Sequence[Optional[float]], halves: Sequence[Optional[float]],
               folder: Path) -> str:
    """HTML for a per-scenario AP bar chart: a matplotlib PNG when matplotlib is installed, else inline SVG."""
    shown = [0.0 if v is None else v for v in values]
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return _svg_bars(names, shown, halves)
    fig, ax = plt.subplots(figsize=(max(4.0, 0.55 * len(names) + 1.5), 3.2), dpi=100)
    errors = [0.0 if h is None else h for h in halves]
    bars = ax.bar(range(len(names)), shown, yerr=errors, capsize=3, color="#4c72b0")
    ax.bar_label(bars, labels=["n/a" if v is None else f"{v:.1f}" for v in values], fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("AP (x100)")
    ax.set_ylim(0, max(100.0, max(shown, default=0) * 1.1))
    ax.set_title("AP per scenario (error bar: 95% interval half-width)", fontsize=9)
    fig.tight_layout()
    fig.savefig(folder / "ap_by_scenario.png")
    plt.close(fig)
    return '<img class="chart" src="ap_by_scenario.png" alt="AP per scenario">'


def _svg_bars(names: Sequence[str], values: Sequence[float], halves: Sequence[Optional[float]]) -> str:
    bar, gap, height, top = 28, 10, 160, 100.0  # AP x100 on a 0..100 axis
    width = len(names) * (bar + gap) + 40
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 90}" '
             f'role="img" aria-label="AP per scenario">']
    parts.append(f'<line x1="30" y1="{height}" x2="{width}" y2="{height}" stroke="#333"/>')
    for tick in (0, 25, 50, 75, 100):  # AP axis, x100
        y = height - height * tick / top
        parts.append(f'<line x1="30" y1="{y:.1f}" x2="{width}" y2="{y:.1f}" stroke="#ddd"/>'
                     f'<text x="26" y="{y + 3:.1f}" font-size="9" text-anchor="end">{tick}</text>')
    for i, (name, value, half) in enumerate(zip(names, values, halves)):
        x = 35 + i * (bar + gap)
        h = height * min(value, top) / top
        parts.append(f'<rect x="{x}" y="{height - h:.1f}" width="{bar}" height="{h:.1f}" fill="#4c72b0"/>')
        if half:
            lo, hi = height * max(value - half, 0) / top, height * min(value + half, top) / top
            parts.append(f'<line x1="{x + bar / 2}" y1="{height - hi:.1f}" x2="{x + bar / 2}" '
                         f'y2="{height - lo:.1f}" stroke="#000"/>')
        parts.append(f'<text x="{x + bar / 2}" y="{height - h - 4:.1f}" font-size="9" '
                     f'text-anchor="middle">{value:.1f}</text>')
        parts.append(f'<text x="{x + bar / 2}" y="{height + 12}" font-size="9" text-anchor="end" '
                     f'transform="rotate(-45 {x + bar / 2} {height + 12})">{html.escape(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)


# -------------------------------------------------------------------------------------------------- report
_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #222; }
table { border-collapse: collapse; }
td, th { border-bottom: 1px solid #ddd; padding: 4px 8px; text-align: left; vertical-align: middle; }
th { background: #f4f4f4; white-space: nowrap; }
td.num { white-space: nowrap; }
img.pair { width: 640px; }
img.chart { max-width: 100%; }
.bad { color: #b00; font-weight: bold; }
.note { color: #555; font-size: 0.9em; max-width: 60em; }
"""


def write_alignment_report(run_dir: Path, report: dict[str, Any], records: Sequence[dict[str, Any]],
                           max_images: Optional[int] = None) -> Path:
    """Write `<run_dir>/alignment/index.html` (+ one overlay PNG per shown image and the chart); returns its path.

    Rows are sorted by per-image OKS, worst first (images without a conditioning person last); `max_images`
    keeps the worst N."""
    from PIL import Image

    run_dir = Path(run_dir)
    folder = run_dir / "alignment"
    (folder / "images").mkdir(parents=True, exist_ok=True)
    for old in [*(folder / "images").glob("*.jpg"), *(folder / "images").glob("*.png")]:
        old.unlink()  # rows of an earlier scoring of this run
    stored = read_detections(run_dir / "detections.json")
    rows = []
    for record in records:
        gt = np.asarray(record["keypoints"], dtype=np.float64).reshape(-1, 17, 3)
        dets = stored["images"].get(record["id"], [])
        rows.append((image_oks(gt, dets), record, gt, dets))
    rows.sort(key=lambda row: (row[0] is None, row[0] if row[0] is not None else 0.0, row[1]["index"]))
    shown = rows if max_images is None else rows[:max_images]

    body_rows = []
    for rank, (value, record, gt, dets) in enumerate(shown, 1):
        path = Path(record["image"])
        image_path = path if path.is_absolute() else run_dir / path
        with Image.open(image_path) as im:
            image = np.asarray(im.convert("RGB"))
        # JPEG keeps 300 rows of a 512 px run at a few tens of MB; the skeleton colours survive quality 90
        name = f"{rank:04d}_{Path(record['image']).stem}.jpg"
        Image.fromarray(overlay_panels(image, gt, dets)).save(folder / "images" / name, quality=90)
        score = "n/a" if value is None else f"{value:.3f}"
        cls = ' class="bad"' if value is not None and value < 0.5 else ""
        body_rows.append(
            f"<tr><td>{rank}</td><td>{html.escape(str(record['id']))}</td><td>{html.escape(record['scenario'])}</td>"
            f"<td{cls}>{score}</td><td class=\"num\">{len(gt)} / {len(dets)}</td>"
            f'<td><img class="pair" src="images/{name}" alt="{html.escape(str(record["id"]))}"></td>'
            f"<td>{html.escape(record.get('prompt', ''))}</td></tr>")

    pose = report.get("pose") or {}
    scen = pose.get("scenarios") or {}
    scen_iv = ((report.get("intervals") or {}).get("scenarios")) or {}
    names = sorted(scen)
    values = [None if scen[n].get("AP") is None else 100.0 * scen[n]["AP"] for n in names]
    halves = [((scen_iv.get(n) or {}).get("AP") or {}).get("half_width") for n in names]
    chart = _bar_chart(names, values, halves, folder) if names else "<p>No scenario has enough images.</p>"
    keypoints = _keypoint_table(keypoint_errors([r[2] for r in rows], [r[3] for r in rows]))
    mean_oks = [r[0] for r in rows if r[0] is not None]
    table1 = report.get("table1") or {}
    ap = table1.get("AP")
    head = (f"Protocol <code>{html.escape(str(report.get('protocol')))}</code> · pose evaluator "
            f"<code>{html.escape(str(stored.get('pose_evaluator')))}</code> · {len(records)} images · AP "
            f"{'n/a' if ap is None else f'{ap:.2f}'} · mean per-image OKS "
            f"{np.mean(mean_oks) if mean_oks else float('nan'):.3f}")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Alignment: {html.escape(str(report.get('run')))}</title>
<style>{_CSS}</style></head><body>
<h1>Pose alignment of <code>{html.escape(str(report.get('run')))}</code></h1>
<p>{head}</p>
<h2>AP per scenario</h2>
{chart}
<h2>Per keypoint</h2>
<p class="note">Every conditioning person is matched with its best-OKS detection. Missed: the share of the
conditioning keypoints that match lacks (no detection, or that keypoint not found); errors: distance in pixels of
the generated image where the match has the keypoint, over all images of the run.</p>
{keypoints}
<h2>Images, worst aligned first</h2>
<p class="note">Left: the generated image (dimmed) with its conditioning skeleton. Right: the same image with the
skeletons the pose evaluator detected. OKS: for each conditioning person the best COCO OKS over the detections
(0 if none), averaged over the persons; GT / det: number of conditioning and detected persons.
{'' if max_images is None or len(rows) <= max_images else f'The worst {max_images} of {len(rows)} images are shown.'}
</p>
<table><tr><th>#</th><th>id</th><th>scenario</th><th>OKS</th><th>GT / det</th><th>condition | detected</th>
<th>prompt</th></tr>
{chr(10).join(body_rows)}
</table></body></html>
"""
    index = folder / "index.html"
    index.write_text(page, encoding="utf-8")
    return index
