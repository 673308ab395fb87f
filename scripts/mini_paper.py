"""The paper's ablation tables in the miniature world: train and evaluate every row with several seeds, on a CPU.

    python scripts/mini_paper.py                      # Table 2 (components), seeds 0 1 2
    python scripts/mini_paper.py --table 4            # Table 4 (#Graph 0-3)
    python scripts/mini_paper.py --table 1            # Table 1 (every method of the harness)
    python scripts/mini_paper.py --table 1 --rows t2i_adapter uni_controlnet   # only those presets' runs
    python scripts/mini_paper.py --seeds 0 1 --out table.md

Every row is a preset in configs/mini/ (the demo's world: the pretrained tiny base, the trained evaluator) run
through train.py and eval_pose.py exactly as a user would run them. A row's seed sets both the training seed and
the sampling seed. Runs already finished are reused (delete experiments/mini_paper/ to start over), so an
interrupted table resumes where it stopped. The table gives the mean over seeds and a 95% t-interval
(mean ± t(0.975, n-1) · s / sqrt(n)).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from grpose.cli import run
from grpose.errors import ConfigError, EvalInputError

REPO = Path(__file__).resolve().parents[1]
TABLES: dict[str, list[tuple[str, str]]] = {
    # (row label, preset); rows of different tables with the same preset share their runs
    "1": [("SD (base alone)", "configs/mini/base.yaml"),
          ("T2I-Adapter", "configs/mini/t2i_adapter.yaml"),
          ("ControlNet", "configs/mini/controlnet.yaml"),
          ("Uni-ControlNet", "configs/mini/uni_controlnet.yaml"),
          ("HumanSD", "configs/mini/humansd.yaml"),
          ("Stable-Pose", "configs/mini/stable_pose.yaml"),
          ("GRPose", "configs/mini/grpose_poseloss.yaml")],
    "2": [("SD (base alone)", "configs/mini/base.yaml"),
          ("ControlNet", "configs/mini/controlnet.yaml"),
          ("ControlNet + L_p", "configs/mini/controlnet_poseloss.yaml"),
          ("+ PGI", "configs/mini/grpose.yaml"),
          ("+ PGI + L_p (GRPose)", "configs/mini/grpose_poseloss.yaml")],
    # #Graph = 3 (all three graphs) is the demo's adapter itself: the + PGI row's runs
    "4": [*((f"#Graph = {n}", f"configs/mini/graphs_{n}.yaml") for n in range(3)),
          ("#Graph = 3", "configs/mini/grpose.yaml")],
}
COLUMNS = (("AP", "AP", True), ("SAP", "SAP", True), ("PCE", "PCE", False), ("FID", "FID", False),
           ("KID", "KID", False))
# t(0.975, df) for df = 1..10; beyond that the normal quantile is close enough
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", choices=sorted(TABLES), default="2", help="which paper table")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="one training + sampling seed per run")
    parser.add_argument("--rows", nargs="+", metavar="PRESET",
                        help="only the rows of these presets (file stems of configs/mini/), e.g. to split a table "
                             "over two processes")
    parser.add_argument("--out", help="also write the markdown table here")
    parser.add_argument("--workdir", default="experiments/mini_paper", help="training runs")
    parser.add_argument("--outputs", default="outputs/mini_paper", help="evaluation runs")
    parser.add_argument("overrides", nargs="*", help="key=value overrides for every run, e.g. trainer.max_steps=300")
    args = parser.parse_args(argv)
    if len(args.seeds) < 2:
        parser.error("--seeds needs at least 2 seeds for an interval")
    return args


def t975(n: int) -> float:
    return _T975[n - 2] if n - 1 <= len(_T975) else 1.96


def interval(values: list[float]) -> tuple[float, float]:
    """(mean, half-width of the 95% t-interval) over seeds."""
    mean = statistics.fmean(values)
    return mean, t975(len(values)) * statistics.stdev(values) / math.sqrt(len(values))


def _call(cmd: list[str]) -> float:
    start = time.perf_counter()
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=REPO)
    if result.returncode != 0:
        raise EvalInputError(f"`{' '.join(cmd)}` failed with status {result.returncode}; fix it and run again "
                             f"(finished runs are kept)")
    return time.perf_counter() - start


def run_one(preset: str, seed: int, args: argparse.Namespace) -> dict:
    """Train (unless the preset is the base alone) and evaluate one row for one seed; returns the Table-1 row."""
    stem = Path(preset).stem
    name = f"{stem}_s{seed}"
    metrics = REPO / args.outputs / name / "metrics.json"
    if metrics.is_file():
        return json.loads(metrics.read_text(encoding="utf-8"))["table1"]
    common = [f"trainer.seed={seed}", f"sampling.seed={seed}", *args.overrides]
    base_alone = stem == "base"
    ckpt: list[str] = []
    if not base_alone:
        run_dir = REPO / args.workdir / name
        done = (run_dir / "adapter" / "config.json").is_file()
        if not done:
            resume = ["--resume", "last"] if (run_dir / "checkpoints" / "last.ckpt").is_file() else []
            _call([sys.executable, "train.py", "--config", preset, f"name={name}", f"output_dir={args.workdir}",
                   "trainer.sample_every_n_steps=0", *common, *resume])
        ckpt = ["--ckpt", str(run_dir / "adapter")]
    _call([sys.executable, "eval_pose.py", "--config", preset, *ckpt, f"eval.output_dir={args.outputs}",
           f"eval.run_name={name}", *common])
    return json.loads(metrics.read_text(encoding="utf-8"))["table1"]


def render(table: str, rows: dict[str, list[dict]], seeds: list[int]) -> str:
    lines = [f"Paper Table {table} in the miniature world: mean ± 95% t-interval over seeds {seeds}",
             "",
             "| method | " + " | ".join(f"{label} {'↑' if up else '↓'}" for label, _, up in COLUMNS) + " |",
             "|---|" + "---|" * len(COLUMNS)]
    for label, runs in rows.items():
        cells = []
        for _, key, _ in COLUMNS:
            values = [r[key] for r in runs if r.get(key) is not None]
            if len(values) < 2:
                cells.append("n/a" if not values else f"{values[0]:.2f}")
                continue
            mean, half = interval(values)
            cells.append(f"{mean:.2f} ± {half:.2f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> dict:
    args = parse_args(argv)
    table = TABLES[args.table]
    missing = [p for _, p in table if not (REPO / p).is_file()]
    if missing:
        raise ConfigError(f"preset(s) {', '.join(missing)} missing; the mini presets ship in configs/mini/")
    if args.rows:
        unknown = sorted(set(args.rows) - {Path(p).stem for _, p in table})
        if unknown:
            raise ConfigError(f"--rows {' '.join(unknown)}: not a preset of Table {args.table} "
                              f"({', '.join(Path(p).stem for _, p in table)})")
        table = [(label, p) for label, p in table if Path(p).stem in args.rows]
    start = time.perf_counter()
    rows = {label: [run_one(preset, seed, args) for seed in args.seeds] for label, preset in table}
    markdown = render(args.table, rows, args.seeds)
    minutes = (time.perf_counter() - start) / 60
    print(markdown)
    print(f"wall time {minutes:.1f} min")
    if args.out:
        Path(args.out).write_text(markdown, encoding="utf-8")
    return rows


if __name__ == "__main__":
    sys.exit(run(main))
