"""Tests of the MMPose door: config resolution, checkpoint loading, the frozen PoseBackbone and the bottom-up
estimator, on randomly initialised models built from the configs shipped with mmpose 0.x."""

import importlib.util
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from grpose.eval import pose_estimator as pe

MOBILENET = "associative_embedding/coco/mobilenetv2_coco_512x512.py"
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

requires_mmpose = pytest.mark.skipif(importlib.util.find_spec("mmpose") is None,
                                     reason="mmpose 0.x is not installed (run `bash scripts/install_mmpose.sh`)")


def _mobilenet_config(image_size=None, max_num_people=None):
    pe.require_mmpose()
    import mmcv

    cfg = mmcv.Config.fromfile(pe.resolve_mmpose_config(MOBILENET))
    if image_size is not None:
        cfg.data_cfg.image_size = image_size
    if max_num_people is not None:
        cfg.model.test_cfg.max_num_people = max_num_people
    return cfg


@pytest.fixture(scope="module")
def pose_model():
    torch.manual_seed(0)
    return pe.build_pose_model(MOBILENET)


def test_require_mmpose_names_the_install_script(monkeypatch):
    monkeypatch.setitem(sys.modules, "mmpose", None)  # makes `import mmpose` raise ImportError
    with pytest.raises(ImportError, match=r"bash scripts/install_mmpose\.sh"):
        pe.require_mmpose()


def test_importing_the_door_does_not_import_mmpose():
    code = ("import sys, grpose.eval.pose_estimator, grpose.losses.pose_perception; "
            "bad = [m for m in ('mmpose', 'mmcv') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------------------------- configs
@pytest.mark.mmpose
@requires_mmpose
class TestConfigs:
    def test_short_and_long_names_resolve_to_the_shipped_file(self):
        short = Path(pe.resolve_mmpose_config(MOBILENET))
        assert short.is_file() and short.parts[-7:-3] == (".mim", "configs", "body", "2d_kpt_sview_rgb_img")
        long = pe.resolve_mmpose_config("body/2d_kpt_sview_rgb_img/" + MOBILENET)
        assert Path(long) == short
        assert pe.resolve_mmpose_config(short) == str(short)  # an existing path is used as is
        hrnet = Path(pe.resolve_mmpose_config("associative_embedding/coco/higherhrnet_w48_coco_512x512_udp.py"))
        assert hrnet.is_file()

    def test_unknown_config_lists_where_it_looked(self):
        with pytest.raises(FileNotFoundError) as info:
            pe.resolve_mmpose_config("associative_embedding/coco/no_such_model.py")
        message = str(info.value)
        assert "no_such_model.py" in message and "2d_kpt_sview_rgb_img" in message
        assert message.count("no_such_model.py") >= 4  # the name plus each candidate path

    def test_normalisation_is_read_from_the_config(self):
        mean, std, order = pe.input_normalisation(_mobilenet_config())
        assert mean == pytest.approx([0.485, 0.456, 0.406]) and std == pytest.approx([0.229, 0.224, 0.225])
        assert order == "rgb"
        cfg = _mobilenet_config()
        norm = pe._find_transform(cfg.test_pipeline, "NormalizeTensor")
        norm["mean"] = [0.1, 0.2, 0.3]
        cfg.test_pipeline[0]["channel_order"] = "bgr"
        torch.manual_seed(0)
        backbone = pe.PoseBackbone(pe.build_pose_model(cfg), input_size=64)
        assert backbone.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3]) and backbone.bgr_input
        images = torch.rand(1, 3, 64, 64) * 2 - 1
        mean = torch.tensor([0.1, 0.2, 0.3]).view(1, 3, 1, 1)
        expected = (((images + 1) / 2).flip(1) - mean) / IMAGENET_STD  # a BGR-trained network gets BGR
        torch.testing.assert_close(backbone.preprocess(images), expected)


# -------------------------------------------------------------------------------------------- checkpoints
def _save_variants(model, tmp_path):
    """The checkpoint layouts MMPose users have: bare, mmcv-style with numpy metadata, numpy-1.x pickles."""
    state = model.state_dict()
    meta = {"epoch": 210, "hook_msgs": {"best_score": np.float64(0.442)}, "arr": np.arange(3, dtype=np.int64),
            "dtype": np.dtype("float32")}
    paths = {"bare": tmp_path / "bare.pth", "mmcv": tmp_path / "mmcv.pth", "numpy1": tmp_path / "numpy1.pth",
             "ddp": tmp_path / "ddp.pth"}
    torch.save(state, paths["bare"])
    torch.save({"meta": meta, "state_dict": state}, paths["mmcv"])
    torch.save({"state_dict": {"module." + k: v for k, v in state.items()}}, paths["ddp"])
    # numpy 1.x wrote its reconstructors as numpy.core.multiarray.*: rewrite the pickle the same way
    with zipfile.ZipFile(paths["mmcv"]) as src, zipfile.ZipFile(paths["numpy1"], "w", zipfile.ZIP_STORED) as dst:
        for name in src.namelist():
            data = src.read(name)
            if name.endswith("data.pkl"):
                assert b"numpy._core.multiarray" in data
                data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            dst.writestr(name, data)
    return state, paths


@pytest.mark.mmpose
@requires_mmpose
class TestCheckpoints:
    def test_all_layouts_load_back_strictly(self, tmp_path):
        torch.manual_seed(1)
        saved, paths = _save_variants(pe.build_pose_model(MOBILENET), tmp_path)
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(paths["numpy1"])
        assert "numpy.core.multiarray.scalar" in unsafe  # the file really looks like a numpy-1.x checkpoint
        for kind, path in paths.items():
            torch.manual_seed(2)
            model = pe.build_pose_model(MOBILENET)
            assert not torch.equal(model.state_dict()["backbone.conv1.conv.weight"],
                                   saved["backbone.conv1.conv.weight"])
            pe.load_pose_checkpoint(model, path)
            loaded = model.state_dict()
            assert loaded.keys() == saved.keys(), kind
            assert all(torch.equal(loaded[k], saved[k]) for k in saved), kind

    def test_build_with_checkpoint_loads_it_frozen_and_in_eval(self, tmp_path):
        torch.manual_seed(3)
        saved, paths = _save_variants(pe.build_pose_model(MOBILENET), tmp_path)
        model = pe.build_pose_model(MOBILENET, checkpoint=paths["mmcv"])
        assert all(torch.equal(v, saved[k]) for k, v in model.state_dict().items())
        assert not model.training and not any(p.requires_grad for p in model.parameters())

    def test_missing_checkpoint_says_where_to_get_it(self, tmp_path):
        with pytest.raises(FileNotFoundError, match="mobilenetv2_coco_512x512-4d96e309_20200816.pth"):
            pe.build_pose_model(MOBILENET, checkpoint=tmp_path / "missing.pth")

    def test_wrong_files_give_clear_errors(self, pose_model, tmp_path):
        text = tmp_path / "notes.txt"
        text.write_text("not a checkpoint")
        with pytest.raises(RuntimeError, match=r"notes\.txt is not a readable PyTorch checkpoint"):
            pe.load_pose_checkpoint(pose_model, text)

        other = tmp_path / "other.pth"
        state = {k: v for k, v in pose_model.state_dict().items() if not k.startswith("keypoint_head.")}
        state["head.weight"] = torch.zeros(1)
        torch.save({"state_dict": state}, other)
        with pytest.raises(RuntimeError) as info:
            pe.load_pose_checkpoint(pose_model, other)
        message = str(info.value)
        n_head = sum(k.startswith("keypoint_head.") for k in pose_model.state_dict())
        assert "other.pth" in message and f"{n_head} missing keys (keypoint_head.deconv_layers.0.weight" in message
        assert "1 unexpected keys (head.weight)" in message

        reshaped = tmp_path / "reshaped.pth"
        state = dict(pose_model.state_dict())
        state["backbone.conv1.conv.weight"] = torch.zeros(1, 1, 1, 1)
        torch.save(state, reshaped)
        with pytest.raises(RuntimeError, match=r"backbone\.conv1\.conv\.weight \(1, 1, 1, 1\)"):
            pe.load_pose_checkpoint(pose_model, reshaped)

        with pytest.raises(FileNotFoundError, match="nowhere.pth"):
            pe.load_pose_checkpoint(pose_model, tmp_path / "nowhere.pth")

    def test_arbitrary_pickles_need_explicit_trust(self, pose_model, tmp_path):
        path = tmp_path / "pickled.pth"
        torch.save({"state_dict": pose_model.state_dict(), "meta": {"when": Path("/somewhere")}}, path)
        with pytest.raises(RuntimeError, match="trust_pickle=True") as info:
            pe.load_pose_checkpoint(pose_model, path)
        assert "PosixPath" in str(info.value) or "Path" in str(info.value)
        pe.load_pose_checkpoint(pose_model, path, trust_pickle=True)


# ------------------------------------------------------------------------------------------ PoseBackbone
@pytest.mark.mmpose
@requires_mmpose
class TestPoseBackbone:
    def test_default_feature_is_1280x16x16_at_512(self, pose_model):
        backbone = pe.PoseBackbone(pose_model)
        with torch.no_grad():
            (feature,) = backbone(torch.rand(1, 3, 512, 512) * 2 - 1)
        assert feature.shape == (1, 1280, 16, 16)

    def test_builds_from_a_config_name(self):
        torch.manual_seed(0)
        backbone = pe.PoseBackbone(MOBILENET, input_size=64)
        (feature,) = backbone(torch.zeros(1, 3, 64, 64))
        assert feature.shape == (1, 1280, 2, 2)

    def test_preprocessing_matches_the_mmpose_pipeline(self):
        """What the loss's network sees equals what mmpose's own test pipeline feeds it (same size, RGB)."""
        torch.manual_seed(0)
        estimator = pe.BottomUpPoseEstimator(_mobilenet_config(image_size=128, max_num_people=2), None,
                                             flip_test=False)
        seen = []
        estimator.model.backbone.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
        image = np.random.RandomState(0).randint(0, 256, (128, 128, 3), dtype=np.uint8)
        estimator.predict([image])
        backbone = pe.PoseBackbone(estimator.model, input_size=128)
        ours = backbone.preprocess(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1)
        assert seen[0].shape == ours.shape
        torch.testing.assert_close(ours, seen[0], atol=1e-5, rtol=0)

    def test_preprocessing_against_hand_written_normalisation(self, pose_model):
        backbone = pe.PoseBackbone(pose_model, input_size=96)
        images = torch.rand(2, 3, 64, 80) * 2.2 - 1.1  # slightly outside [-1, 1], as a VAE decode can be
        expected = torch.nn.functional.interpolate(((images + 1) / 2).clamp(0, 1), size=(96, 96),
                                                   mode="bilinear", align_corners=False)
        torch.testing.assert_close(backbone.preprocess(images), (expected - IMAGENET_MEAN) / IMAGENET_STD)

    def test_gradient_reaches_the_image_and_nothing_trains(self, pose_model):
        backbone = pe.PoseBackbone(pose_model, input_size=128)
        images = (torch.rand(2, 3, 128, 128) * 1.8 - 0.9).requires_grad_(True)
        (feature,) = backbone(images)
        assert feature.shape == (2, 1280, 4, 4)
        feature.pow(2).mean().backward()
        assert images.grad is not None and images.grad.abs().sum() > 0 and torch.isfinite(images.grad).all()
        assert list(backbone.parameters()) == []
        assert not any(p.requires_grad for p in backbone.net.parameters())
        assert all(p.grad is None for p in backbone.net.parameters())

    def test_stays_in_eval_and_out_of_the_parent_state_dict(self, pose_model):
        class Parent(nn.Module):
            def __init__(self):
                super().__init__()
                self.adapter = nn.Linear(2, 2)
                self.pose = pe.PoseBackbone(pose_model, input_size=64)

        parent = Parent()
        parent.train()
        assert parent.adapter.training and not parent.pose.training and not parent.pose.net.training
        assert all(not m.training for m in parent.pose.net.modules())
        parent.pose.train()
        assert not parent.pose.training and not parent.pose.net.training
        bn = parent.pose.net.conv1.bn
        before = bn.running_mean.clone()
        parent.pose(torch.rand(2, 3, 64, 64))
        assert torch.equal(bn.running_mean, before)  # BatchNorm statistics are never updated

        state = parent.state_dict()
        assert set(state) == {"adapter.weight", "adapter.bias"}
        parent.load_state_dict(state, strict=True)
        assert [name for name, _ in parent.named_parameters()] == ["adapter.weight", "adapter.bias"]

    def test_device_and_dtype_moves_reach_the_hidden_network(self, pose_model):
        backbone = pe.PoseBackbone(pose_model, input_size=64)
        holder = nn.Sequential(backbone).double()
        try:
            assert backbone.mean.dtype == torch.float64
            assert all(p.dtype == torch.float64 for p in backbone.net.parameters())
            (feature,) = backbone(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
            assert feature.dtype == torch.float64
        finally:
            holder.float()  # the module-scoped model is shared with other tests
        assert all(p.dtype == torch.float32 for p in pose_model.parameters())

    def test_bad_feature_index_is_a_clear_error(self, pose_model):
        backbone = pe.PoseBackbone(pose_model, feature_indices=(3,), input_size=64)
        with pytest.raises(IndexError, match="returns 1 feature map"):
            backbone(torch.zeros(1, 3, 64, 64))


# --------------------------------------------------------------------------------- BottomUpPoseEstimator
@pytest.mark.mmpose
@requires_mmpose
class TestBottomUpPoseEstimator:
    @staticmethod
    def _estimator(**kwargs):
        torch.manual_seed(0)
        estimator = pe.BottomUpPoseEstimator(_mobilenet_config(image_size=128, max_num_people=3), None, **kwargs)
        # random weights give heatmaps below the detection threshold; raise them so people come out
        with torch.no_grad():
            estimator.model.keypoint_head.final_layer.bias[:17] += 0.3
        return estimator

    def test_predict_structure(self):
        estimator = self._estimator()
        rng = np.random.RandomState(0)
        images = [rng.randint(0, 256, (96, 80, 3), dtype=np.uint8), rng.randint(0, 256, (64, 64, 3), dtype=np.uint8)]
        results = estimator.predict(images)
        assert isinstance(results, list) and len(results) == 2
        assert all(1 <= len(people) <= 3 for people in results)
        for people in results:
            for keypoints, score in people:
                assert keypoints.shape == (17, 3) and keypoints.dtype == np.float32
                assert isinstance(score, float) and np.isfinite(score) and np.isfinite(keypoints).all()
        assert estimator.predict([]) == []
        with pytest.raises(ValueError, match="uint8"):
            estimator.predict([np.zeros((64, 64, 3), dtype=np.float32)])

    def test_network_sees_rgb_and_swap_reproduces_the_release(self):
        rgb = (200, 50, 10)
        image = np.empty((64, 64, 3), dtype=np.uint8)
        image[:] = rgb
        seen = {}
        for swap in (False, True):
            estimator = self._estimator(flip_test=False, swap_rgb_bgr=swap)
            calls = []
            estimator.model.backbone.register_forward_pre_hook(lambda module, args: calls.append(args[0].clone()))
            estimator.predict([image])
            assert len(calls) == 1
            x = calls[0]
            centre = x[0, :, x.shape[2] // 2, x.shape[3] // 2]
            seen[swap] = (centre * IMAGENET_STD.flatten() + IMAGENET_MEAN.flatten()) * 255
        torch.testing.assert_close(seen[False], torch.tensor(rgb, dtype=torch.float32), atol=0.05, rtol=0)
        torch.testing.assert_close(seen[True], torch.tensor(rgb[::-1], dtype=torch.float32), atol=0.05, rtol=0)

    def test_flip_test_switch(self):
        image = np.random.RandomState(1).randint(0, 256, (64, 64, 3), dtype=np.uint8)
        for flip, expected_calls in ((True, 2), (False, 1)):
            estimator = self._estimator(flip_test=flip)
            calls = []
            estimator.model.backbone.register_forward_hook(lambda module, args, out: calls.append(1))
            estimator.predict([image])
            assert len(calls) == expected_calls
