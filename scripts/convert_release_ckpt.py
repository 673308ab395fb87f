"""Convert the authors' released GRPose checkpoint (LDM layout, `control_model.*`) into our GraphPoseAdapter:
`python scripts/convert_release_ckpt.py RELEASE_CKPT OUT_DIR [--config CONFIG] [key=value ...] [--force]`.

The frozen parts it also carries (SD1.5 UNet, VAE, CLIP, the mmpose network) are dropped; every adapter tensor must
find its place and every adapter tensor of ours must be filled, or nothing is written. OUT_DIR is a diffusers folder
for `grpose.weights.load_adapter`. The default config is the release's architecture (SD1.5, 4 PGIs, 3 graphs, K=9).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from grpose.cli import run
from grpose.config import load_config
from grpose.weights import convert_release_checkpoint, format_dropped, format_key_groups
from grpose.weights.loader import refuse_overwrite


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="the released .ckpt (e.g. epoch=000035.ckpt)")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--config", default=None, help="YAML with the model settings (default: the release's)")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export in OUT_DIR")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load a checkpoint that pickles non-tensor objects (runs code from the file)")
    parser.add_argument("--verbose", action="store_true", help="list every mapped key as 'ours <- theirs'")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out_dir = Path(args.out_dir)
    refuse_overwrite(out_dir, args.force)
    adapter, report = convert_release_checkpoint(args.checkpoint, cfg.model, trust_pickle=args.trust_pickle)

    print(f"mapped: {len(report['mapped'])} tensors ({len(report['folded'])} conv biases before BatchNorm folded "
          f"into its running mean)")
    if args.verbose:
        print("\n".join(f"    {ours} <- {theirs}" for ours, theirs in report["mapped"].items()))
    else:
        print("\n".join(format_key_groups(list(report["mapped"]))))
    print(f"dropped (frozen parts): {len(report['dropped'])} tensors")
    print("\n".join(format_dropped(report["dropped"])))
    print(f"unmapped: {len(report['unmapped'])}")
    adapter.save_pretrained(str(out_dir), safe_serialization=True)
    print(f"wrote {type(adapter).__name__} to {out_dir}; load it with grpose.weights.load_adapter('{out_dir}')")
    return report


if __name__ == "__main__":
    sys.exit(run(main))
