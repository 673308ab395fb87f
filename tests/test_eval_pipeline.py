"""eval_pose.py on the tiny model and the synthetic dataset: generation with resume, batch-independent seeds,
score-only on a folder, metric wiring against direct calls of the metric modules, and the report."""

import importlib.util
import json
import math
import shutil

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import eval_pose
from grpose.config import load_config
from grpose.errors import ConfigError
from grpose.data.synthetic import SyntheticPoseDataset
from grpose.eval.clip_score import clip_score
from grpose.eval.generate import PipelineGenerator, sample_seed
from grpose.eval.run_layout import RunLayout, image_filename, read_manifest
from grpose.eval.settings import resolve_eval_settings
from grpose.eval.quality import fid_kid
from grpose.eval.report import TABLE1_COLUMNS, render_markdown, score_run, table1_row
from grpose.lit_module import GRPoseLitModule
from grpose.pipeline import images_to_uint8
from tests.conftest import TINY_OVERRIDES

HAVE_MMPOSE = importlib.util.find_spec("mmpose") is not None
requires_mmpose = pytest.mark.skipif(not HAVE_MMPOSE,
                                     reason="mmpose 0.x is not installed (run `bash scripts/install_mmpose.sh`)")
MOBILENET = "associative_embedding/coco/mobilenetv2_coco_512x512.py"
NUM_SAMPLES = 6
# The synthetic evaluation split (seed 1) is what PoseDataModule builds for data.dataset=synthetic.
# guidance 1 (no classifier-free guidance) halves the sampling cost; the pipeline's CFG has its own tests.
# eval.drop_last=false: these tests score all 6 samples under both protocols (test_paper_protocol_drops_the_last_partial_batch
# covers the release's drop_last).
OVERRIDES = TINY_OVERRIDES + [f"data.synthetic_val_size={NUM_SAMPLES}", "sampling.guidance_scale=1.0",
                              "eval.drop_last=false"]


def dataset():
    return SyntheticPoseDataset(NUM_SAMPLES, resolution=64, seed=1, skeleton_width=3)


class TinyFeature(nn.Module):
    """Stands in for Inception: uint8 [B, 3, S, S] -> 12 pooled colour features."""

    def forward(self, images):
        return nn.functional.adaptive_avg_pool2d(images.float() / 255, 2).flatten(1)


class GroundTruthEstimator:
    """A perfect pose estimator for images whose bytes it was shown: returns their conditioning poses."""

    def __init__(self, images, poses):
        self.lookup = {np.asarray(im).tobytes(): p for im, p in zip(images, poses)}

    def predict(self, images):
        return [[(person, 1.0) for person in self.lookup[np.asarray(im).tobytes()]] for im in images]


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A Lightning checkpoint of a tiny model with a perturbed adapter (zero convs included): it changes the image."""
    folder = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    module = GRPoseLitModule.from_config(load_config(None, OVERRIDES))
    with torch.no_grad():
        for p in module.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(folder / "tiny.ckpt")
    # The random "frozen SD1.5" is saved too, so every run below loads the same base (model.pretrained).
    for part in ("unet", "vae", "text_encoder"):
        getattr(module, part).save_pretrained(folder / "sd" / part)
    (folder / "tiny.yaml").write_text("name: tiny_eval\n")
    return folder, module.eval()


def run(folder, out, *args):
    return eval_pose.main(["--config", str(folder / "tiny.yaml"), *OVERRIDES, f"model.pretrained={folder / 'sd'}",
                           f"eval.output_dir={out}", *args], quality_feature=TinyFeature())


def png(path):
    return np.asarray(Image.open(path).convert("RGB"))


def _mobilenet_at_128(folder):
    """MMPose's MobileNetV2 bottom-up config at a 128 px input (fast on a CPU), randomly initialised."""
    from grpose.eval.pose_estimator import resolve_mmpose_config

    path = folder / "mobilenet_128.py"
    path.write_text(f"_base_ = [{resolve_mmpose_config(MOBILENET)!r}]\ndata_cfg = dict(image_size=128)\n"
                    f"model = dict(test_cfg=dict(max_num_people=5))\n")
    return path


@pytest.fixture(scope="module")
def resumed_run(tiny_checkpoint, tiny_clip, tmp_path_factory):
    """An interrupted run (first 3 samples, batch 1, no metrics) resumed over all 6 samples (batch 3) with scoring:
    pose (when mmpose is installed: random MobileNetV2, no checkpoint), FID/KID (tiny features) and CLIP-Score."""
    folder, _ = tiny_checkpoint
    out = tmp_path_factory.mktemp("outputs")
    layout = RunLayout(out / "tiny_eval")
    generated = []  # the seed of every image the model generates (one per sample id)
    original = PipelineGenerator.sample

    def counting_sample(self, prompts, pose_images, seeds, **kwargs):
        generated.extend(seeds)
        return original(self, prompts, pose_images, seeds, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(PipelineGenerator, "sample", counting_sample)
        ckpt = ["--ckpt", str(folder / "tiny.ckpt")]
        run(folder, out, *ckpt, "--limit", "3", "--metrics", "none", "eval.batch_size=1")
        seeds_first = list(generated)
        mtimes = {p: p.stat().st_mtime_ns for p in layout.images_dir.glob("*/*.png")}
        scoring = [f"eval.clip_model={tiny_clip}"]
        if HAVE_MMPOSE:
            torch.manual_seed(0)
            scoring += [f"eval.pose_estimator_config={_mobilenet_at_128(folder)}",
                        "eval.pose_estimator_checkpoint=null"]
        else:
            scoring += ["--metrics", "quality,clip"]
        report = run(folder, out, *ckpt, "eval.batch_size=3", *scoring)
    return {"layout": layout, "seeds_first": seeds_first, "seeds": generated, "mtimes": mtimes, "report": report,
            "folder": folder}


def test_seeds_and_file_names_depend_on_the_id_only():
    assert sample_seed(42, "a") == sample_seed(42, "a") and 0 <= sample_seed(42, "a") < 2**63
    assert len({sample_seed(42, "a"), sample_seed(42, "b"), sample_seed(43, "a")}) == 3
    assert image_filename("cartoon_000123") == "cartoon_000123.png"
    unsafe = {image_filename("a/b"), image_filename("a_b"), image_filename("a b"), image_filename("../a")}
    assert len(unsafe) == 4 and all("/" not in name and not name.startswith(".") for name in unsafe)


def test_resume_generates_each_image_once_and_records_it(resumed_run):
    layout, data = resumed_run["layout"], dataset()
    ids = [data[i]["id"] for i in range(NUM_SAMPLES)]
    want_seeds = [sample_seed(42, i) for i in ids]
    assert resumed_run["seeds_first"] == want_seeds[:3]
    assert resumed_run["seeds"] == want_seeds  # after the resume: the three missing ones only, nothing twice
    assert len(resumed_run["mtimes"]) == 3
    assert all(p.stat().st_mtime_ns == t for p, t in resumed_run["mtimes"].items())  # never rewritten
    assert sorted(p.name for p in layout.images_dir.glob("*/*.png")) == sorted(f"{i}.png" for i in ids)

    records = read_manifest(layout.manifest)
    assert [r["id"] for r in records] == ids and [r["seed"] for r in records] == want_seeds
    for i, r in enumerate(records):
        sample = data[i]
        assert r["prompt"] == sample["prompt"] and r["scenario"] == sample["scenario"]
        assert r["image"] == f"images/{sample['scenario']}/{sample['id']}.png"
        assert (r["sampler"], r["steps"], r["guidance"]) == ("DDIMScheduler", 2, 1.0)
        assert r["negative_prompt"].startswith("longbody")
        np.testing.assert_allclose(np.asarray(r["keypoints"]).reshape(-1, 17, 3),
                                   sample["keypoints"][: sample["num_persons"]].numpy())
        assert (png(layout.resolve(r["real_image"])) == images_to_uint8(sample["image"][None])[0].numpy()).all()


def test_pngs_are_the_checkpoint_samples_and_do_not_depend_on_batch_size(resumed_run, tiny_checkpoint):
    """The first three PNGs were generated one per batch; sampling them as one batch of 3 with the checkpointed
    model and their seeds gives the same pixels (up to float rounding of batched kernels: a grey level, rarely)."""
    layout, (folder, module), data = resumed_run["layout"], tiny_checkpoint, dataset()
    samples = [data[i] for i in range(3)]
    seeds = [sample_seed(42, s["id"]) for s in samples]
    batch3 = images_to_uint8(module.sample([s["prompt"] for s in samples],
                                           torch.stack([s["hint"] for s in samples]), seeds)).numpy().astype(int)
    stored = [png(layout.image_path(s["scenario"], s["id"])).astype(int) for s in samples]
    for one, three in zip(stored, batch3):
        diff = np.abs(one - three)
        assert one.shape == (64, 64, 3) and diff.max() <= 1 and (diff > 0).mean() < 0.01
    assert np.abs(stored[0] - stored[1]).mean() > 5  # different seeds and poses: really different images
    # Without the checkpoint's adapter weights the same seed gives another image: the checkpoint was loaded.
    fresh = GRPoseLitModule.from_config(load_config(None, [*OVERRIDES, f"model.pretrained={folder / 'sd'}"])).eval()
    other = images_to_uint8(fresh.sample([samples[0]["prompt"]], samples[0]["hint"][None], seeds[:1]))[0].numpy()
    assert np.abs(stored[0] - other).mean() > 2


def test_resuming_with_other_sampling_settings_is_refused(resumed_run):
    folder, out = resumed_run["folder"], resumed_run["layout"].run_dir.parent
    with pytest.raises(ConfigError, match=r"other settings \(guidance: 1.0 -> 5.0\)"):
        run(folder, out, "--ckpt", str(folder / "tiny.ckpt"), "--metrics", "none", "sampling.guidance_scale=5.0")


def test_report_and_quality_and_clip_match_the_metric_modules(resumed_run, tiny_clip):
    layout, report = resumed_run["layout"], resumed_run["report"]
    saved = json.loads(layout.metrics_json.read_text())
    assert saved["table1"] == report["table1"] and saved["protocol"] == "paper"
    assert saved["num_images"] == NUM_SAMPLES
    assert saved["scenario_counts"] == {"beach": 2, "night_street": 1, "park": 2, "studio": 1}
    assert saved["config"]["name"] == "tiny_eval" and saved["generation"]["steps"] == 2

    # FID/KID and CLIP-Score are what the metric modules give on the run's files, per scenario and in order.
    records = read_manifest(layout.manifest)
    groups = {s: [r for r in records if r["scenario"] == s] for s in ("beach", "park")}
    want = fid_kid({s: ([layout.resolve(r["real_image"]) for r in rs], [layout.resolve(r["image"]) for r in rs])
                    for s, rs in groups.items()}, protocol="paper", feature=TinyFeature(), progress=False)
    assert saved["quality"]["skipped_scenarios"] == ["night_street", "studio"]  # fewer than 2 images
    assert saved["table1"]["FID"] == pytest.approx(want["FID"]) and saved["table1"]["KID"] is None  # subset 200
    assert saved["quality"]["scenarios"]["park"]["FID"] == pytest.approx(want["scenarios"]["park"]["FID"])
    clip = clip_score([layout.resolve(r["image"]) for r in records], [r["prompt"] for r in records], tiny_clip,
                      batch_size=4, protocol="paper", progress=False)
    assert saved["table1"]["CLIP-Score"] == pytest.approx(clip) and clip > 0

    markdown = layout.metrics_md.read_text()
    assert "| Method | AP | SAP | PCE | FID | KID | CLIP-Score |" in markdown
    row = next(line for line in markdown.splitlines() if line.startswith("| tiny_eval |"))
    assert row.count("|") == 8 and f"{saved['table1']['FID']:.2f}" in row and "n/a" in row  # KID undefined
    assert "| park | 2 |" in markdown and "night_street, studio" in markdown


def test_score_only_rescores_a_run_from_its_manifest(resumed_run, tmp_path):
    run_dir = tmp_path / "tiny_eval"
    shutil.copytree(resumed_run["layout"].run_dir, run_dir)
    manifest = (run_dir / "manifest.jsonl").read_text()
    real_mtimes = {p: p.stat().st_mtime_ns for p in (run_dir / "real").glob("*/*.png")}
    report = run(resumed_run["folder"], tmp_path, "--score-only", "--protocol", "standard", "--metrics", "quality")
    assert report["protocol"] == "standard" and set(report["table1"]) == {"FID", "KID"}
    assert report["generation"]["steps"] == 2 and report["num_images"] == NUM_SAMPLES
    # paper protocol's channel swap and byte-cast change the numbers even with the same feature network
    assert report["table1"]["FID"] != pytest.approx(resumed_run["report"]["table1"]["FID"])
    assert (run_dir / "manifest.jsonl").read_text() == manifest
    assert all(p.stat().st_mtime_ns == t for p, t in real_mtimes.items())


@pytest.mark.mmpose
@requires_mmpose
def test_pose_scoring_with_an_mmpose_estimator(resumed_run):
    """Pose metrics of the resumed run came from a real MMPose bottom-up model (random weights) on its PNGs."""
    saved = json.loads(resumed_run["layout"].metrics_json.read_text())
    pose = saved["pose"]
    assert pose["num_images"] == NUM_SAMPLES and pose["PCE"] >= 0 and set(pose["scenarios"]) == {"beach", "park"}
    assert saved["table1"]["PCE"] == pose["PCE"] and set(saved["table1"]) == set(TABLE1_COLUMNS)
    assert saved["table1"]["AP"] is None or 0 <= saved["table1"]["AP"] <= 100
    assert saved["eval"]["pose_estimator_checkpoint"] is None


def test_score_only_on_a_folder_of_images(tiny_clip, tmp_path):
    """The dataset's own crops as "generated" images: FID ~ 0 against themselves, and a perfect estimator gives
    AP = SAP = 1 and PCE = 0, which holds only if every image is paired with its own conditioning pose."""
    data = dataset()
    images = tmp_path / "other_method"
    crops, poses = [], []
    for i in range(NUM_SAMPLES):
        sample = data[i]
        crop = images_to_uint8(sample["image"][None])[0].numpy()
        (images / sample["scenario"]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop).save(images / sample["scenario"] / image_filename(sample["id"]))
        crops.append(crop)
        poses.append(sample["keypoints"][: sample["num_persons"]].numpy())
    (tmp_path / "cfg.yaml").write_text("name: unused\n")

    report = eval_pose.main(["--config", str(tmp_path / "cfg.yaml"), "--score-only", "--images", str(images),
                             "--metrics", "quality,clip", "--protocol", "standard", *OVERRIDES,
                             f"eval.output_dir={tmp_path / 'out'}", f"eval.clip_model={tiny_clip}"],
                            quality_feature=TinyFeature())
    layout = RunLayout(tmp_path / "out" / "other_method")
    records = read_manifest(layout.manifest)
    assert [r["id"] for r in records] == [data[i]["id"] for i in range(NUM_SAMPLES)]
    assert "seed" not in records[0] and report["generation"] is None
    assert report["table1"]["FID"] == pytest.approx(0.0, abs=1e-3)
    assert report["table1"]["CLIP-Score"] == pytest.approx(
        clip_score(crops, [r["prompt"] for r in records], tiny_clip, protocol="standard", progress=False))

    eval_cfg = resolve_eval_settings(load_config(None, [*OVERRIDES, "eval.metrics=[pose]", "eval.protocol=standard",
                                                   "eval.min_scenario_images=1"]))
    pose = score_run(records, layout, eval_cfg, image_size=64, pose_estimator=GroundTruthEstimator(crops, poses),
                     progress=False)["pose"]
    assert (pose["AP"], pose["SAP"], pose["PCE"]) == (pytest.approx(1.0), pytest.approx(1.0), 0.0)
    assert set(pose["scenarios"]) == {"beach", "night_street", "park", "studio"}

    Image.fromarray(crops[0]).save(images / "park" / "not_in_the_dataset.png")
    with pytest.raises(ValueError, match=r"1 image\(s\) match no test sample.*not_in_the_dataset\.png"):
        eval_pose.main(["--config", str(tmp_path / "cfg.yaml"), "--score-only", "--images", str(images),
                        "--metrics", "none", *OVERRIDES, f"eval.output_dir={tmp_path / 'out'}"])
    (images / "park" / "not_in_the_dataset.png").unlink()
    first = records[0]
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(images / first["scenario"] / image_filename(first["id"]))
    with pytest.raises(ValueError, match=r"is 32x32 but the dataset's poses are in 64x64 pixels"):
        eval_pose.main(["--config", str(tmp_path / "cfg.yaml"), "--score-only", "--images", str(images),
                        "--metrics", "none", *OVERRIDES, f"eval.output_dir={tmp_path / 'out'}"])


def test_missing_weights_stop_before_generation(tiny_checkpoint, tmp_path):
    folder, _ = tiny_checkpoint
    base = ["--ckpt", str(folder / "tiny.ckpt")]
    with pytest.raises(FileNotFoundError, match="hf download openai/clip-vit-base-patch16"):
        run(folder, tmp_path, *base, "--metrics", "clip", f"eval.clip_model={tmp_path / 'no_clip'}")
    with pytest.raises(FileNotFoundError, match="weights-inception-2015-12-05"):
        eval_pose.main(["--config", str(folder / "tiny.yaml"), *base, "--metrics", "quality", *OVERRIDES,
                        f"eval.output_dir={tmp_path}", f"eval.inception_weights={tmp_path / 'none.pth'}"])
    if HAVE_MMPOSE:
        with pytest.raises(FileNotFoundError, match="higherhrnet_w48_humanart_512x512_udp.pth"):
            run(folder, tmp_path, *base, "--metrics", "pose", f"eval.pose_estimator_checkpoint={tmp_path / 'x.pth'}")
    assert not (tmp_path / "tiny_eval").exists()  # nothing generated
    with pytest.raises(ConfigError, match="unknown config key 'eval.protocl'"):
        run(folder, tmp_path, *base, "eval.protocl=paper")


def test_table1_row_and_markdown():
    results = {"pose": {"AP": 0.478, "SAP": 0.7012, "PCE": 1.25, "scenarios": {"dance": {"AP": math.nan, "PCE": 2}}},
               "quality": {"FID": 11.204, "KID": None, "scenarios": {"dance": {"FID": 11.204, "KID": None}}}}
    row = table1_row(results)
    assert row == {"AP": pytest.approx(47.8), "SAP": pytest.approx(70.12), "PCE": 1.25, "FID": 11.204, "KID": None}
    report = {"run": "grpose", "protocol": "paper", "num_images": 3, "scenario_counts": {"dance": 2, "mural": 1},
              "kid_scale": 100.0, "table1": row, "eval": {"min_scenario_images": 2}, **results}
    markdown = render_markdown(report)
    assert "| grpose | 47.80 | 70.12 | 1.25 | 11.20 | n/a | – |" in markdown
    assert "| dance | 2 | n/a | 2.00 | 11.20 | n/a |" in markdown and "(fewer than 2 images): mural." in markdown


def test_paper_protocol_drops_the_last_partial_batch(tiny_checkpoint, tmp_path):
    """The release's test loader has drop_last=True: of 6 samples in batches of 4, the last 2 are never generated
    nor scored. `paper` does the same, `standard` keeps them, and the switch overrides either."""
    folder, _ = tiny_checkpoint
    ckpt = ["--ckpt", str(folder / "tiny.ckpt"), "--metrics", "none"]
    counts = {}
    for run_name, extra in (("paper", ["--protocol", "paper", "eval.drop_last=null"]),
                            ("standard", ["--protocol", "standard", "eval.drop_last=null"]),
                            ("standard_dropping", ["--protocol", "standard", "eval.drop_last=true"])):
        run(folder, tmp_path, *ckpt, *extra, f"--run={run_name}")
        counts[run_name] = len(read_manifest(RunLayout(tmp_path / run_name).manifest))
    assert counts == {"paper": 4, "standard": 6, "standard_dropping": 4}


@pytest.mark.mmpose
@requires_mmpose
def test_vitpose_topdown_scores_the_tiny_run(resumed_run, tmp_path):
    """The second pose evaluator (SP-Ctrl's top-down ViTPose, here a tiny random ViT) on the tiny model's images:
    refused on the run scored by HigherHRNet's protocol, accepted on a copy without those scores, and recorded."""
    import mmcv

    from grpose.eval.vitpose import vitpose_config

    config = tmp_path / "tiny_vitpose.py"
    mmcv.Config(vitpose_config("vitpose_huge", image_size=(48, 64), embed_dim=64, depth=2, num_heads=4)).dump(
        str(config))
    run_dir = tmp_path / "tiny_eval"
    shutil.copytree(resumed_run["layout"].run_dir, run_dir)
    args = ["--score-only", "--metrics", "pose", "eval.pose_evaluator=vitpose_topdown",
            f"eval.vitpose_config={config}", "eval.vitpose_checkpoint=null", "eval.bootstrap_resamples=50"]
    with pytest.raises(ConfigError, match="scored by the higherhrnet_bottomup evaluator"):
        run(resumed_run["folder"], tmp_path, *args)
    (run_dir / "metrics.json").unlink()
    (run_dir / "detections.json").unlink()
    torch.manual_seed(0)
    report = run(resumed_run["folder"], tmp_path, *args)
    assert report["pose_evaluator"] == "vitpose_topdown" and report["pose"]["num_images"] == NUM_SAMPLES
    # top-down on GT boxes: at most one person per conditioning person, so PCE counts only misses
    assert report["pose"]["PCE"] >= 0 and report["intervals"]["table1"]["PCE"] is not None
    assert "pose evaluator `vitpose_topdown`" in (run_dir / "metrics.md").read_text()
    assert json.loads((run_dir / "detections.json").read_text())["pose_evaluator"] == "vitpose_topdown"
    assert (run_dir / "alignment" / "index.html").is_file()
