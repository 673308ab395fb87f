"""Regression guards of the miniature world's shipped pose networks (assets/mini/, trained by
scripts/train_pose_evaluator.py): they load through the MMPose door without trusting pickles, the evaluator still
finds the poses of held-out synthetic images, and the pose-loss network serves as the PoseBackbone."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

from grpose.config import load_config
from grpose.data.skeleton import tensor_to_uint8
from grpose.data.synthetic import SyntheticPoseDataset

ROOT = Path(__file__).resolve().parents[1]
EVALUATOR_CONFIG = ROOT / "assets/mini/evaluator/higherhrnet_mini_synthetic.py"
EVALUATOR_CHECKPOINT = ROOT / "assets/mini/evaluator/higherhrnet_mini_synthetic.pth"
POSE_LOSS_CONFIG = ROOT / "assets/mini/pose_loss/mobilenetv2_mini_synthetic.py"
POSE_LOSS_CHECKPOINT = ROOT / "assets/mini/pose_loss/mobilenetv2_mini_synthetic.pth"
HELD_OUT_SEED, RESOLUTION, NUM_IMAGES = 1, 128, 16
# Measured on these 16 images (docs/mini_evaluator.md); the guards sit well below, to catch broken weights or a
# changed decoding path, not noise.
EVALUATOR_MIN_AP = 0.80
POSE_LOSS_MIN_AP = 0.30

pytestmark = [
    pytest.mark.mmpose,
    pytest.mark.skipif(importlib.util.find_spec("mmpose") is None,
                       reason="mmpose 0.x is not installed (run `bash scripts/install_mmpose.sh`)"),
]


@pytest.fixture(scope="module")
def held_out():
    """The first 16 images of the evaluation split (seed 1, never trained on) and their conditioning poses."""
    data = SyntheticPoseDataset(NUM_IMAGES, resolution=RESOLUTION, seed=HELD_OUT_SEED)
    samples = [data[i] for i in range(NUM_IMAGES)]
    return [tensor_to_uint8(s["image"]) for s in samples], [s["keypoints"].numpy() for s in samples]


def _eval_cfg(config, checkpoint):
    return load_config(None, ["eval.protocol=standard", f"eval.pose_estimator_config={config}",
                              f"eval.pose_estimator_checkpoint={checkpoint}"]).eval


def _held_out_ap(estimator, held_out):
    from grpose.eval.pose_metrics import pose_metrics

    images, poses = held_out
    return pose_metrics(poses, estimator.predict(images), protocol="standard", image_size=RESOLUTION)


@pytest.mark.parametrize("checkpoint", [EVALUATOR_CHECKPOINT, POSE_LOSS_CHECKPOINT], ids=["evaluator", "pose_loss"])
def test_shipped_checkpoint_is_tensors_only_and_small(checkpoint):
    from grpose.eval.pose_estimator import read_pose_checkpoint

    state = read_pose_checkpoint(checkpoint)  # weights_only, no trust_pickle
    assert state and all(isinstance(v, torch.Tensor) for v in state.values())
    assert checkpoint.stat().st_size < 8 * 2**20


def test_evaluator_loads_from_the_eval_config_keys_and_finds_the_held_out_poses(held_out):
    from grpose.eval.report import build_pose_estimator

    estimator = build_pose_estimator(_eval_cfg(EVALUATOR_CONFIG, EVALUATOR_CHECKPOINT), device="cpu")
    assert next(estimator.model.parameters()).dtype == torch.float32
    assert estimator.model.test_cfg["flip_test"] and estimator.model.test_cfg["use_udp"]
    metrics = _held_out_ap(estimator, held_out)
    assert metrics["AP"] >= EVALUATOR_MIN_AP, metrics
    assert metrics["PCE"] <= 0.25, metrics


def test_evaluator_config_resolves_from_a_relative_path(monkeypatch):
    from grpose.eval.pose_estimator import resolve_mmpose_config

    monkeypatch.chdir(ROOT)
    relative = EVALUATOR_CONFIG.relative_to(ROOT)
    assert Path(resolve_mmpose_config(relative)).resolve() == EVALUATOR_CONFIG
    assert Path(resolve_mmpose_config(str(relative))).resolve() == EVALUATOR_CONFIG


def test_pose_loss_network_scores_and_serves_as_the_pose_backbone(held_out):
    from grpose.eval.pose_estimator import BottomUpPoseEstimator
    from grpose.losses.pose_perception import build_pose_perception_loss

    metrics = _held_out_ap(BottomUpPoseEstimator(POSE_LOSS_CONFIG, POSE_LOSS_CHECKPOINT), held_out)
    assert metrics["AP"] >= POSE_LOSS_MIN_AP, metrics

    cfg = load_config(None, ["loss.pose_perception.alpha=0.01", f"loss.pose_perception.network_config={POSE_LOSS_CONFIG}",
                             f"loss.pose_perception.network_checkpoint={POSE_LOSS_CHECKPOINT}",
                             f"loss.pose_perception.input_size={RESOLUTION}"])
    loss = build_pose_perception_loss(cfg.loss.pose_perception)
    images = torch.from_numpy(np.stack(held_out[0][:2])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    (features,) = loss.backbone(images)
    assert features.shape == (2, 1280, RESOLUTION // 32, RESOLUTION // 32)
    assert torch.isfinite(features).all() and features.std() > 0
