"""Two tiny scored runs (the synthetic split's crops scored as folders, with stub pose estimators): their intervals
in metrics.json / metrics.md, the comparison table of scripts/compare_runs.py, the refusal to mix evaluators, and
each run's HTML alignment report."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import eval_pose
from grpose.errors import ConfigError
from grpose.eval.alignment_report import image_oks, oks, read_detections
from grpose.eval.compare import CompareError, compare_runs, render_comparison, rows_from_reports
from grpose.eval.run_layout import image_filename
from grpose.pipeline import images_to_uint8
from tests.test_eval_pipeline import NUM_SAMPLES, OVERRIDES, TinyFeature, dataset

REPO = Path(__file__).resolve().parents[1]
FAST_BOOTSTRAP = ["eval.bootstrap_resamples=200", "eval.bootstrap_quality_resamples=20"]


class ShiftedEstimator:
    """Returns each image's conditioning poses moved by `shift` pixels (0: a perfect estimator)."""

    def __init__(self, images, poses, shift):
        self.lookup = {np.asarray(im).tobytes(): p for im, p in zip(images, poses)}
        self.shift = shift

    def predict(self, images):
        out = []
        for im in images:
            people = []
            for k, person in enumerate(self.lookup[np.asarray(im).tobytes()]):
                moved = person.copy()
                moved[:, :2] += self.shift * (k + 1)
                people.append((moved, 1.0))
            out.append(people)
        return out


@pytest.fixture(scope="module")
def two_runs(tiny_clip, tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    data = dataset()
    (root / "cfg.yaml").write_text("name: unused\n")
    reports = {}
    for name, shift, noise in (("perfect", 0.0, 0), ("shifted", 1.0, 40)):
        folder = root / "images" / name
        crops, poses = [], []
        rng = np.random.default_rng(len(name))
        for i in range(NUM_SAMPLES):
            sample = data[i]
            crop = images_to_uint8(sample["image"][None])[0].numpy()
            crop = np.clip(crop.astype(int) + rng.integers(-noise, noise + 1, crop.shape), 0, 255).astype(np.uint8)
            (folder / sample["scenario"]).mkdir(parents=True, exist_ok=True)
            Image.fromarray(crop).save(folder / sample["scenario"] / image_filename(sample["id"]))
            crops.append(crop)
            poses.append(sample["keypoints"][: sample["num_persons"]].numpy())
        reports[name] = eval_pose.main(
            ["--config", str(root / "cfg.yaml"), "--score-only", "--images", str(folder), "--protocol", "standard",
             *OVERRIDES, f"eval.output_dir={root / 'out'}", f"eval.clip_model={tiny_clip}",
             *FAST_BOOTSTRAP],
            quality_feature=TinyFeature(), pose_estimator=ShiftedEstimator(crops, poses, shift))
    return root / "out", reports


def test_metrics_files_hold_intervals(two_runs):
    out, reports = two_runs
    saved = json.loads((out / "shifted" / "metrics.json").read_text())
    assert saved["pose_evaluator"] == "higherhrnet_bottomup"
    table = saved["intervals"]["table1"]
    assert set(table) == {"AP", "SAP", "PCE", "FID", "KID", "CLIP-Score"}
    for column, value in saved["table1"].items():
        if value is not None and table[column] is not None:
            assert table[column]["low"] <= value <= table[column]["high"], column
    assert saved["intervals"]["settings"] == {"resamples": 200, "quality_resamples": 20, "seed": 0,
                                              "confidence": 0.95, "method": "percentile bootstrap"}
    assert set(saved["intervals"]["scenarios"]) == set(saved["pose"]["scenarios"])
    markdown = (out / "shifted" / "metrics.md").read_text()
    row = next(line for line in markdown.splitlines() if line.startswith("| shifted |"))
    assert row.count(" ± ") >= 4 and "half-width of the 95% percentile bootstrap interval" in markdown
    assert "pose evaluator `higherhrnet_bottomup`" in markdown
    # the perfect estimator: AP 100 and PCE 0 with degenerate intervals
    perfect = reports["perfect"]
    assert perfect["table1"]["AP"] == pytest.approx(100.0) and perfect["intervals"]["table1"]["PCE"]["half_width"] == 0


def test_detections_are_stored_per_image(two_runs):
    out, _ = two_runs
    stored = read_detections(out / "shifted" / "detections.json")
    assert stored["pose_evaluator"] == "higherhrnet_bottomup" and len(stored["images"]) == NUM_SAMPLES


def test_comparison_table_of_two_runs(two_runs, tmp_path):
    out, reports = two_runs
    text = compare_runs([out / "perfect", out / "shifted"])
    lines = text.splitlines()
    assert lines[0] == "| Method | AP ↑ | SAP ↑ | PCE ↓ | FID ↓ | KID ↓ | CLIP-Score ↑ |"
    perfect = next(line for line in lines if line.startswith("| perfect |"))
    shifted = next(line for line in lines if line.startswith("| shifted |"))
    assert perfect.split("|")[2].strip().startswith("**100.00 ±")  # best AP bold
    assert shifted.split("|")[2].strip().startswith("<u>")  # second best underlined
    assert shifted.split("|")[3].strip().startswith("**100.00")  # SAP: a tie, both bold
    assert "Differences to the best row:" in text and "- AP, best perfect:" in text

    # the script: a client of the package, same table
    script = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_runs.py"), str(out / "perfect"),
                             str(out / "shifted"), "--out", str(tmp_path / "t.md")], capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, check=True)
    assert (tmp_path / "t.md").read_text() == text and text in script.stdout

    # another evaluator's run is refused (one line), unless --allow-mixed
    other = tmp_path / "vit"
    other.mkdir()
    saved = json.loads((out / "shifted" / "metrics.json").read_text())
    saved.update(run="vit", pose_evaluator="vitpose_topdown")
    (other / "metrics.json").write_text(json.dumps(saved))
    with pytest.raises(CompareError, match=r"different pose evaluators .*--allow-mixed"):
        compare_runs([out / "perfect", other])
    refused = subprocess.run([sys.executable, str(REPO / "scripts" / "compare_runs.py"), str(out / "perfect"),
                              str(other)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert refused.returncode != 0 and len(refused.stderr.strip().splitlines()) == 1
    assert "Mixed pose evaluators" in compare_runs([out / "perfect", other], allow_mixed=True)
    saved.update(pose_evaluator="higherhrnet_bottomup", protocol="paper")
    (other / "metrics.json").write_text(json.dumps(saved))
    with pytest.raises(CompareError, match="different protocols"):
        compare_runs([out / "perfect", other])


def test_table_marks_direction_and_separation():
    def report(run, ap, fid, half, seed=None):
        iv = {"low": ap - half, "high": ap + half, "half_width": half}
        generation = None if seed is None else {"base_seed": seed, "steps": 50}
        return {"run": run, "protocol": "paper", "kid_scale": 100.0, "pose": {}, "generation": generation,
                "table1": {"AP": ap, "FID": fid},
                "intervals": {"table1": {"AP": iv, "FID": {"low": fid - 1, "high": fid + 1, "half_width": 1}}}}

    rows = rows_from_reports([report("a", 51.71, 20.0, 0.5), report("b", 49.50, 18.0, 0.5),
                              report("c", 51.0, 30.0, 1.0)])
    text = render_comparison(rows)
    assert "| a | **51.71 ± 0.50** | <u>20.00 ± 1.00</u> |" in text  # AP best; FID second (lower is better)
    assert "| b | 49.50 ± 0.50 | **18.00 ± 1.00** |" in text
    assert re.search(r"- AP, best a: outside each other's intervals: b \(-2\.21\); within overlapping .*c", text)
    # equal printed values share the mark
    tied = render_comparison(rows_from_reports([report("a", 50.0, 20.0, 0.5), report("b", 50.001, 21.0, 0.5),
                                                report("c", 40.0, 22.0, 0.5)]))
    assert "| a | **50.00 ± 0.50** |" in tied and "| b | **50.00 ± 0.50** |" in tied
    assert "| c | <u>40.00 ± 0.50</u> |" in tied and "- AP, best b: tied: a;" in tied
    # runs that differ only in their seed form one row: mean over seeds with a t interval
    seeds = rows_from_reports([report("g_s1", 50.0, 20, 0.5, seed=1), report("g_s2", 52.0, 21, 0.5, seed=2)])
    assert len(seeds) == 1 and seeds[0].label == "g" and seeds[0].values["AP"] == 51.0
    assert seeds[0].intervals["AP"]["num_seeds"] == 2 and "(2 seeds)" in render_comparison(seeds)


def test_alignment_report_worst_first(two_runs):
    out, _ = two_runs
    index = out / "shifted" / "alignment" / "index.html"
    page = index.read_text()
    assert page.startswith("<!DOCTYPE html>") and "AP per scenario" in page
    shown = [float(v) for v in re.findall(r"<td(?: class=\"bad\")?>([01]\.\d{3})</td>", page)]
    assert len(shown) == NUM_SAMPLES and shown == sorted(shown)
    for src in re.findall(r'src="([^"]+)"', page):
        assert (index.parent / src).is_file(), src  # relative references that resolve
    perfect = (out / "perfect" / "alignment" / "index.html").read_text()
    assert "1.000" in perfect


def test_per_image_oks_definition():
    gt = np.zeros((17, 3))
    gt[:, 0], gt[:, 1], gt[:, 2] = np.linspace(10, 50, 17), np.linspace(20, 100, 17), 1
    assert oks(gt, gt) == pytest.approx(1.0)
    moved = gt.copy()
    moved[:, 0] += 4
    assert 0 < oks(gt, moved) < 1
    assert image_oks(gt[None], []) == 0.0 and image_oks(np.zeros((0, 17, 3)), []) is None
    far = gt.copy()
    far[:, :2] += 300
    assert image_oks(np.stack([gt, far]), [(gt, 1.0)]) == pytest.approx(0.5)  # second person undetected


def test_scoring_a_run_with_another_evaluator_is_refused(two_runs, tmp_path):
    import shutil

    out, _ = two_runs
    shutil.copytree(out / "shifted", tmp_path / "shifted")
    (tmp_path / "cfg.yaml").write_text("name: shifted\n")
    with pytest.raises(ConfigError, match="scored by the higherhrnet_bottomup evaluator"):
        eval_pose.main(["--config", str(tmp_path / "cfg.yaml"), "--score-only", "--metrics", "pose",
                        *OVERRIDES, f"eval.output_dir={tmp_path}", "eval.pose_evaluator=vitpose_topdown"],
                       pose_estimator=ShiftedEstimator([], [], 0.0))


def test_bar_chart_falls_back_to_inline_svg(two_runs, tmp_path, monkeypatch):
    import shutil

    from grpose.eval.alignment_report import write_alignment_report
    from grpose.eval.run_layout import read_manifest

    out, _ = two_runs
    shutil.copytree(out / "shifted", tmp_path / "shifted")
    report = json.loads((tmp_path / "shifted" / "metrics.json").read_text())
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    (tmp_path / "shifted" / "alignment" / "ap_by_scenario.png").unlink()
    index = write_alignment_report(tmp_path / "shifted", report, read_manifest(tmp_path / "shifted" / "manifest.jsonl"),
                                   max_images=2)
    page = index.read_text()
    assert "<svg" in page and "ap_by_scenario.png" not in page and page.count('class="pair"') == 2
    assert "The worst 2 of 6 images are shown." in page
    assert len(list((index.parent / "images").glob("*.jpg"))) == 2  # rows of the earlier report removed


def test_keypoint_errors_per_joint():
    from grpose.eval.alignment_report import keypoint_errors

    gt = np.zeros((17, 3))
    gt[:, 0], gt[:, 1], gt[:, 2] = np.linspace(10, 50, 17), np.linspace(20, 100, 17), 1
    gt[16, 2] = 0  # right ankle not in the condition
    found = gt.copy()
    found[0, 0] += 3.0  # nose 3 px off
    found[15] = 0.0  # left ankle not found
    decoy = gt.copy()
    decoy[:, :2] += 40  # a worse detection: the best-OKS one is matched
    rows = keypoint_errors([gt[None], gt[None]], [[(decoy, 0.9), (found, 0.5)], []])  # second image: nothing found
    by_name = {r["name"]: r for r in rows}
    assert [r["name"] for r in rows][:2] == ["nose", "left_eye"]
    assert by_name["nose"]["present"] == 2 and by_name["nose"]["missed"] == 0.5
    assert by_name["nose"]["median_px"] == pytest.approx(3.0) and by_name["left_eye"]["median_px"] == 0.0
    assert by_name["left_ankle"]["missed"] == 1.0 and by_name["left_ankle"]["median_px"] is None
    assert by_name["right_ankle"]["present"] == 0 and by_name["right_ankle"]["missed"] is None


def test_alignment_report_has_the_keypoint_table(two_runs):
    out, _ = two_runs
    page = (out / "shifted" / "alignment" / "index.html").read_text()
    assert "<h2>Per keypoint</h2>" in page and "<td>left_ankle</td>" in page
