"""scripts/pose_sensitivity.py: the share of each residual that depends on the pose, on the shipped mini world.
An untrained adapter (zero convolutions) is exactly pose-blind; the shipped adapter is mostly pose."""

from __future__ import annotations

import pytest
import torch

from grpose.config import load_config
from grpose.data.datamodule import PoseDataModule, collate_pose_batch
from grpose.errors import ConfigError
from grpose.lit_module import GRPoseLitModule

from .conftest import REPO, load_entry_point


@pytest.fixture(scope="module")
def probe():
    return load_entry_point("scripts/pose_sensitivity.py")


@pytest.fixture(scope="module")
def demo_batch():
    cfg = load_config(REPO / "configs/demo.yaml")
    dataset = PoseDataModule(cfg.data).test_dataset()
    return cfg, collate_pose_batch([dataset[i] for i in range(2)])


def test_untrained_adapter_is_pose_blind(probe, demo_batch):
    cfg, batch = demo_batch
    torch.manual_seed(0)
    names, shares = probe.pose_shares(GRPoseLitModule.from_config(cfg), batch, [500])
    assert names == [*(f"down {i}" for i in range(12)), "mid"]
    assert max(shares[500]) == 0.0  # every residual zero-conv'd at init


def test_shipped_adapter_uses_the_pose(probe, capsys):
    _, shares = probe.main(["--config", str(REPO / "configs/demo.yaml"), "--ckpt", str(REPO / "assets/mini/grpose_adapter"),
                         "--samples", "2", "--timesteps", "500"])
    values = shares[500]
    assert values[0] == pytest.approx(0.0, abs=1e-6)  # conv_in's residual: the pose enters at the first PGI
    assert min(values[1:]) > 0.2 and sum(values[1:]) / 12 > 0.5  # measured: 0.44-0.99, mean 0.81
    assert "| 500 | 0.00 |" in capsys.readouterr().out


def test_timestep_out_of_range_is_refused(probe):
    with pytest.raises(ConfigError, match="--timesteps"):
        probe.main(["--config", str(REPO / "configs/demo.yaml"), "--ckpt", "unused", "--timesteps", "1000"])


def test_humansd_has_no_residuals_to_probe(probe, demo_batch):
    cfg, batch = demo_batch
    module = GRPoseLitModule.from_config(load_config(REPO / "configs/mini/humansd.yaml"))
    with pytest.raises(ConfigError, match="model.adapter=humansd adds no residuals"):
        probe.pose_shares(module, batch, [500])
