"""Convert a baseline's released checkpoint into a grpose adapter folder:
`python scripts/convert_baseline_ckpt.py KIND CKPT OUT_DIR [--config CONFIG] [key=value ...] [--force]`.

KIND is `t2i_adapter` (t2iadapter_keypose_sd14v1.pth / t2iadapter_openpose_sd14v1.pth, original or diffusers key
layout; a diffusers-format folder such as TencentARC/t2iadapter_keypose_sd14v1 is also accepted and re-saved as
safetensors), `uni_controlnet` (uni.ckpt: its local adapter, reduced to the openpose condition), `stable_pose`
(Stable-Pose's Human-Art / LAION-Human checkpoints: `stable_pose_adapter.*`), `controlnet` (ControlNet openpose:
control_sd15_openpose.pth, control_v11p_sd15_openpose.pth, or the diffusers folder
lllyasviel/control_v11p_sd15_openpose, which is re-saved) or `humansd` (humansd-v1.ckpt: its 8-channel UNet, the
trained part). Every tensor must find its place and every tensor of ours must be filled, or nothing is written.
OUT_DIR is a diffusers folder for `grpose.weights.load_adapter` (eval_pose.py --ckpt, pose2img.py). The default
config is SD1.5 at full size (SD2.1-base, `model.base=sd21base`, for `humansd`).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Optional

from grpose.cli import run
from grpose.config import load_config
from grpose.weights import format_key_groups, load_adapter
from grpose.weights.baselines import BASELINE_KINDS, convert_baseline_checkpoint, count_by_prefix, describe
from grpose.weights.loader import refuse_overwrite


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=BASELINE_KINDS, help="which baseline the checkpoint is")
    parser.add_argument("checkpoint", help="the released file (or, for t2i_adapter / controlnet, a diffusers folder)")
    parser.add_argument("out_dir", help="output folder")
    parser.add_argument("--config", default=None, help="YAML with the model settings (default: SD1.5 full size)")
    parser.add_argument("overrides", nargs="*", help="config overrides as key=value")
    parser.add_argument("--force", action="store_true", help="overwrite an existing export in OUT_DIR")
    parser.add_argument("--trust-pickle", action="store_true",
                        help="load a checkpoint that pickles non-tensor objects (runs code from the file)")
    parser.add_argument("--verbose", action="store_true", help="list every mapped key as 'ours <- theirs'")
    return parser.parse_intermixed_args(argv)


def main(argv: Optional[list[str]] = None) -> dict[str, Any]:
    args = parse_args(argv)
    defaults = ["model.base=sd21base"] if args.kind == "humansd" and args.config is None else []
    cfg = load_config(args.config, [*defaults, *args.overrides, f"model.adapter={args.kind}"])
    out_dir = Path(args.out_dir)
    refuse_overwrite(out_dir, args.force)
    source = Path(args.checkpoint)
    if source.is_dir():
        # A diffusers folder: the one loader reads it (and checks the architecture); only the file format changes.
        adapter = load_adapter(source, expected=cfg.model)
        report: dict[str, Any] = {"mapped": {k: k for k in adapter.state_dict()}, "dropped": [], "unmapped": [],
                                  "layout": "diffusers folder"}
    else:
        adapter, report = convert_baseline_checkpoint(args.kind, source, cfg.model, trust_pickle=args.trust_pickle)

    print(f"mapped: {len(report['mapped'])} tensors")
    if args.verbose:
        print("\n".join(f"    {ours} <- {theirs}" for ours, theirs in report["mapped"].items()))
    else:
        print("\n".join(format_key_groups(list(report["mapped"]))))
    print(f"dropped: {len(report['dropped'])} tensors")
    if report["dropped"]:
        print("\n".join(count_by_prefix(report["dropped"])))
    print(f"unmapped: {len(report['unmapped'])}")
    note = describe(args.kind, report)
    if note:
        print(note)
    adapter.save_pretrained(str(out_dir), safe_serialization=True)
    print(f"wrote {type(adapter).__name__} to {out_dir}; load it with grpose.weights.load_adapter('{out_dir}')")
    return report


if __name__ == "__main__":
    sys.exit(run(main))
