"""Comparison tables across runs: several runs' `metrics.json` side by side in the shape of GRPose paper Table 1,
with intervals, best / second best marked per column, and which differences to the best row are outside both
intervals. Runs scored under different protocols or pose evaluators are refused unless explicitly allowed.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from grpose.errors import GRPoseError
from grpose.eval.intervals import format_value, seed_spread

COLUMNS = ("AP", "SAP", "PCE", "FID", "KID", "CLIP-Score")
#: direction of each column: +1 higher is better, -1 lower is better
HIGHER_IS_BETTER = {"AP": True, "SAP": True, "PCE": False, "FID": False, "KID": False, "CLIP-Score": True}
DEFAULT_POSE_EVALUATOR = "higherhrnet_bottomup"  # runs scored before the evaluator was recorded


class CompareError(GRPoseError, ValueError):
    """Runs that cannot be put in one table as asked (a one-line reason)."""


@dataclass
class Row:
    label: str
    runs: list[str]
    values: dict[str, Optional[float]]
    intervals: dict[str, Optional[dict[str, float]]]
    protocol: str
    pose_evaluator: Optional[str]
    kid_scale: float
    seeds: list[int] = field(default_factory=list)


# ------------------------------------------------------------------------------------------------- loading
def load_report(path: str | os.PathLike) -> dict[str, Any]:
    """A run's metrics.json, given the run folder or the file itself."""
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    if not file.is_file():
        raise CompareError(f"{path}: no metrics.json (score the run with eval_pose.py first)")
    report = json.loads(file.read_text(encoding="utf-8"))
    report.setdefault("run", path.name if path.is_dir() else path.parent.name)
    return report


def pose_evaluator_of(report: dict[str, Any]) -> Optional[str]:
    """The evaluator that scored the run's pose metrics; None when it has none."""
    if "pose" not in report or report.get("pose") is None:
        return None
    return report.get("pose_evaluator") or DEFAULT_POSE_EVALUATOR


def _seed_key(report: dict[str, Any]) -> Optional[str]:
    """Runs with equal keys differ only in their generation seed (grouped into one row)."""
    generation = report.get("generation")
    if not generation or "base_seed" not in generation:
        return None
    rest = {k: v for k, v in generation.items() if k != "base_seed"}
    return json.dumps([rest, report.get("protocol"), pose_evaluator_of(report), report.get("num_images")],
                      sort_keys=True)


def _group_label(names: Sequence[str]) -> str:
    if len(names) == 1:
        return names[0]
    prefix = os.path.commonprefix(list(names))
    prefix = re.sub(r"(_|-)?(s|seed)?\d*$", "", prefix).rstrip("_-")
    return prefix or names[0]


def rows_from_reports(reports: Sequence[dict[str, Any]], group_seeds: bool = True) -> list[Row]:
    """One row per run, or per group of runs that differ only in the generation seed (`group_seeds`): such a
    row shows the mean over seeds with the Student-t interval of that mean (seed spread)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    order: list[str] = []
    for i, report in enumerate(reports):
        key = _seed_key(report) if group_seeds else None
        key = key if key is not None else f"#{i}"
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(report)
    rows = []
    for key in order:
        members = groups[key]
        first = members[0]
        seeds = [m["generation"]["base_seed"] for m in members] if len(members) > 1 else []
        if len(members) > 1 and len(set(seeds)) < len(seeds):
            raise CompareError(f"runs {', '.join(m['run'] for m in members)} have the same settings and seed; "
                               f"give each run once")
        values: dict[str, Optional[float]] = {}
        intervals: dict[str, Optional[dict[str, float]]] = {}
        for column in COLUMNS:
            present = [m["table1"][column] for m in members if column in m.get("table1", {})]
            if not present:
                continue
            if len(members) == 1:
                values[column] = present[0]
                intervals[column] = ((first.get("intervals") or {}).get("table1") or {}).get(column)
            else:
                spread = seed_spread(present)
                values[column] = spread["mean"] if spread else None
                intervals[column] = spread
        rows.append(Row(label=_group_label([m["run"] for m in members]), runs=[m["run"] for m in members],
                        values=values, intervals=intervals, protocol=str(first.get("protocol")),
                        pose_evaluator=pose_evaluator_of(first), kid_scale=float(first.get("kid_scale", 100.0)),
                        seeds=seeds))
    return rows


def check_comparable(rows: Sequence[Row], allow_mixed: bool = False) -> list[str]:
    """Raise CompareError when rows were scored under different protocols, pose evaluators or KID scales;
    with `allow_mixed`, return the differences as notes instead."""
    notes = []
    for what, get in (("protocols", lambda r: r.protocol), ("pose evaluators", lambda r: r.pose_evaluator),
                      ("KID scales", lambda r: r.kid_scale)):
        seen = {}
        for row in rows:
            value = get(row)
            if value is not None:
                seen.setdefault(value, []).append(row.label)
        if len(seen) > 1:
            listing = "; ".join(f"{v}: {', '.join(labels)}" for v, labels in seen.items())
            if not allow_mixed:
                raise CompareError(f"runs scored under different {what} ({listing}) are not comparable; "
                                   f"pass --allow-mixed to tabulate them anyway")
            notes.append(f"Mixed {what}: {listing}. These numbers are not comparable across those groups.")
    return notes


# --------------------------------------------------------------------------------------------------- table
def _ranking(rows: Sequence[Row], column: str) -> list[int]:
    """Row positions with a defined value in `column`, best first."""
    defined = [i for i, r in enumerate(rows) if r.values.get(column) is not None
               and math.isfinite(r.values[column])]
    sign = -1.0 if HIGHER_IS_BETTER[column] else 1.0
    return sorted(defined, key=lambda i: sign * rows[i].values[column])


def _places(rows: Sequence[Row], column: str) -> dict[int, int]:
    """Row position -> 1 (best) or 2 (second best) by the value as printed (2 decimals), so equal printed
    values share a place."""
    shown = sorted({round(rows[i].values[column], 2) for i in _ranking(rows, column)},
                   reverse=HIGHER_IS_BETTER[column])
    places = {}
    for i in _ranking(rows, column):
        place = shown.index(round(rows[i].values[column], 2)) + 1
        if place <= 2:
            places[i] = place
    return places


def _separated(a: Optional[dict[str, float]], b: Optional[dict[str, float]]) -> Optional[bool]:
    """True when the two intervals do not overlap; None when either is missing."""
    if not a or not b:
        return None
    return a["high"] < b["low"] or b["high"] < a["low"]


def render_comparison(rows: Sequence[Row], notes: Sequence[str] = ()) -> str:
    """Markdown: the Table 1 shaped table (best **bold**, second <u>underlined</u>, direction-aware), the
    columns' meaning, and per column which rows differ from the best outside both intervals."""
    columns = [c for c in COLUMNS if any(c in r.values for r in rows)]
    ranks = {c: _ranking(rows, c) for c in columns}
    places = {c: _places(rows, c) for c in columns}
    lines = ["| Method | " + " | ".join(f"{c} {'↑' if HIGHER_IS_BETTER[c] else '↓'}" for c in columns) + " |",
             "|:--" + "|--:" * len(columns) + "|"]
    for i, row in enumerate(rows):
        cells = []
        for c in columns:
            if c not in row.values:
                cells.append("–")
                continue
            text = format_value(row.values[c], row.intervals.get(c))
            if places[c].get(i) == 1:
                text = f"**{text}**"
            elif places[c].get(i) == 2:
                text = f"<u>{text}</u>"
            cells.append(text)
        label = row.label + (f" ({len(row.runs)} seeds)" if len(row.runs) > 1 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    first = rows[0]
    lines += ["", f"Protocol `{first.protocol}`"
              + (f" · pose evaluator `{first.pose_evaluator}`" if first.pose_evaluator else "")
              + f" · AP and SAP ×100 · KID ×{first.kid_scale:g} · ↑ higher is better, ↓ lower is better. "
              "**Bold**: best, <u>underlined</u>: second best. ± is the half-width of the 95% interval: the "
              "percentile bootstrap over images of that run, or, for a row of several seeds, the Student-t "
              "interval of the mean over seeds.", ""]
    lines += [f"{note}" for note in notes] + ([""] if notes else [])
    lines.append("Differences to the best row:")
    lines.append("")
    for c in columns:
        order = ranks[c]
        if len(order) < 2:
            continue
        best = rows[order[0]]
        outside, inside, unknown, tied = [], [], [], []
        for i in order[1:]:
            if places[c].get(i) == 1:
                tied.append(rows[i].label)
                continue
            sep = _separated(best.intervals.get(c), rows[i].intervals.get(c))
            diff = f"{rows[i].label} ({rows[i].values[c] - best.values[c]:+.2f})"
            (unknown if sep is None else outside if sep else inside).append(diff)
        parts = ["tied: " + ", ".join(tied)] if tied else []
        if outside:
            parts.append("outside each other's intervals: " + ", ".join(outside))
        if inside:
            parts.append("within overlapping intervals (not distinguishable at this confidence): " + ", ".join(inside))
        if unknown:
            parts.append("no interval to compare: " + ", ".join(unknown))
        lines.append(f"- {c}, best {best.label}: " + "; ".join(parts) + ".")
    lines.append("")
    return "\n".join(lines)


def compare_runs(paths: Sequence[str | os.PathLike], allow_mixed: bool = False, group_seeds: bool = True) -> str:
    """The comparison markdown for run folders (or metrics.json files)."""
    if not paths:
        raise CompareError("give at least one run folder")
    rows = rows_from_reports([load_report(p) for p in paths], group_seeds=group_seeds)
    notes = check_comparable(rows, allow_mixed=allow_mixed)
    return render_comparison(rows, notes)


def refuse_mixed_scoring(metrics_json: Path, pose_evaluator: str, metrics: Sequence[str]) -> None:
    """Scoring a run's pose metrics with one evaluator when its metrics.json holds another's would silently
    replace numbers that others may already compare against: refuse, saying what to delete."""
    if "pose" not in metrics or not Path(metrics_json).is_file():
        return
    previous = pose_evaluator_of(json.loads(Path(metrics_json).read_text(encoding="utf-8")))
    if previous is not None and previous != pose_evaluator:
        from grpose.errors import ConfigError

        raise ConfigError(f"{metrics_json} holds pose metrics scored by the {previous} evaluator; scoring them "
                          f"with {pose_evaluator} would mix two evaluators in one run. Delete {metrics_json} (and "
                          f"detections.json next to it) to re-score the run, or score a copy of the run folder.")


# ---------------------------------------------------------------------------------------------------- CLI
