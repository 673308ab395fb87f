"""Export a trained adapter from a Lightning checkpoint to a diffusers folder:
`python scripts/export_adapter.py CKPT OUT_DIR [--config CONFIG] [--force]`.

OUT_DIR gets `config.json` + `diffusion_pytorch_model.safetensors`; load it with `grpose.weights.load_adapter(OUT_DIR)`
(or the class's `from_pretrained`: GraphPoseAdapter, ControlNetBaseline, T2IAdapterBaseline,
UniControlNetAdapter). No SD1.5 weights are needed.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from torch import nn

from grpose.cli import run
from grpose.config import load_config
from grpose.models.adapter import count_parameters
from grpose.errors import ConfigError
from grpose.weights import export_adapter


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", help="Lightning checkpoint written by train.py (e.g. .../checkpoints/last.ckpt)")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--config", default=None,
                        help="YAML to build the adapter from, instead of the config stored in the checkpoint")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of --config")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export in OUT_DIR")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load a checkpoint that pickles non-tensor objects (runs code from the file)")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> nn.Module:
    args = parse_args(argv)
    if args.overrides and args.config is None:
        raise ConfigError("key=value overrides apply to --config; pass --config too")
    model_cfg = load_config(args.config, args.overrides).model if args.config else None
    adapter = export_adapter(args.checkpoint, args.out_dir, expected=model_cfg, overwrite=args.force,
                             trust_pickle=args.trust_pickle)
    print(f"wrote {type(adapter).__name__} ({count_parameters(adapter) / 1e6:.2f} M parameters) to {args.out_dir}")
    return adapter


if __name__ == "__main__":
    sys.exit(run(main))
