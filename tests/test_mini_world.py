"""The miniature world really learns: the shipped GRPose adapter puts the generated people in the conditioning pose.

Everything here ships in assets/mini/ and was made by the repository's own scripts (docs/mini_world.md): the
pretrained tiny base (the stand-in for SD1.5), the trained pose evaluator (the stand-in for HigherHRNet-W48) and a
small GRPose adapter trained by `bash scripts/demo.sh`. Generated images are scored exactly as eval_pose.py
scores them (standard protocol). The test guards pose control itself: an adapter that trains but is blind to the
pose (residuals in the wrong order, pose features fed to the wrong level, a wrongly normalised hint) falls to the
base-alone AP and fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from grpose.config import load_config
from grpose.data.datamodule import PoseDataModule
from grpose.pipeline import GRPosePipeline, images_to_uint8, sampling_options
from grpose.sd15 import build_sd15
from grpose.weights import load_adapter

from .conftest import REPO

pytestmark = pytest.mark.mmpose

NUM_IMAGES = 16
ADAPTER = REPO / "assets" / "mini" / "grpose_adapter"
# Measured with these 16 images and seeds (docs/mini_world.md): adapter AP ~ MEASURED_ADAPTER_AP, base alone
# ~ MEASURED_BASE_AP. The thresholds leave room for platform-dependent rounding, not for a blind adapter.
MIN_ADAPTER_AP = 0.40
MAX_BASE_AP = 0.10


@pytest.fixture(scope="module")
def world():
    pytest.importorskip("mmpose")
    from grpose.eval.pose_estimator import BottomUpPoseEstimator

    cfg = load_config(REPO / "configs" / "demo.yaml", [f"model.pretrained={REPO / 'assets/mini/base'}"])
    samples = [PoseDataModule(cfg.data).test_dataset()[i] for i in range(NUM_IMAGES)]
    parts = build_sd15(cfg.model.base, cfg.model.pretrained)
    estimator = BottomUpPoseEstimator(str(REPO / cfg.eval.pose_estimator_config),
                                      str(REPO / cfg.eval.pose_estimator_checkpoint), flip_test=cfg.eval.flip_test,
                                      pose_nms_thr=cfg.eval.pose_nms_thr)
    return cfg, samples, parts, estimator


def _ap(world, adapter, hints=None) -> float:
    from grpose.eval.pose_metrics import pose_metrics

    cfg, samples, parts, estimator = world
    prompts = [s["prompt"] for s in samples]
    hints = torch.stack([s["hint"] for s in samples]) if hints is None else hints
    images = GRPosePipeline(parts, adapter)(prompts, hints, list(range(NUM_IMAGES)),
                                            **sampling_options(cfg.sampling), progress=False)
    detections = estimator.predict(list(images_to_uint8(images).numpy()))
    gt = [s["keypoints"][: int(s["num_persons"])].numpy() for s in samples]
    return pose_metrics(gt, detections, protocol="standard", image_size=cfg.data.resolution)["AP"]


def test_shipped_adapter_puts_people_in_the_conditioning_pose(world):
    cfg = world[0]
    adapter = load_adapter(ADAPTER, expected=cfg.model)
    with_pose = _ap(world, adapter)
    base_alone = _ap(world, None)
    # the adapter must follow *this* pose: the same adapter given another sample's pose scores like the base
    samples = world[1]
    shuffled = torch.stack([samples[(i + 1) % NUM_IMAGES]["hint"] for i in range(NUM_IMAGES)])
    wrong_pose = _ap(world, adapter, shuffled)
    print(f"AP: adapter {with_pose:.3f}, base alone {base_alone:.3f}, adapter with shuffled poses {wrong_pose:.3f}")
    assert base_alone <= MAX_BASE_AP
    assert with_pose >= MIN_ADAPTER_AP
    assert wrong_pose <= MAX_BASE_AP + 0.1
    assert np.isfinite([with_pose, base_alone, wrong_pose]).all()
