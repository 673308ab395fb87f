"""Human-Art / LAION-Human datasets on a tiny HumanSD-layout folder written in tmp_path.

Every present keypoint is painted into its source image as a small marker of a unique colour, so the tests can check
that the returned crop and the returned keypoints went through the same resize and crop.
"""

import json
import logging

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from grpose.config import DataConfig
from grpose.errors import DataError
from grpose.data.datamodule import SKIPPED_KEY, BadSampleReporter, PoseDataModule
from grpose.data.humanart import (
    HUMANART_VAL_SCENARIOS,
    BadSampleError,
    HumanSDPoseDataset,
    load_pose_npz,
    save_pose_npz,
)
from grpose.data.laion_human import LaionHumanDataset
from grpose.data.skeleton import render_skeleton, tensor_to_uint8

RES = 64
BACKGROUND = (128, 128, 128)
MARKERS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
           "magenta": (255, 0, 255), "cyan": (0, 255, 255)}

# id -> (img_path, (width, height), persons); a person is {coco index: (x, y, score, marker colour or None)}.
# Scores are unique within an image so a returned keypoint can be traced back to its source keypoint.
SAMPLES = {
    "a": ("images/2D_virtual_human/cartoon/a.jpg", (200, 120), [
        {0: (100.5, 60.5, 0.91, "red"), 5: (60.5, 30.5, 0.92, "green"), 9: (10.5, 60.5, 0.93, "blue"),
         11: (150.5, 90.5, 0.01, None)},  # wrist 9 is left of the center crop; hip 11 is below the threshold
        {0: (170.5, 100.5, 0.94, "yellow"), 1: (250.0, 50.0, 0.9, None)},  # eye 1 lies outside the image
        {},  # a person without keypoints
    ]),
    "b": ("images/2D_virtual_human/cartoon/b.png", (90, 150), [
        {0: (45.5, 75.5, 0.95, "magenta"), 16: (20.5, 140.5, 0.96, "cyan"), 3: (-3.0, 10.0, 0.9, None)},
    ]),
    "c": ("images/real_human/dance/c.jpg", (48, 40), [  # smaller than RES: upscaled
        {0: (24.5, 20.5, 0.97, "red")},
        {2: (40.5, 30.5, 0.98, "green")},
    ]),
    "d": ("images/real_human/dance/d.png", (64, 64), [
        {0: (30.5, 30.5, 0.99, "blue"), 5: (10.0, 10.0, 0.02, None)},  # exactly at the threshold: missing
    ]),
}


def pose_path_of(img_path):
    return img_path.replace("images/", "pose/", 1).rsplit(".", 1)[0] + ".npz"


def write_sample(root, sample_id):
    img_path, (w, h), persons = SAMPLES[sample_id]
    img = np.zeros((h, w, 3), dtype=np.uint8)
    img[:] = BACKGROUND
    short = min(w, h)
    radius = max(1, round(2.5 * short / RES))  # about a 5-pixel marker after resizing
    kps = np.zeros((len(persons), 17, 3))
    for p, person in enumerate(persons):
        for k, (x, y, score, color) in person.items():
            kps[p, k] = (x, y, score)
            if color is not None:
                ix, iy = int(x), int(y)
                img[max(0, iy - radius): iy + radius + 1, max(0, ix - radius): ix + radius + 1] = MARKERS[color]
    (root / img_path).parent.mkdir(parents=True, exist_ok=True)
    if img_path.endswith(".jpg"):
        Image.fromarray(img).save(root / img_path, quality=98, subsampling=0)
    else:
        Image.fromarray(img).save(root / img_path)
    save_pose_npz(root / pose_path_of(img_path), kps)
    return {"img_path": img_path, "prompt": f"{img_path.split('/')[-2]}, sample {sample_id}",
            "pose_path": pose_path_of(img_path)}


@pytest.fixture()
def dataset_root(tmp_path):
    mapping = {sid: write_sample(tmp_path, sid) for sid in SAMPLES}
    (tmp_path / "mapping.json").write_text(json.dumps(mapping))
    return tmp_path


def make(root, **kwargs):
    defaults = dict(resolution=RES, train=False, skeleton_width=2)
    return HumanSDPoseDataset(root, "mapping.json", **{**defaults, **kwargs})


def marker_centroid(image_uint8, color):
    dist = np.linalg.norm(image_uint8.astype(np.float64) - np.array(color, dtype=np.float64), axis=-1)
    ys, xs = np.nonzero(dist < 80)
    assert len(xs) > 0, f"marker {color} not found"
    # pixel i covers [i, i + 1) in the continuous coordinates the keypoints use
    return xs.mean() + 0.5, ys.mean() + 0.5


def source_keypoints(sample_id):
    """score -> (x, y, marker colour) of every keypoint of the sample."""
    return {s: (x, y, c) for person in SAMPLES[sample_id][2] for (x, y, s, c) in person.values()}


def returned_by_score(sample):
    kps = sample["keypoints"].numpy()
    present = kps[..., 2] > 0
    return {round(float(s), 2): (float(x), float(y)) for x, y, s in kps[present]}


def check_markers(sample, sample_id, margin=4.0):
    image = tensor_to_uint8(sample["image"])
    checked = 0
    for score, (x, y) in returned_by_score(sample).items():
        color = source_keypoints(sample_id)[score][2]
        if color is None or not (margin <= x < RES - margin and margin <= y < RES - margin):
            continue
        cx, cy = marker_centroid(image, MARKERS[color])
        assert abs(cx - x) < 0.75 and abs(cy - y) < 0.75, (sample_id, color, (cx, cy), (x, y))
        checked += 1
    return checked


def test_eval_center_crop_matches_an_independent_transform(dataset_root):
    ds = make(dataset_root)
    assert len(ds) == 4
    for index, sample_id in enumerate(ds.entries[i].id for i in range(len(ds))):
        sample = ds[index]
        _, (w, h), persons = SAMPLES[sample_id]
        short = min(w, h)
        new_w, new_h = round(w * RES / short), round(h * RES / short)
        left, top = (new_w - RES) // 2, (new_h - RES) // 2
        returned = returned_by_score(sample)
        expected_persons = 0
        for person in persons:
            visible = False
            for x, y, score, _ in person.values():
                ex, ey = x * new_w / w - left, y * new_h / h - top
                inside = 0 <= ex < RES and 0 <= ey < RES and score > 0.02
                visible |= inside
                if inside:
                    assert returned[round(score, 2)] == pytest.approx((ex, ey), abs=1e-4)
                else:
                    assert round(score, 2) not in returned
            expected_persons += visible
        assert sample["num_persons"] == expected_persons
        kps = sample["keypoints"]
        assert kps.shape == (10, 17, 3)
        assert (kps[kps[..., 2] == 0] == torch.tensor([-1.0, -1.0, 0.0])).all()
        assert check_markers(sample, sample_id) >= 1
    assert ds[0]["num_persons"] == 1  # "a": person 2 is empty and person 1 falls right of the crop


def test_exact_size_image_is_returned_unchanged(dataset_root):
    ds = make(dataset_root)
    index = [e.id for e in ds.entries].index("d")
    source = np.asarray(Image.open(dataset_root / SAMPLES["d"][0]).convert("RGB"))
    np.testing.assert_array_equal(tensor_to_uint8(ds[index]["image"]), source)


def test_train_uses_a_random_crop_that_moves_image_and_keypoints_together(dataset_root):
    ds = make(dataset_root, train=True, prompt_dropout=0.0)
    index = [e.id for e in ds.entries].index("a")  # 107x64 after resizing: 44 horizontal offsets
    xs, ys = set(), set()
    for seed in range(8):
        torch.manual_seed(seed)
        sample = ds[index]
        returned = returned_by_score(sample)
        xs.add(round(returned[0.91][0], 4))
        ys.add(round(returned[0.91][1], 4))
        check_markers(sample, "a")
    assert len(xs) > 2 and len(ys) == 1
    torch.manual_seed(3)
    first = ds[index]
    torch.manual_seed(3)
    assert torch.equal(first["image"], ds[index]["image"])


def test_eval_crop_is_deterministic(dataset_root):
    ds = make(dataset_root)
    torch.manual_seed(0)
    first = ds[0]
    torch.manual_seed(1)
    assert torch.equal(first["image"], ds[0]["image"]) and torch.equal(first["keypoints"], ds[0]["keypoints"])


def test_hint_renders_the_returned_keypoints(dataset_root):
    ds = make(dataset_root, skeleton_width=3)
    for i in range(len(ds)):
        s = ds[i]
        expected = render_skeleton(s["keypoints"].numpy(), RES, RES, line_width=3)
        np.testing.assert_array_equal(tensor_to_uint8(s["hint"]), expected)


def test_sample_fields_and_prompt_dropout(dataset_root):
    s = make(dataset_root)[0]
    assert s["id"] == "a" and s["scenario"] == "cartoon" and s["prompt"] == "cartoon, sample a"
    assert s["pose_path"] == str(dataset_root / "pose/2D_virtual_human/cartoon/a.npz")
    assert s["image"].shape == (3, RES, RES) and s["image"].dtype == torch.float32
    assert -1 <= s["image"].min() and s["image"].max() <= 1
    assert all(make(dataset_root, train=True, prompt_dropout=1.0)[i]["prompt"] == "" for i in range(4))
    assert all(make(dataset_root, train=False, prompt_dropout=1.0)[i]["prompt"] for i in range(4))


def test_max_persons(dataset_root):
    ds = make(dataset_root, max_persons=1)
    index = [e.id for e in ds.entries].index("c")
    s = ds[index]
    assert s["keypoints"].shape == (1, 17, 3) and s["num_persons"] == 1
    assert round(float(s["keypoints"][0, 0, 2]), 2) == 0.97  # the first person is kept


def test_scenario_filter(dataset_root):
    ds = make(dataset_root, scenarios=["dance"])
    assert sorted(e.id for e in ds.entries) == ["c", "d"]
    assert ds.scenario_counts() == {"dance": 2}
    assert {ds[i]["scenario"] for i in range(len(ds))} == {"dance"}
    with pytest.raises(ValueError, match="cartoon, dance"):
        make(dataset_root, scenarios=["dance", "ballet"])
    assert len(HUMANART_VAL_SCENARIOS) == 19 and "cartoon" in HUMANART_VAL_SCENARIOS


def test_missing_root_and_mapping_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="idea-research.github.io/HumanArt"):
        HumanSDPoseDataset(tmp_path / "nowhere", "mapping.json")
    with pytest.raises(FileNotFoundError, match="mapping_file_training.json"):
        HumanSDPoseDataset(tmp_path, "mapping_file_training.json")
    with pytest.raises(FileNotFoundError, match="HumanSD"):
        LaionHumanDataset(tmp_path / "nowhere", "train.json")


def test_malformed_mapping_names_the_entry(tmp_path):
    (tmp_path / "m.json").write_text(json.dumps({"x1": {"img_path": "a.jpg", "prompt": "p"}}))
    with pytest.raises(DataError, match=r"x1.*pose_path"):
        HumanSDPoseDataset(tmp_path, "m.json")


def test_mapping_folder_is_merged(dataset_root):
    full = json.loads((dataset_root / "mapping.json").read_text())
    folder = dataset_root / "val_jsons"
    folder.mkdir()
    (folder / "cartoon.json").write_text(json.dumps({k: full[k] for k in ("a", "b")}))
    (folder / "dance.json").write_text(json.dumps({k: full[k] for k in ("c", "d")}))
    ds = HumanSDPoseDataset(dataset_root, "val_jsons", resolution=RES, train=False)
    assert sorted(e.id for e in ds.entries) == ["a", "b", "c", "d"]


def break_files(root):
    """Corrupt sample b's image and sample c's pose file."""
    (root / SAMPLES["b"][0]).write_bytes(b"this is not a png")
    bad = np.empty(1, dtype=object)
    bad[0] = {"bbox": [0, 0, 1, 1]}  # a person without keypoints
    np.savez(root / pose_path_of(SAMPLES["c"][0]), bad)


def test_bad_files_raise_errors_naming_them(dataset_root):
    break_files(dataset_root)
    ds = make(dataset_root)
    ids = [e.id for e in ds.entries]
    with pytest.raises(BadSampleError, match="b.png"):
        ds[ids.index("b")]
    with pytest.raises(BadSampleError, match="c.npz"):
        ds[ids.index("c")]
    (dataset_root / pose_path_of(SAMPLES["a"][0])).write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(BadSampleError, match="a.npz"):
        ds[ids.index("a")]
    (dataset_root / SAMPLES["d"][0]).unlink()
    with pytest.raises(BadSampleError, match="d.png"):
        ds[ids.index("d")]


def test_bad_files_are_skipped_and_counted(dataset_root, caplog):
    break_files(dataset_root)
    ds = make(dataset_root, skip_bad_samples=True)
    with caplog.at_level(logging.WARNING):
        samples = [ds[i] for i in range(len(ds))]
    assert [s is None for s in samples] == [False, True, True, False]
    assert ds.bad_samples == 2
    assert "b.png" in caplog.text and "c.npz" in caplog.text


def test_pose_npz_formats(tmp_path):
    kps = np.arange(2 * 17 * 3, dtype=np.float64).reshape(2, 17, 3)
    save_pose_npz(tmp_path / "p.npz", kps)
    np.testing.assert_allclose(load_pose_npz(tmp_path / "p.npz"), kps)
    np.savez(tmp_path / "numeric.npz", kps)
    np.testing.assert_allclose(load_pose_npz(tmp_path / "numeric.npz"), kps)
    np.savez(tmp_path / "empty.npz", np.empty(0, dtype=object))
    assert load_pose_npz(tmp_path / "empty.npz").shape == (0, 17, 3)
    np.savez(tmp_path / "wrong.npz", np.zeros((2, 16, 3)))
    with pytest.raises(BadSampleError, match="wrong.npz"):
        load_pose_npz(tmp_path / "wrong.npz")
    np.savez(tmp_path / "other_key.npz", poses=kps)
    with pytest.raises(BadSampleError, match="arr_0"):
        load_pose_npz(tmp_path / "other_key.npz")


def test_laion_human_layout(tmp_path):
    img_path, pose_path = "images/00003/000000042.jpg", "pose/00003/000000042.npz"
    (tmp_path / img_path).parent.mkdir(parents=True)
    Image.fromarray(np.full((80, 100, 3), 90, dtype=np.uint8)).save(tmp_path / img_path)
    kps = np.zeros((1, 17, 3))
    kps[0, 0] = (50, 40, 0.9)
    save_pose_npz(tmp_path / pose_path, kps)
    (tmp_path / "train.json").write_text(json.dumps(
        {"00003_000000042": {"img_path": img_path, "prompt": "a man on a bike", "pose_path": pose_path}}))
    ds = LaionHumanDataset(tmp_path, "train.json", resolution=RES, train=False)
    s = ds[0]
    assert s["scenario"] == "laion_human" and s["id"] == "00003_000000042" and s["num_persons"] == 1
    assert ds.scenario_counts() == {"laion_human": 1}


def data_cfg(root, **overrides):
    cfg = OmegaConf.structured(DataConfig)
    cfg.merge_with({"dataset": "humanart", "root": str(root), "train_mapping": "mapping.json",
                    "val_mapping": "mapping.json", "resolution": RES, "skeleton_width": 2, "batch_size": 3,
                    "val_batch_size": 2, "num_workers": 0, **overrides})
    return cfg


def test_datamodule_humanart_batches(dataset_root):
    dm = PoseDataModule(data_cfg(dataset_root, scenarios=["cartoon"]))
    batch = next(iter(dm.predict_dataloader()))
    assert batch["id"] == ["a", "b"] and batch["scenario"] == ["cartoon", "cartoon"]
    assert batch["image"].shape == (2, 3, RES, RES) and batch["keypoints"].shape == (2, 10, 17, 3)
    assert len(dm.train_dataset()) == 4  # scenarios only restrict evaluation


class _TinyModule(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight * batch["image"].mean() - 1.0) ** 2

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_bad_sample_reporter_counts_skipped_samples(dataset_root, tmp_path):
    break_files(dataset_root)
    # 6 entries (a-d plus two more copies of the good ones), 2 broken, batches of 3: never an all-bad batch.
    mapping = json.loads((dataset_root / "mapping.json").read_text())
    mapping["a2"], mapping["d2"] = mapping["a"], mapping["d"]
    (dataset_root / "mapping.json").write_text(json.dumps(mapping))
    dm = PoseDataModule(data_cfg(dataset_root, skip_bad_samples=True))
    reporter = BadSampleReporter()
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False, callbacks=[reporter],
                         default_root_dir=tmp_path / "run")
    with pytest.warns(UserWarning, match="skipped 2 unreadable samples"):
        trainer.fit(_TinyModule(), datamodule=dm)
    assert reporter.total == 4 and reporter.epoch_count == 0
    assert trainer.callback_metrics["data/bad_samples"] == 2


def test_skipped_count_reaches_the_batch(dataset_root):
    break_files(dataset_root)
    dm = PoseDataModule(data_cfg(dataset_root, skip_bad_samples=True, val_batch_size=4))
    batch = next(iter(dm.val_dataloader()))
    assert batch["id"] == ["a", "d"] and batch[SKIPPED_KEY] == 2
