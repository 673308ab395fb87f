"""Reproducible random train/test split of a LAION-Human mapping (the paper uses 200k train / 20k test).

Usage: python scripts/make_laion_split.py MAPPING OUT_DIR --train 200000 --test 20000 --seed 0 [--root ROOT]
Writes OUT_DIR/train.json and OUT_DIR/test.json in the same HumanSD mapping format; with --root, only entries
whose image and pose file exist under ROOT are drawn (many LAION URLs no longer resolve).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Optional


import numpy as np

from grpose.cli import run
from grpose.data.humanart import MappingEntry, load_mapping
from grpose.errors import ConfigError, MissingFileError


def split_mapping(
    entries: list[MappingEntry], n_train: int, n_test: int, seed: int
) -> tuple[list[MappingEntry], list[MappingEntry]]:
    """Disjoint random subsets; depends only on the set of ids and the seed, not on the file's entry order."""
    if n_train < 0 or n_test < 0:
        raise ConfigError(f"--train and --test must be >= 0, got {n_train} and {n_test}")
    if n_train + n_test > len(entries):
        raise ConfigError(f"the mapping has {len(entries)} usable entries, fewer than --train {n_train} + --test "
                         f"{n_test} = {n_train + n_test}; ask for fewer")
    ordered = sorted(entries, key=lambda e: e.id)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    train = sorted((ordered[i] for i in perm[:n_train]), key=lambda e: e.id)
    test = sorted((ordered[i] for i in perm[n_train:n_train + n_test]), key=lambda e: e.id)
    return train, test


def write_mapping(entries: list[MappingEntry], path: Path) -> None:
    payload = {e.id: {"img_path": e.img_path, "prompt": e.prompt, "pose_path": e.pose_path} for e in entries}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(payload, f, ensure_ascii=False)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("mapping", help="the full LAION-Human mapping JSON (e.g. mapping_file_training.json)")
    parser.add_argument("out_dir", help="folder for train.json and test.json (usually the dataset root)")
    parser.add_argument("--train", type=int, default=200_000, help="training entries")
    parser.add_argument("--test", type=int, default=20_000, help="test entries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--root", default=None, help="dataset folder: draw only entries whose files exist there")
    args = parser.parse_args(argv)

    entries = load_mapping(args.mapping)
    total = len(entries)
    if args.root is not None:
        root = Path(args.root)
        if not root.is_dir():
            raise MissingFileError(f"--root {root} is not a folder")
        entries = [e for e in entries if (root / e.img_path).is_file() and (root / e.pose_path).is_file()]
        print(f"{len(entries)} of {total} entries have both files under {root}")
    train, test = split_mapping(entries, args.train, args.test, args.seed)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_mapping(train, out / "train.json")
    write_mapping(test, out / "test.json")
    print(f"wrote {len(train)} entries to {out / 'train.json'} and {len(test)} to {out / 'test.json'} "
          f"(seed {args.seed})")
    return 0


if __name__ == "__main__":
    sys.exit(run(main))
