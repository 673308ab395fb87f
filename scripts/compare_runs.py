"""Put several evaluated runs side by side in one table shaped like GRPose paper Table 1.

    python scripts/compare_runs.py outputs/grpose outputs/controlnet [--out compare.md] [--allow-mixed]

Best values are bold and second best underlined (PCE, FID and KID: lower is better); ± is each run's 95%
interval. Runs scored under different protocols or pose evaluators are refused unless --allow-mixed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from grpose.cli import run
from grpose.eval.compare import compare_runs


def main(argv: Optional[Sequence[str]] = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (outputs/<run>) or their metrics.json files")
    parser.add_argument("--out", help="also write the table to this markdown file")
    parser.add_argument("--allow-mixed", action="store_true",
                        help="tabulate runs scored under different protocols / pose evaluators (with a note)")
    parser.add_argument("--no-seed-groups", action="store_true",
                        help="one row per run, even for runs that differ only in their generation seed")
    args = parser.parse_args(argv)
    text = compare_runs(args.runs, allow_mixed=args.allow_mixed, group_seeds=not args.no_seed_groups)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
    print(text)
    return text


if __name__ == "__main__":
    sys.exit(run(main))
