"""scripts/pretrain_tiny_base.py continues a base the way the shipped one was made (docs/mini_world.md, stage 4)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import torch

from grpose.sd15 import build_sd15

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "pretrain_tiny_base.py"


def test_continue_the_shipped_base_for_part_of_a_schedule(tmp_path):
    out, logs = tmp_path / "base", tmp_path / "logs"
    cmd = [sys.executable, str(SCRIPT), "--from-base", str(REPO / "assets" / "mini" / "base"), "--out", str(out),
           "--cache-dir", str(tmp_path / "cache"), "--log-dir", str(logs), "--grid", str(tmp_path / "grid.png"),
           "--loss-plot", str(tmp_path / "loss.png"), "--num-images", "8", "--unet-batch", "2",
           "--unet-steps", "40", "--stop-after", "20", "--warmup", "5", "--save-every", "10",
           "--grid-captions", "1", "--grid-seeds", "1", "--sample-steps", "2"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]

    with open(logs / "mini_base_unet_loss.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20]  # stopped after 20 of the 40 steps
    assert float(rows[-1]["lr"]) > 0.5 * 6e-4  # mid-schedule (a 20-step schedule would be near its 10 % floor)
    for part in ("unet", "vae", "text_encoder"):  # no path of this machine in what would ship
        assert "_name_or_path" not in json.loads((out / part / "config.json").read_text()), part
    parts = build_sd15("mini", str(out))
    shipped = build_sd15("mini", str(REPO / "assets" / "mini" / "base"))
    assert parts.vae_scale_factor == shipped.vae_scale_factor  # the continued UNet keeps its latent scale
    assert not torch.equal(parts.unet.conv_in.weight, shipped.unet.conv_in.weight)  # it trained
    assert torch.equal(parts.vae.encoder.conv_in.weight, shipped.vae.encoder.conv_in.weight)  # the VAE is kept
    assert (tmp_path / "grid.png").is_file()


def test_stop_after_beyond_the_schedule_is_a_one_line_error(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--out", str(tmp_path), "--unet-steps", "10",
                           "--stop-after", "11"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--stop-after 11 must lie between 0 and --unet-steps 10" in done.stderr
