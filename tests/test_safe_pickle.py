"""Pose files and checkpoints never run code: crafted pickles are refused by every reader, honest files load."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.data.humanart import BadSampleError, HumanSDPoseDataset, load_pose_npz, save_pose_npz
from grpose.eval.pose_estimator import read_pose_checkpoint
from grpose.pose_inputs import load_pose, read_keypoints
from grpose.safe_pickle import UnsafePickleError, read_npz, require_weights_only
from grpose.errors import WeightsError
from grpose.files import read_checkpoint
from tests.test_dataset_scripts import check_dataset


class WritesMarker:
    """Unpickling this calls open(marker, "w"), which creates the marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


class RunsShell:
    """Unpickling this calls os.system("touch marker")."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


PAYLOADS = {"open": (WritesMarker, "io.open"), "os.system": (RunsShell, f"{os.name}.system")}


def person_keypoints(seed=0):
    rng = np.random.default_rng(seed)
    kp = np.ones((17, 3), dtype=np.float32)
    kp[:, :2] = rng.uniform(0, 30, size=(17, 2))
    return kp


def write_npz_object_array(path, persons):
    arr = np.empty(len(persons), dtype=object)
    for i, p in enumerate(persons):
        arr[i] = p
    np.savez(path, arr)


@pytest.fixture(params=sorted(PAYLOADS))
def malicious(request, tmp_path):
    """(pose file whose person dict carries a payload, marker path, the global the payload names)."""
    cls, global_name = PAYLOADS[request.param]
    marker = tmp_path / "marker"
    path = tmp_path / "pose" / "evil.npz"
    path.parent.mkdir()
    write_npz_object_array(path, [{"keypoints": person_keypoints(), "payload": cls(marker)}])
    return path, marker, global_name


def test_the_crafted_file_does_run_code_with_allow_pickle(tmp_path):
    """The test file is really malicious: numpy's own loader runs it."""
    marker = tmp_path / "marker"
    path = tmp_path / "evil.npz"
    write_npz_object_array(path, [{"keypoints": person_keypoints(), "payload": WritesMarker(marker)}])
    with np.load(path, allow_pickle=True) as data:
        data["arr_0"]
    assert marker.exists()


def test_load_pose_npz_refuses_with_file_and_global(malicious):
    path, marker, global_name = malicious
    with pytest.raises(UnsafePickleError) as info:
        load_pose_npz(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and global_name in message
    assert "refused" in message and "source you trust" in message
    assert not marker.exists()


def write_dataset(root, pose_file_writer):
    (root / "images" / "dance").mkdir(parents=True)
    Image.new("RGB", (40, 30), (120, 80, 40)).save(root / "images" / "dance" / "a.jpg")
    pose = root / "pose" / "dance" / "a.npz"
    pose.parent.mkdir(parents=True)
    pose_file_writer(pose)
    mapping = {"a": {"img_path": "images/dance/a.jpg", "prompt": "a dancer", "pose_path": "pose/dance/a.npz"}}
    (root / "mapping.json").write_text(json.dumps(mapping))
    return pose


@pytest.mark.parametrize("skip_bad_samples", [False, True])
def test_dataset_sample_refuses_even_when_skipping_bad_samples(tmp_path, malicious, skip_bad_samples):
    evil, marker, global_name = malicious
    root = tmp_path / "data"
    write_dataset(root, lambda pose: pose.write_bytes(evil.read_bytes()))
    data = HumanSDPoseDataset(root, "mapping.json", resolution=32, train=False, skip_bad_samples=skip_bad_samples)
    with pytest.raises(UnsafePickleError, match=global_name):
        data[0]
    assert not marker.exists()


def test_inference_pose_inputs_refuse(malicious):
    path, marker, global_name = malicious
    with pytest.raises(UnsafePickleError, match=global_name):
        read_keypoints(path)
    with pytest.raises(UnsafePickleError, match=global_name):
        load_pose(path, resolution=32)
    assert not marker.exists()


def test_check_dataset_lists_the_refused_pose_file(tmp_path, malicious, capsys):
    evil, marker, global_name = malicious
    root = tmp_path / "data"
    write_dataset(root, lambda pose: pose.write_bytes(evil.read_bytes()))
    assert check_dataset.main([str(root), "mapping.json", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "1 broken samples" in out and global_name in out and "refused" in out
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------- honest files


def humansd_persons():
    """What mmpose-produced HumanSD pose files hold: float32 arrays and numpy scalars in per-person dicts."""
    return [
        {"keypoints": person_keypoints(1), "score": np.float32(0.83), "bbox": np.array([1.0, 2.0, 30.0, 28.0]),
         "area": 812.5, "track": (1, "a"), "crowd": False, "note": None},
        {"keypoints": person_keypoints(2).astype(np.float64), "score": np.float64(0.5), "id": np.int64(7)},
    ]


def assert_same_objects(a, b):
    assert type(a) is type(b)
    if isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape
        if a.dtype == object:
            for x, y in zip(a.reshape(-1), b.reshape(-1)):
                assert_same_objects(x, y)
        else:
            assert np.array_equal(a, b)
    elif isinstance(a, dict):
        assert list(a) == list(b)
        for k in a:
            assert_same_objects(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same_objects(x, y)
    else:
        assert a == b or (a is None and b is None)


def npz_with_pickle(path, pickle_bytes, n):
    """An .npz whose arr_0 is an object array of n items stored as the given pickle bytes."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|O", "fortran_order": False, "shape": (n,)})
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("arr_0.npy", header.getvalue() + pickle_bytes)  # the header includes the magic


@pytest.mark.parametrize("layout", ["numpy2", "numpy1-protocol2", "numpy1-protocol3", "protocol5"])
def test_honest_humansd_files_load_exactly_as_numpy_loads_them(tmp_path, layout):
    persons = humansd_persons()
    arr = np.empty(len(persons), dtype=object)
    arr[:] = persons
    path = tmp_path / "pose.npz"
    if layout == "numpy2":
        np.savez(path, arr)
    else:
        protocol = {"numpy1-protocol2": 2, "numpy1-protocol3": 3, "protocol5": 5}[layout]
        data = pickle.dumps(arr, protocol=protocol)
        if layout.startswith("numpy1"):
            # numpy 1.x named its reconstructors numpy.core.*: rewrite the pickle the same way
            data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            assert b"numpy.core.multiarray" in data
        npz_with_pickle(path, data, len(persons))
    with np.load(path, allow_pickle=True) as trusted:
        expected = {name: trusted[name] for name in trusted.files}
    assert_same_objects(read_npz(path), expected)
    keypoints = load_pose_npz(path)
    assert keypoints.dtype == np.float64 and keypoints.shape == (2, 17, 3)
    assert np.array_equal(keypoints, np.stack([p["keypoints"] for p in persons]).astype(np.float64))


def test_save_pose_npz_round_trip_and_numeric_files(tmp_path):
    kps = np.stack([person_keypoints(3), person_keypoints(4)])
    save_pose_npz(tmp_path / "a.npz", kps)
    assert np.array_equal(load_pose_npz(tmp_path / "a.npz"), kps.astype(np.float64))
    np.savez(tmp_path / "numeric.npz", kps, extra=np.arange(3))
    arrays = read_npz(tmp_path / "numeric.npz")
    assert sorted(arrays) == ["arr_0", "extra"] and np.array_equal(arrays["extra"], np.arange(3))
    assert np.array_equal(load_pose_npz(tmp_path / "numeric.npz"), kps.astype(np.float64))


def test_broken_pickle_is_still_a_bad_sample(tmp_path):
    data = pickle.dumps(np.array([{"keypoints": person_keypoints()}], dtype=object), protocol=4)
    npz_with_pickle(tmp_path / "cut.npz", data[: len(data) // 2], 1)
    with pytest.raises(BadSampleError, match="cut.npz"):
        load_pose_npz(tmp_path / "cut.npz")


# ---------------------------------------------------------------------------------------------- checkpoints


@pytest.fixture(params=sorted(PAYLOADS))
def malicious_ckpt(request, tmp_path):
    cls, global_name = PAYLOADS[request.param]
    marker = tmp_path / "marker"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "hyper_parameters": cls(marker)}, path)
    return path, marker, global_name


def test_checkpoint_readers_refuse_a_crafted_ckpt(malicious_ckpt):
    path, marker, global_name = malicious_ckpt
    with pytest.raises(WeightsError, match="trust_pickle") as info:
        read_checkpoint(path)
    assert global_name in str(info.value) and str(path) in str(info.value)
    with pytest.raises(RuntimeError, match=global_name.split(".")[-1]):
        read_pose_checkpoint(path)
    with pytest.raises(UnsafePickleError, match=global_name):
        require_weights_only(path, "Inception weights file")
    assert not marker.exists()


def test_legacy_format_checkpoint_names_the_refused_global(tmp_path):
    marker = tmp_path / "marker"
    path = tmp_path / "legacy.pt"
    torch.save({"w": torch.zeros(1), "x": RunsShell(marker)}, path, _use_new_zipfile_serialization=False)
    with pytest.raises(WeightsError, match=f"{os.name}.system"):
        read_checkpoint(path)
    with pytest.raises(UnsafePickleError, match=f"{os.name}.system"):
        require_weights_only(path, "Inception weights file")
    assert not marker.exists()


def test_train_resume_refuses_a_crafted_checkpoint(tmp_path, malicious_ckpt, monkeypatch):
    from tests.test_train_recipe import run

    path, marker, global_name = malicious_ckpt
    # torch's default would then be weights_only=False: train.py must not rely on the default
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(pickle.UnpicklingError, match=global_name):
        run(tmp_path, "trainer.max_steps=1", resume=str(path))
    assert not marker.exists()


def test_sd15_and_eval_checkpoint_readers_refuse_a_crafted_ckpt(malicious_ckpt):
    from grpose.sd15.single_file import read_state_dict as _read_state_dict

    path, marker, _ = malicious_ckpt
    with pytest.raises(ValueError, match="would run code. Use a .safetensors copy"):
        _read_state_dict(path)
    assert not marker.exists()


def test_inception_weights_are_checked_before_torch_fidelity_loads_them(malicious_ckpt):
    pytest.importorskip("torch_fidelity")
    from grpose.eval.quality import inception_feature_extractor

    path, marker, global_name = malicious_ckpt
    with pytest.raises(UnsafePickleError, match=global_name):
        inception_feature_extractor(2048, path)
    assert not marker.exists()


def test_weights_only_check_accepts_a_state_dict(tmp_path):
    torch.save({"w": torch.ones(3)}, tmp_path / "ok.pth")
    require_weights_only(tmp_path / "ok.pth", "Inception weights file")
