"""Synthetic stick-figure dataset and the data module's batch contract on it."""

import time

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from grpose.config import DataConfig
from grpose.data.datamodule import SKIPPED_KEY, PoseDataModule, collate_pose_batch
from grpose.data.skeleton import render_skeleton, tensor_to_uint8
from grpose.data.synthetic import _BODY_COLORS, SYNTHETIC_SCENES, SyntheticPoseDataset

CONTRACT_KEYS = {"image", "hint", "keypoints", "num_persons", "prompt", "id", "scenario", "pose_path"}


def assert_same_sample(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


def test_deterministic_per_index_and_seed():
    ds = SyntheticPoseDataset(20, resolution=64, seed=3)
    assert_same_sample(ds[7], ds[7])
    assert_same_sample(ds[7], SyntheticPoseDataset(20, resolution=64, seed=3)[7])
    assert not torch.equal(ds[7]["image"], ds[8]["image"])
    assert not torch.equal(ds[7]["keypoints"], SyntheticPoseDataset(20, resolution=64, seed=4)[7]["keypoints"])


@pytest.mark.parametrize("resolution", [64, 96])
def test_shapes_ranges_and_missing_convention(resolution):
    ds = SyntheticPoseDataset(24, resolution=resolution, max_persons=5)
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == CONTRACT_KEYS
        for key in ("image", "hint"):
            assert s[key].shape == (3, resolution, resolution) and s[key].dtype == torch.float32
            assert s[key].min() >= -1 and s[key].max() <= 1
        kps = s["keypoints"]
        assert kps.shape == (5, 17, 3) and kps.dtype == torch.float32
        present = kps[..., 2] > ds.score_threshold
        assert (kps[~present] == torch.tensor([-1.0, -1.0, 0.0])).all()
        assert (kps[present][:, :2] >= 0).all() and (kps[present][:, :2] < resolution).all()
        assert s["num_persons"] == int(present.any(-1).sum())
        assert present[: s["num_persons"]].any(-1).all()  # persons are packed first
        assert s["pose_path"] == "" and s["scenario"] in SYNTHETIC_SCENES and s["id"]
        assert s["prompt"]


def test_multi_person_samples_and_missing_keypoints_occur():
    ds = SyntheticPoseDataset(60, resolution=64)
    counts = [ds[i]["num_persons"] for i in range(len(ds))]
    assert min(counts) >= 1 and max(counts) <= 3
    assert {1, 2, 3} <= set(counts)
    missing = sum(int((ds[i]["keypoints"][: counts[i], :, 2] == 0).sum()) for i in range(len(ds)))
    assert missing > 0


def test_hint_is_render_skeleton_of_the_keypoints():
    ds = SyntheticPoseDataset(10, resolution=96, skeleton_width=3)
    for i in range(len(ds)):
        s = ds[i]
        expected = render_skeleton(s["keypoints"].numpy(), 96, 96, line_width=3, score_threshold=ds.score_threshold)
        np.testing.assert_array_equal(tensor_to_uint8(s["hint"]), expected)
        assert expected.max() > 0


def test_caption_colors_are_in_the_picture():
    ds = SyntheticPoseDataset(16, resolution=96)
    for i in range(len(ds)):
        s = ds[i]
        image = tensor_to_uint8(s["image"]).reshape(-1, 3)
        named = [c for c in _BODY_COLORS if f" {c}" in s["prompt"]]
        assert 1 <= len(named) <= 3
        for name in named:
            assert (image == np.array(_BODY_COLORS[name], dtype=np.uint8)).all(-1).sum() > 5, (i, name)
        assert SYNTHETIC_SCENES[s["scenario"]][0] in s["prompt"]


def test_scenes_cycle():
    ds = SyntheticPoseDataset(8, resolution=64)
    assert [ds[i]["scenario"] for i in range(8)] == list(SYNTHETIC_SCENES) * 2


def test_prompt_dropout_is_deterministic_and_leaves_the_picture_alone():
    never = SyntheticPoseDataset(40, resolution=64, prompt_dropout=0.0)
    always = SyntheticPoseDataset(40, resolution=64, prompt_dropout=1.0)
    half = SyntheticPoseDataset(40, resolution=64, prompt_dropout=0.5)
    assert all(never[i]["prompt"] for i in range(40))
    assert all(always[i]["prompt"] == "" for i in range(40))
    dropped = [half[i]["prompt"] == "" for i in range(40)]
    assert 5 < sum(dropped) < 35
    assert dropped == [half[i]["prompt"] == "" for i in range(40)]
    assert torch.equal(never[3]["image"], always[3]["image"])


def test_cheap_enough():
    ds = SyntheticPoseDataset(64, resolution=128)
    ds[0]
    start = time.perf_counter()
    for i in range(64):
        ds[i]
    assert (time.perf_counter() - start) / 64 < 0.02


def test_invalid_arguments():
    with pytest.raises(ValueError, match="prompt_dropout"):
        SyntheticPoseDataset(4, prompt_dropout=1.5)
    with pytest.raises(IndexError):
        SyntheticPoseDataset(4)[4]


def synthetic_cfg(**overrides):
    cfg = OmegaConf.structured(DataConfig)
    cfg.merge_with({"dataset": "synthetic", "resolution": 64, "skeleton_width": 2, "batch_size": 4,
                    "val_batch_size": 3, "num_workers": 0, "synthetic_train_size": 10, "synthetic_val_size": 5,
                    **overrides})
    return cfg


def test_datamodule_batches_follow_the_contract():
    dm = PoseDataModule(synthetic_cfg())
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert set(batch) == CONTRACT_KEYS | {SKIPPED_KEY}
    assert batch["image"].shape == (4, 3, 64, 64) and batch["hint"].shape == (4, 3, 64, 64)
    assert batch["keypoints"].shape == (4, 10, 17, 3)
    assert batch["num_persons"].dtype == torch.long and batch["num_persons"].shape == (4,)
    for key in ("prompt", "id", "scenario", "pose_path"):
        assert isinstance(batch[key], list) and len(batch[key]) == 4 and all(isinstance(v, str) for v in batch[key])
    assert batch[SKIPPED_KEY] == 0
    assert len(dm.train_dataloader()) == 2  # 10 samples, batch 4, drop_last

    val = list(dm.val_dataloader())
    assert [len(b["id"]) for b in val] == [3, 2]
    predicted = [i for b in dm.predict_dataloader() for i in b["id"]]
    assert predicted == [i for b in val for i in b["id"]]  # fixed order, every sample once
    assert len(dm.test_dataset()) == 5
    train_ids = {s["id"] for s in dm.train_dataset()}
    assert not train_ids & set(predicted)  # different seeds


def test_datamodule_eval_has_no_prompt_dropout_and_train_does():
    dm = PoseDataModule(synthetic_cfg(prompt_dropout=1.0))
    assert all(p == "" for b in dm.train_dataloader() for p in b["prompt"])
    assert all(p for b in dm.val_dataloader() for p in b["prompt"])


def test_datamodule_with_workers():
    dm = PoseDataModule(synthetic_cfg(num_workers=1))
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    assert next(iter(loader))["image"].shape == (4, 3, 64, 64)


def test_datamodule_scenario_filter_and_errors():
    dm = PoseDataModule(synthetic_cfg(scenarios=["beach"], synthetic_val_size=8))
    assert [s["scenario"] for s in dm.test_dataset()] == ["beach", "beach"]
    with pytest.raises(ValueError, match="park"):
        PoseDataModule(synthetic_cfg(scenarios=["moon"])).test_dataset()
    with pytest.raises(ValueError, match="batch_size"):
        PoseDataModule(synthetic_cfg(synthetic_train_size=3)).train_dataloader()


def test_collate_drops_none_and_counts():
    ds = SyntheticPoseDataset(3, resolution=64)
    batch = collate_pose_batch([ds[0], None, ds[1]])
    assert batch["image"].shape[0] == 2 and batch[SKIPPED_KEY] == 1
    with pytest.raises(RuntimeError, match="check_dataset"):
        collate_pose_batch([None, None])
