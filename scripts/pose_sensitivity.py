"""How much a trained adapter's residuals depend on the pose: is the pose branch in use, and at which level?

    python scripts/pose_sensitivity.py --config configs/demo.yaml --ckpt experiments/demo/adapter
    python scripts/pose_sensitivity.py --config configs/mini/graphs_0.yaml --ckpt ... --samples 16 --timesteps 999 500

For every residual the adapter adds to the frozen UNet (the down blocks' skips, the middle block; T2I-Adapter's
features after each down block) it prints, over the first `--samples` test samples (noised real latents at each
`--timesteps` value, their captions):

    pose share = RMS(r(pose) - r(blank)) / RMS(r(pose))

with r(blank) the residual for the skeleton image of no person. 0 means the residual ignores the pose (every
ControlNet-style adapter starts there: its zero convolutions); values near 1 mean the residual is mostly pose
(above 1: the blank skeleton pushes it the other way). An adapter whose shares stay near 0 after training draws
the base's own figures: that is the first thing to look at when an adapter's AP stays at the base's. Works for
every method that returns residuals (GRPose, ControlNet, T2I-Adapter, Uni-ControlNet, Stable-Pose), not for
HumanSD, which conditions the UNet's input instead.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

import numpy as np
import torch

from grpose.cli import run
from grpose.config import load_config
from grpose.data.datamodule import PoseDataModule, collate_pose_batch
from grpose.data.skeleton import pose_image_to_tensor, render_skeleton
from grpose.errors import ConfigError
from grpose.lit_module import GRPoseLitModule
from grpose.sd15 import SD15_SCHEDULE, encode_prompts


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="the adapter's training preset")
    parser.add_argument("--ckpt", required=True, help="train.py checkpoint (.ckpt) or exported adapter folder")
    parser.add_argument("--samples", type=int, default=8, help="first N test samples (default 8)")
    parser.add_argument("--timesteps", type=int, nargs="+", default=[999, 500, 100],
                        help="noise levels to probe (default 999 500 100)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the latent noise")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = parser.parse_intermixed_args(argv)
    if args.samples < 1:
        parser.error("--samples must be at least 1")
    return args


def _rms(t: torch.Tensor) -> float:
    return float(t.double().pow(2).mean().sqrt())


@torch.no_grad()
def pose_shares(module: GRPoseLitModule, batch: dict, timesteps: Sequence[int], seed: int = 0
                ) -> tuple[list[str], dict[int, list[float]]]:
    """(the residuals' labels, {timestep: [pose share of each residual]}) (see the module doc) for one batch of
    test samples."""
    method = module.model_cfg.adapter
    if module.adapter is None or method == "humansd":
        raise ConfigError(f"model.adapter={method} adds no residuals to the frozen UNet; the pose share is defined "
                          "for the residual adapters (grpose, controlnet, t2i_adapter, uni_controlnet, stable_pose)")
    adapter = module.adapter.eval()
    generator = torch.Generator().manual_seed(seed)
    images, hint = batch["image"], batch["hint"]
    latents = module.vae.encode(images).latent_dist.mean * module.sd.vae_scale_factor
    text = encode_prompts(module.sd, list(batch["prompt"]))
    height, width = hint.shape[-2:]
    blank = pose_image_to_tensor(render_skeleton(np.zeros((0, 17, 3)), height, width))
    blank = blank[None].expand_as(hint).contiguous()
    names: list[str] = []
    shares: dict[int, list[float]] = {}
    for t in timesteps:
        noise = torch.randn(latents.shape, generator=generator)
        step = torch.full((latents.shape[0],), int(t), dtype=torch.long)
        noisy = module.noise_scheduler.add_noise(latents, noise, step)
        with_pose = adapter.residuals(noisy, step, text, adapter.encode_pose(hint))
        without = adapter.residuals(noisy, step, text, adapter.encode_pose(blank))
        names = residual_names(with_pose)
        shares[int(t)] = [_rms(a - b) / max(_rms(a), 1e-12) for a, b in zip(with_pose.tensors(), without.tensors())]
    return names, shares


def residual_names(residuals) -> list[str]:
    """Labels in `UNetResiduals.tensors()` order: down skips, the middle block, T2I-Adapter's intrablock ones."""
    return [*(f"down {i}" for i in range(len(residuals.down or ()))), *(["mid"] if residuals.mid is not None else []),
            *(f"intrablock {i}" for i in range(len(residuals.intrablock or ())))]


def render(names: Sequence[str], shares: dict[int, list[float]]) -> str:
    lines = ["| timestep | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for t, values in shares.items():
        lines.append(f"| {t} | " + " | ".join(f"{v:.2f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> tuple[list[str], dict[int, list[float]]]:
    args = parse_args(argv)
    last = SD15_SCHEDULE["num_train_timesteps"] - 1
    if any(not 0 <= t <= last for t in args.timesteps):
        raise ConfigError(f"--timesteps {args.timesteps}: each must be in 0..{last}")
    cfg = load_config(args.config, args.overrides)
    module = GRPoseLitModule.from_config(cfg)
    module.load_adapter_weights(args.ckpt)
    dataset = PoseDataModule(cfg.data).test_dataset()
    count = min(args.samples, len(dataset))
    batch = collate_pose_batch([dataset[i] for i in range(count)])
    names, shares = pose_shares(module, batch, args.timesteps, args.seed)
    print(f"pose share of each residual of {args.ckpt} ({count} test samples; 0 = pose-blind, 1 = all pose)\n")
    print(render(names, shares))
    return names, shares


if __name__ == "__main__":
    sys.exit(run(main))
