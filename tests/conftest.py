"""Shared fixtures: tiny configs and batches from the synthetic dataset."""

import pytest
import torch


from grpose.config import load_config
from grpose.data.synthetic import SyntheticPoseDataset

TINY_OVERRIDES = [
    "model.base=tiny", "model.pretrained=null", "model.pose_stem_channels=[8,16,16]",
    "model.pose_level_channels=[16,16,32,32]", "model.knn_k=4", "data.dataset=synthetic", "data.resolution=64",
    "data.skeleton_width=3", "data.num_workers=0", "trainer.accelerator=cpu", "trainer.devices=1",
    "trainer.enable_progress_bar=false", "sampling.num_inference_steps=2", "sampling.num_images=2",
]


@pytest.fixture
def tiny_cfg():
    def make(*overrides, path=None):
        return load_config(path, TINY_OVERRIDES + list(overrides))
    return make


@pytest.fixture(scope="session")
def synthetic_batch():
    def make(batch_size=4, seed=0, resolution=64):
        data = SyntheticPoseDataset(batch_size, resolution=resolution, seed=seed, skeleton_width=3)
        samples = [data[i] for i in range(batch_size)]
        return {
            "image": torch.stack([s["image"] for s in samples]),
            "hint": torch.stack([s["hint"] for s in samples]),
            "prompt": [s["prompt"] for s in samples],
        }
    return make


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield



