"""Every preset in configs/ loads, validates and runs one training step with the model shrunk to tiny."""

from pathlib import Path

import pytest
import torch

from grpose.config import load_config
from grpose.errors import ConfigError
from grpose.lit_module import GRPoseLitModule
from grpose.sd15 import build_sd15

PRESETS = sorted(str(p) for p in Path("configs").rglob("*.yaml"))
SHRINK = [
    "model.base=tiny", "model.pretrained=null", "model.adapter_weights=null", "model.frozen_dtype=fp32",
    "model.pose_stem_channels=[8,16,16]", "model.pose_level_channels=[16,16,32,32]",
    "trainer.precision=32-true", "trainer.accelerator=cpu", "data.dataset=synthetic", "data.resolution=64",
    "loss.pose_perception.network_checkpoint=null", "loss.pose_perception.start_epoch=null",
    "loss.pose_perception.start_step=null",  # the gradual constraint would keep L_p off in this one step
    "loss.pose_perception.input_size=64",
    # HumanSD's heatmap network: the shipped mini HigherHRNet config, random weights
    "loss.humansd_heatmap.network_config=assets/mini/evaluator/higherhrnet_mini_synthetic.py",
    "loss.humansd_heatmap.network_checkpoint=null",
]


def test_all_presets_are_collected():
    assert len(PRESETS) >= 20
    assert "configs/demo.yaml" in PRESETS


@pytest.fixture(scope="module")
def tiny_parts():
    """One frozen tiny SD1.5 shared by all presets (it is never trained)."""
    return build_sd15("tiny")


@pytest.mark.parametrize("preset", PRESETS)
def test_preset_runs_one_training_step(preset, synthetic_batch, tiny_parts):
    full = load_config(preset)
    cfg = load_config(preset, SHRINK)
    # the shrink keeps every method choice of the preset
    for key in ("adapter", "graphs", "graph_type", "knn_k", "positional_encoding", "pgi_levels"):
        assert cfg.model[key] == full.model[key], key
    assert cfg.loss.pose_perception.alpha == full.loss.pose_perception.alpha
    if cfg.loss.pose_perception.alpha > 0 or cfg.loss.humansd_heatmap.variant != "none":
        pytest.importorskip("mmpose", reason="pose-loss presets need mmpose (bash scripts/install_mmpose.sh)")
    if cfg.model.adapter == "none":  # the base alone is evaluated, never trained
        with pytest.raises(ConfigError, match="nothing to train"):
            GRPoseLitModule.from_config(cfg, parts=tiny_parts)
        return
    module = GRPoseLitModule.from_config(cfg, parts=tiny_parts)
    optimizer = module.configure_optimizers()
    losses = module.compute_loss(synthetic_batch(2))
    assert torch.isfinite(losses["loss"])
    assert ("loss_pose" in losses) == (cfg.loss.pose_perception.alpha > 0)
    losses["loss"].backward()
    optimizer.step()
