"""Initial adapter weights from SD1.5: `python prepare_weights.py SD15_PATH CONFIG OUT [--force] [key=value ...]`.

Copies every adapter tensor that mirrors the UNet, keeps the designed init elsewhere (zero convs stay zero), writes
the adapter's state dict as safetensors for `model.adapter_weights`, and prints which keys were copied or new.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional

from grpose.cli import run
from grpose.config import load_config
from grpose.sd15 import load_unet
from grpose.errors import OutputExistsError, WeightsError
from grpose.weights import format_key_report, init_adapter_from_unet, save_adapter_weights


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("sd15", help="SD1.5 weights: single file (.safetensors/.ckpt) or diffusers folder")
    parser.add_argument("config", help="YAML preset that defines the adapter, e.g. configs/grpose/humanart.yaml")
    parser.add_argument("out", help="output .safetensors file, e.g. models/init_grpose.safetensors")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value, e.g. model.pgi_levels=[0,1]")
    parser.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    parser.add_argument("--verbose", action="store_true", help="list every key, not one line per block")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, list[str]]:
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    out = Path(args.out)
    if out.exists() and not args.force:  # checked before the (slow) SD1.5 load
        raise OutputExistsError(f"{out} already exists; pass --force to overwrite it.")

    unet = load_unet(args.sd15, arch=cfg.model.base)
    adapter, report = init_adapter_from_unet(cfg.model, unet)
    print(f"{type(adapter).__name__} for '{cfg.name}' from {args.sd15}")
    print(format_key_report({
        "copied from the UNet": report["copied"],
        "newly initialised": report["new"],
        "shape mismatches (left at init)": report["mismatched"],
    }, verbose=args.verbose))
    if report["mismatched"]:
        # The adapter is built from this very UNet's config, so a mismatch means the two disagree on the layout.
        raise WeightsError(f"{len(report['mismatched'])} adapter tensors have the UNet's name but another shape "
                           f"(first: {report['mismatched'][0]}); nothing written to {out}.")
    save_adapter_weights(adapter, out, cfg.model, source=args.sd15, overwrite=args.force)
    print(f"wrote {out}; train from it with model.adapter_weights={out}")
    return report


if __name__ == "__main__":
    sys.exit(run(main))
