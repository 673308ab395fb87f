"""Inference front end: pose inputs of every format, seeded sampling, scheduler and base-UNet swaps, pose2img.py.

Everything runs on the tiny SD1.5-shaped model at 64 x 64 with 2 sampling steps.
"""

import importlib.util
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.data.humanart import HumanSDPoseDataset, save_pose_npz
from grpose.data.skeleton import overlay_pose, render_skeleton, tensor_to_uint8
from grpose.models.adapter import GraphPoseAdapter, encoder_config
from grpose.errors import MissingFileError
from grpose.pipeline import GRPosePipeline, images_to_uint8
from grpose.pose_inputs import (
    PoseInputError,
    center_crop_keypoints,
    keypoints_to_pose,
    load_pose,
    skeleton_width_for,
)
from grpose.sd15 import build_sd15, make_scheduler

REPO = Path(__file__).resolve().parents[1]
RES = 64
WIDTH = 3
STEPS = 2
TINY_ADAPTER = dict(pose_stem_channels=[8, 16, 16], pose_level_channels=[16, 16, 32, 32], knn_k=4)
SOURCE_SIZE = (96, 128)  # (width, height) of the image the test keypoints were annotated on


def person(cx, cy, scale, score=0.9):
    """A standing COCO-17 figure centred at (cx, cy) in source pixels."""
    offsets = [(0, -3), (-0.3, -3.3), (0.3, -3.3), (-0.6, -3.1), (0.6, -3.1), (-1, -2), (1, -2), (-1.4, -0.8),
               (1.4, -0.8), (-1.6, 0.3), (1.6, 0.3), (-0.6, 0.5), (0.6, 0.5), (-0.7, 2), (0.7, 2), (-0.8, 3.4),
               (0.8, 3.4)]
    return np.array([[cx + dx * scale, cy + dy * scale, score] for dx, dy in offsets])


KEYPOINTS = np.stack([person(40, 62, 10), person(70, 70, 7, score=0.8)])
KEYPOINTS[0, 9, 2] = 0.0  # an unlabelled wrist: never drawn
KEYPOINTS[1, 16] = (200.0, 300.0, 0.9)  # outside the source image: dropped by the crop


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The tiny model's ops are so small that a second intra-op thread only adds synchronisation: measured 4-6x
    # slower sampling with 2 threads on a busy 2-core machine.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tokenizer_cache(tmp_path_factory):
    # Keep the tokenizer files out of the user's home directory (module-scoped fixtures build the tokenizer).
    with pytest.MonkeyPatch.context() as mp:
        path = tmp_path_factory.getbasetemp() / "grpose_cache"
        mp.setenv("GRPOSE_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def tiny(tokenizer_cache):
    """Tiny random SD1.5 parts and a GraphPoseAdapter whose zero convs are perturbed, so the pose matters.

    The pose encoder's output convs get a large scale: with random weights its features barely depend on the pose.
    """
    torch.manual_seed(0)
    parts = build_sd15("tiny")
    adapter = GraphPoseAdapter.from_unet(parts.unet, **TINY_ADAPTER)
    with torch.no_grad():
        for name, p in adapter.named_parameters():
            if name.startswith("pose_encoder.") and p.dim() == 4:
                torch.nn.init.kaiming_normal_(p, nonlinearity="relu")  # PyTorch's default init fades with depth
            elif not p.any():
                p.normal_(0, 0.05)
    adapter.requires_grad_(False).eval()
    return parts, adapter


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """The tiny parts as a diffusers SD1.5 folder and the adapter as a save_pretrained folder."""
    parts, adapter = tiny
    root = tmp_path_factory.mktemp("weights")
    for name in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(parts, name).save_pretrained(root / "sd" / name)
    adapter.save_pretrained(root / "adapter")
    return root / "sd", root / "adapter"


@pytest.fixture(scope="module")
def pipe(tiny):
    parts, adapter = tiny
    return GRPosePipeline(parts, adapter)


def poses(count):
    """`count` distinct 64 x 64 pose conditions."""
    return torch.stack([keypoints_to_pose(person(20 + 8 * i, 32, 4 + i), RES, skeleton_width=WIDTH).image
                        for i in range(count)])


def sample(pipe, prompts, pose_images, seeds, **kwargs):
    return pipe(prompts, pose_images, seeds, num_inference_steps=STEPS, progress=False, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# Seeds and batches
# ----------------------------------------------------------------------------------------------------------------


def test_same_seed_same_image_and_batch_of_four_equals_four_single_runs(pipe):
    prompts = ["a dancer", "a man walking", "two people", "a child"]
    pose_images = poses(4)
    seeds = [11, 12, 13, 14]
    batch = sample(pipe, prompts, pose_images, seeds)
    assert batch.shape == (4, 3, RES, RES) and batch.abs().max() <= 1
    singles = [sample(pipe, [prompts[i]], pose_images[i: i + 1], [seeds[i]]) for i in range(4)]
    assert torch.equal(sample(pipe, prompts[:1], pose_images[:1], seeds[:1]), singles[0])
    # Batched and single convolutions round differently; a different noise would differ by ~1.
    torch.testing.assert_close(torch.cat(singles), batch, atol=1e-3, rtol=0)
    # Seed, pose (here: no person at all) and prompt all reach the image: change one at a time.
    no_person = -torch.ones_like(pose_images[:1])
    changed = sample(pipe, [prompts[0], prompts[0], "a cat"], torch.cat([pose_images[:1], no_person,
                                                                        pose_images[:1]]), [99, seeds[0], seeds[0]])
    assert all((image - batch[0]).abs().max() > 0.02 for image in changed)


def test_scheduler_swap_runs_and_stochastic_sampler_noise_follows_each_images_seed(tiny, pipe):
    parts, adapter = tiny
    pose_images = poses(2)
    dpm = GRPosePipeline(parts, adapter, make_scheduler("DPMSolverMultistepScheduler"))
    out = sample(dpm, ["a", "b"], pose_images, [5, 6])
    assert out.shape == (2, 3, RES, RES) and torch.isfinite(out).all()
    assert (out - sample(pipe, ["a", "b"], pose_images, [5, 6])).abs().max() > 0.05
    with pytest.raises(ValueError, match="eta"):
        sample(dpm, ["a"], pose_images[:1], [5], eta=0.5)
    # An ancestral sampler adds fresh noise at every step; it must come from each image's own generator.
    euler = GRPosePipeline(parts, adapter, make_scheduler("EulerAncestralDiscreteScheduler"))
    batch = sample(euler, ["a", "b"], pose_images, [1, 2], guidance_scale=1.0)
    singles = torch.cat([sample(euler, [p], pose_images[i: i + 1], [i + 1], guidance_scale=1.0)
                         for i, p in enumerate("ab")])
    torch.testing.assert_close(singles, batch, atol=1e-2, rtol=0)


def test_pose_size_must_fit_the_unet(pipe):
    with pytest.raises(ValueError, match="multiples of 64"):
        sample(pipe, ["a"], torch.zeros(1, 3, 48, 48), [0])


# ----------------------------------------------------------------------------------------------------------------
# Pose inputs
# ----------------------------------------------------------------------------------------------------------------


def write_coco(path, keypoints, other_keypoints):
    images = [{"id": 7, "file_name": "train/person7.jpg", "width": SOURCE_SIZE[0], "height": SOURCE_SIZE[1]},
              {"id": 8, "file_name": "train/person8.jpg", "width": 50, "height": 50}]
    annotations = [{"id": i, "image_id": 7, "category_id": 1, "keypoints": kp.reshape(-1).tolist()}
                   for i, kp in enumerate(keypoints)]
    annotations.append({"id": 99, "image_id": 8, "category_id": 1, "keypoints": other_keypoints.reshape(-1).tolist()})
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": [{"id": 1}]}))


def test_every_pose_format_renders_the_same_skeleton(tmp_path):
    expected = keypoints_to_pose(KEYPOINTS, RES, image_size=SOURCE_SIZE, skeleton_width=WIDTH)
    # Independent check of the datasets' geometry: short side 96 -> 64, so 128 -> 85 and a centre crop 10 px down.
    kp = KEYPOINTS[0, 0]
    np.testing.assert_allclose(expected.keypoints[0, 0], [kp[0] * 64 / 96, kp[1] * 85 / 128 - 10, kp[2]], atol=1e-4)
    assert expected.keypoints.shape == (2, 17, 3)
    assert tuple(expected.keypoints[0, 9]) == (-1, -1, 0) and tuple(expected.keypoints[1, 16]) == (-1, -1, 0)
    assert (tensor_to_uint8(expected.image) > 0).any()

    save_pose_npz(tmp_path / "pose.npz", KEYPOINTS)
    np.save(tmp_path / "pose.npy", KEYPOINTS)
    write_coco(tmp_path / "coco.json", KEYPOINTS, person(25, 25, 3))
    (tmp_path / "persons.json").write_text(json.dumps([{"keypoints": kp.reshape(-1).tolist()} for kp in KEYPOINTS]))
    (tmp_path / "bare.json").write_text(json.dumps([kp.tolist() for kp in KEYPOINTS]))
    Image.fromarray(expected.to_uint8()).save(tmp_path / "skeleton.png")

    inputs = {
        "numpy": (KEYPOINTS, {}), "torch": (torch.from_numpy(KEYPOINTS), {}), "list": (KEYPOINTS.tolist(), {}),
        "npz": (tmp_path / "pose.npz", {}), "npy": (str(tmp_path / "pose.npy"), {}),
        "coco by id": (tmp_path / "coco.json", {"image_id": 7}),
        "coco by file name": (tmp_path / "coco.json", {"image_id": "person7.jpg"}),
        "persons json": (tmp_path / "persons.json", {}), "bare json": (tmp_path / "bare.json", {}),
    }
    for name, (pose, kwargs) in inputs.items():
        size = {} if name.startswith("coco") else {"image_size": SOURCE_SIZE}  # COCO files carry the size
        got = load_pose(pose, resolution=RES, skeleton_width=WIDTH, **size, **kwargs)
        assert torch.equal(got.image, expected.image), name
        np.testing.assert_allclose(got.keypoints, expected.keypoints, err_msg=name)

    png = load_pose(tmp_path / "skeleton.png", resolution=RES)
    assert png.keypoints is None and torch.equal(png.image, expected.image)
    assert load_pose(Image.open(tmp_path / "skeleton.png"), resolution=RES).image.equal(expected.image)
    assert load_pose(expected, resolution=RES) is expected
    # The other image of the COCO file is a different pose.
    other = load_pose(tmp_path / "coco.json", resolution=RES, image_id=8, skeleton_width=WIDTH)
    assert not torch.equal(other.image, expected.image)


def test_keypoints_follow_the_evaluation_datasets_crop(tmp_path):
    """Same npz + image size through the Human-Art dataset (eval crop) and through load_pose: same hint."""
    (tmp_path / "images").mkdir()
    Image.new("RGB", SOURCE_SIZE, (90, 90, 90)).save(tmp_path / "images" / "x.png")
    save_pose_npz(tmp_path / "pose" / "x.npz", KEYPOINTS)
    mapping = {"x": {"img_path": "images/x.png", "prompt": "a person", "pose_path": "pose/x.npz"}}
    (tmp_path / "map.json").write_text(json.dumps(mapping))
    dataset = HumanSDPoseDataset(tmp_path, "map.json", resolution=RES, train=False, skeleton_width=WIDTH)
    got = load_pose(tmp_path / "pose" / "x.npz", resolution=RES, image_size=SOURCE_SIZE, skeleton_width=WIDTH)
    sample = dataset[0]
    assert torch.equal(got.image, sample["hint"])
    np.testing.assert_allclose(got.keypoints, sample["keypoints"][: sample["num_persons"]].numpy(), atol=1e-5)


def test_rendered_skeleton_is_resized_with_nearest_and_centre_cropped(tmp_path):
    # A 64 x 128 (w x h) skeleton image with one coloured block; 64 px wide already, so only the crop moves it.
    canvas = np.zeros((128, 64, 3), np.uint8)
    canvas[40:48, 10:18] = (219, 94, 86)
    Image.fromarray(canvas).save(tmp_path / "tall.png")
    got = load_pose(tmp_path / "tall.png", resolution=RES).to_uint8()
    expected = canvas[32:96]
    np.testing.assert_array_equal(got, expected)
    # Twice the output size: nearest keeps exactly the palette colours (no blending).
    big = render_skeleton(KEYPOINTS * [2, 2, 1], 2 * RES, 2 * RES, 2 * WIDTH)
    Image.fromarray(big).save(tmp_path / "big.png")
    small = load_pose(tmp_path / "big.png", resolution=RES).to_uint8()
    assert small.shape == (RES, RES, 3)
    assert {tuple(c) for c in small.reshape(-1, 3)} <= {tuple(c) for c in big.reshape(-1, 3)}


def test_coco_visibility_and_missing_image_choice(tmp_path):
    kps = KEYPOINTS.copy()
    kps[..., 2] = 2  # COCO "visible"
    kps[0, 5, 2] = 0  # COCO "unlabelled"
    write_coco(tmp_path / "coco.json", kps, person(25, 25, 3))
    with pytest.raises(PoseInputError, match="image_id"):
        load_pose(tmp_path / "coco.json", resolution=RES)
    with pytest.raises(PoseInputError, match="no image with id"):
        load_pose(tmp_path / "coco.json", resolution=RES, image_id=123)
    got = load_pose(tmp_path / "coco.json", resolution=RES, image_id=7)
    assert tuple(got.keypoints[0, 5]) == (-1, -1, 0) and got.keypoints[0, 6, 2] == 2


def test_bad_pose_inputs_name_the_file_and_the_accepted_formats(tmp_path, caplog):
    (tmp_path / "pose.txt").write_text("1 2 3")
    (tmp_path / "broken.json").write_text("{not json")
    (tmp_path / "short.json").write_text(json.dumps([{"keypoints": [1, 2, 3]}]))
    (tmp_path / "broken.npz").write_bytes(b"not a zip file")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    for name in ("pose.txt", "broken.json", "short.json", "broken.npz", "broken.png"):
        with pytest.raises(PoseInputError) as err:
            load_pose(tmp_path / name, resolution=RES)
        assert name in str(err.value) and "accepted pose inputs" in str(err.value) and ".npz" in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.json"):
        load_pose(tmp_path / "missing.json", resolution=RES)
    with pytest.raises(PoseInputError, match=r"\[17, 3\]"):
        load_pose(np.zeros((2, 16, 3)), resolution=RES)
    with pytest.raises(PoseInputError, match="resolution=64"):
        load_pose(keypoints_to_pose(KEYPOINTS, 128), resolution=RES)
    with caplog.at_level(logging.WARNING, logger="grpose.pose_inputs"):
        load_pose(KEYPOINTS, resolution=RES)  # source-image pixels, no image_size: part of it falls off the canvas
    assert "outside the 64x64 canvas" in caplog.text and "image_size" in caplog.text


def test_skeleton_width_follows_the_reference_proportion():
    assert skeleton_width_for(512) == 10 and skeleton_width_for(1024) == 20 and skeleton_width_for(64) == 2
    kps = center_crop_keypoints(KEYPOINTS, SOURCE_SIZE, 512)
    thick = keypoints_to_pose(kps, 512)
    np.testing.assert_array_equal(thick.to_uint8(), render_skeleton(thick.keypoints, 512, 512, 10))


# ----------------------------------------------------------------------------------------------------------------
# from_pretrained, base UNet swap, generate()
# ----------------------------------------------------------------------------------------------------------------


def test_base_unet_swap_changes_the_output_and_equals_building_with_it(tiny, saved, tmp_path):
    parts, adapter = tiny
    sd_folder, _ = saved
    other_unet = build_sd15("tiny").unet  # the reproducible random base, then made different from `parts.unet`
    with torch.no_grad():
        torch.manual_seed(1)
        for p in other_unet.parameters():
            p.add_(0.05 * torch.randn_like(p))
    other_unet.save_pretrained(tmp_path / "other_unet")
    pose_images, seeds = poses(2), [3, 4]

    plain = GRPosePipeline.from_pretrained(sd_folder, adapter, arch="tiny", device="cpu")
    swapped = GRPosePipeline.from_pretrained(sd_folder, adapter, arch="tiny", base_unet=tmp_path / "other_unet",
                                             device="cpu")
    direct_parts = build_sd15("tiny", str(sd_folder))
    direct_parts.unet = other_unet
    direct = GRPosePipeline(direct_parts, adapter)

    out_plain = sample(plain, ["a", "b"], pose_images, seeds)
    out_swapped = sample(swapped, ["a", "b"], pose_images, seeds)
    torch.testing.assert_close(out_plain, sample(GRPosePipeline(parts, adapter), ["a", "b"], pose_images, seeds))
    assert (out_swapped - out_plain).abs().max() > 1e-3
    torch.testing.assert_close(out_swapped, sample(direct, ["a", "b"], pose_images, seeds))


def test_from_pretrained_loads_a_saved_adapter_and_casts(saved, tiny):
    sd_folder, adapter_folder = saved
    pipe = GRPosePipeline.from_pretrained(sd_folder, adapter_folder, arch="tiny", device="cpu", dtype="bf16")
    assert pipe.dtype == torch.bfloat16 and pipe.device.type == "cpu"
    # The precision policy: the frozen base in bf16, the adapter kept in float32 (autocast does the rest).
    assert all(p.dtype == torch.bfloat16 for p in pipe.parts.unet.parameters())
    assert all(p.dtype == torch.float32 and not p.requires_grad for p in pipe.adapter.parameters())
    assert not pipe.adapter.training
    _, adapter = tiny
    reference = adapter.state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in pipe.adapter.state_dict().items())


def test_from_pretrained_rejects_an_adapter_of_another_arch(saved):
    sd_folder, _ = saved
    config = encoder_config(build_sd15("tiny").unet.config)
    config["block_out_channels"] = [32, 32, 32, 64]
    wrong = GraphPoseAdapter(unet_config=config, **TINY_ADAPTER)
    with pytest.raises(ValueError, match="block_out_channels"):
        GRPosePipeline.from_pretrained(sd_folder, wrong, arch="tiny", device="cpu")


def test_generate_accepts_any_pose_input_and_is_batch_size_independent(pipe, tmp_path):
    save_pose_npz(tmp_path / "pose.npz", KEYPOINTS)
    kwargs = dict(num_inference_steps=STEPS, resolution=RES, skeleton_width=WIDTH, progress=False)
    images = pipe.generate("a person", [tmp_path / "pose.npz", KEYPOINTS], seeds=5, image_size=SOURCE_SIZE, **kwargs)
    assert len(images) == 2 and all(isinstance(im, Image.Image) and im.size == (RES, RES) for im in images)
    # Same pose twice (npz and array), seeds 5 and 6.
    one_by_one = pipe.generate(["a person"] * 2, KEYPOINTS, seeds=[5, 6], image_size=SOURCE_SIZE, batch_size=1,
                               **kwargs)
    for a, b in zip(images, one_by_one):
        assert np.abs(np.asarray(a, np.int16) - np.asarray(b, np.int16)).max() <= 1
    tensor = sample(pipe, ["a person"], load_pose(KEYPOINTS, RES, SOURCE_SIZE, skeleton_width=WIDTH).image[None], [5])
    assert np.abs(np.asarray(images[0], np.int16) - images_to_uint8(tensor)[0].numpy()).max() <= 1
    with pytest.raises(ValueError, match="3 seeds"):
        pipe.generate(["a", "b"], KEYPOINTS, seeds=[1, 2, 3], **kwargs)
    with pytest.raises(ValueError, match="multiple of 64"):
        pipe.generate("a", KEYPOINTS, resolution=96, progress=False)
    assert pipe.default_resolution == 128


# ----------------------------------------------------------------------------------------------------------------
# scripts/pose2img.py
# ----------------------------------------------------------------------------------------------------------------


def load_script():
    spec = importlib.util.spec_from_file_location("pose2img", REPO / "scripts" / "pose2img.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def common_args(saved):
    sd_folder, adapter_folder = saved
    return ["--sd15", str(sd_folder), "--adapter", str(adapter_folder), "--arch", "tiny", "--resolution", str(RES),
            "--steps", str(STEPS), "--skeleton-width", str(WIDTH), "--device", "cpu"]


def test_pose2img_single_pose_writes_images_pose_and_overlays(saved, pipe, tmp_path):
    write_coco(tmp_path / "coco.json", KEYPOINTS, person(25, 25, 3))
    out = tmp_path / "out"
    load_script().main([*common_args(saved), "--prompt", "a dancer", "--pose", str(tmp_path / "coco.json"),
                        "--image-id", "7", "--num-images", "2", "--seed", "10", "--out", str(out)])
    names = sorted(p.name for p in out.iterdir())
    assert names == ["coco_10.png", "coco_10_overlay.png", "coco_11.png", "coco_11_overlay.png", "coco_pose.png",
                     "manifest.jsonl"]
    pose = load_pose(tmp_path / "coco.json", RES, image_id=7, skeleton_width=WIDTH)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "coco_pose.png")), pose.to_uint8())
    expected = images_to_uint8(sample(pipe, ["a dancer"] * 2, torch.stack([pose.image] * 2), [10, 11])).numpy()
    for i, seed in enumerate((10, 11)):
        image = np.asarray(Image.open(out / f"coco_{seed}.png"))
        assert np.abs(image.astype(np.int16) - expected[i]).max() <= 1
        np.testing.assert_array_equal(np.asarray(Image.open(out / f"coco_{seed}_overlay.png")),
                                      overlay_pose(image, pose.to_uint8()))
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in records] == [10, 11] and records[0]["prompt"] == "a dancer"
    # A re-run with --skip-existing leaves the images alone and never loads the model.
    stamp = (out / "coco_10.png").stat().st_mtime_ns
    load_script().main([*common_args(saved)[:2], "--adapter", "/nonexistent", "--prompt", "a dancer", "--pose",
                        str(tmp_path / "coco.json"), "--image-id", "7", "--num-images", "2", "--seed", "10",
                        "--out", str(out), "--skip-existing"])
    assert (out / "coco_10.png").stat().st_mtime_ns == stamp


def test_pose2img_batch_mode_from_a_mapping_runs_as_a_script(saved, tmp_path):
    root = tmp_path / "data"
    mapping = {}
    for i, entry_id in enumerate(["img-a", "img-b", "img-c"]):
        (root / "images").mkdir(parents=True, exist_ok=True)
        Image.new("RGB", SOURCE_SIZE).save(root / "images" / f"{entry_id}.jpg")
        save_pose_npz(root / "pose" / f"{entry_id}.npz", KEYPOINTS + [4 * i, 0, 0])
        mapping[entry_id] = {"img_path": f"images/{entry_id}.jpg", "prompt": f"person {i}",
                             "pose_path": f"pose/{entry_id}.npz"}
    (root / "mapping.json").write_text(json.dumps(mapping))
    out = tmp_path / "out"
    env = {**os.environ, "GRPOSE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "scripts/pose2img.py", *common_args(saved), "--mapping", "mapping.json", "--root",
           str(root), "--seed", "100", "--limit", "2", "--batch-size", "2", "--out", str(out)]
    result = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "pose2img" in result.stderr  # the tqdm bar
    names = sorted(p.name for p in out.iterdir())
    assert names == ["img-a_100.png", "img-a_100_overlay.png", "img-a_pose.png", "img-b_101.png",
                     "img-b_101_overlay.png", "img-b_pose.png", "manifest.jsonl"]
    # Keypoints were read in the frame of the mapping's image (its header gives 96 x 128).
    pose = load_pose(root / "pose" / "img-b.npz", RES, image_size=SOURCE_SIZE, skeleton_width=WIDTH)
    np.testing.assert_array_equal(np.asarray(Image.open(out / "img-b_pose.png")), pose.to_uint8())
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["image"], r["prompt"], r["seed"]) for r in records] == [("img-a_100.png", "person 0", 100),
                                                                      ("img-b_101.png", "person 1", 101)]


def test_pose2img_batch_mode_names_a_missing_source_image(saved, tmp_path):
    root = tmp_path / "data"
    save_pose_npz(root / "pose" / "x.npz", KEYPOINTS)
    (root / "mapping.json").write_text(json.dumps(
        {"x": {"img_path": "images/x.jpg", "prompt": "a person", "pose_path": "pose/x.npz"}}))
    args = [*common_args(saved), "--mapping", "mapping.json", "--root", str(root), "--out", str(tmp_path / "out")]
    with pytest.raises(MissingFileError) as error:
        load_script().main(args)
    message = str(error.value)
    assert "x.jpg" in message and "--pose-size" in message and not (tmp_path / "out").exists()


def test_pose2img_argument_errors(saved, capsys):
    script = load_script()
    with pytest.raises(SystemExit):
        script.parse_args(common_args(saved) + ["--prompt", "a"])
    assert "--pose" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(common_args(saved) + ["--mapping", "m.json"])
    assert "--root" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        script.parse_args(common_args(saved) + ["--mapping", "m.json", "--root", ".", "--num-images", "2"])
    assert "one image per entry" in capsys.readouterr().err
