"""scripts/benchmark.py: a smoke run on the tiny demo model reports both adapters and their ratios."""

import importlib.util
import math
import re
import sys
from pathlib import Path

import pytest

import grpose.models.gcn as gcn_module

ROOT = Path(__file__).resolve().parents[1]


def load_benchmark():
    spec = importlib.util.spec_from_file_location("benchmark_script", ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their module through sys.modules
    spec.loader.exec_module(module)
    return module


def test_smoke_run_reports_both_adapters_and_ratios(tmp_path):
    benchmark = load_benchmark()
    knn_before = gcn_module.knn_graph
    out = tmp_path / "bench.md"
    report = benchmark.main(
        ["--config", str(ROOT / "configs" / "demo.yaml"), "--warmup", "1", "--steps", "1", "--repeats", "1",
         "--sample-steps", "1", "--batch-size", "2", "--sample-batch-size", "1", "--out", str(out), "model.knn_k=4"],
        log=lambda line: None)

    assert gcn_module.knn_graph is knn_before  # the KNN timer is removed after the run
    assert set(report.results) == {"grpose", "controlnet"}
    grpose, controlnet = report.results["grpose"], report.results["controlnet"]
    for result in (grpose, controlnet):
        assert result.step_s > 0 and result.throughput == pytest.approx(2 / result.step_s)
        assert result.sample_s_per_image > 0 and result.flops_per_step > 0
        assert result.peak_mib > 0  # Linux: peak RSS of the step
    # Only GRPose has PGIs and KNN searches; their time is a part of the step.
    assert 0 < grpose.knn_share < grpose.pgi_forward_share < 1
    assert controlnet.pgi_forward_share is None and controlnet.knn_share is None
    assert report.ratios["step_time"] == pytest.approx(grpose.step_s / controlnet.step_s)
    assert report.ratios["sampling"] == pytest.approx(grpose.sample_s_per_image / controlnet.sample_s_per_image)

    text = out.read_text(encoding="utf-8")
    assert text == report.markdown
    header = next(line for line in text.splitlines() if line.startswith("| metric"))
    assert header == "| metric | grpose | controlnet | grpose / controlnet |"
    step_row = next(line for line in text.splitlines() if line.startswith("| train step"))
    ratio = float(step_row.strip("| ").split("|")[-1])
    assert math.isclose(ratio, report.ratios["step_time"], rel_tol=1e-2)
    assert re.search(r"PGI overhead over the ControlNet step: [+-]\d", text)


def test_full_size_mode_sets_the_sd15_architecture():
    benchmark = load_benchmark()
    args = benchmark.parse_args(["--config", "configs/demo.yaml", "--full-size", "--resolution", "256",
                                 "--batch-size", "1"])
    overrides = benchmark.config_overrides(args)
    cfg = benchmark.load_config(ROOT / "configs" / "demo.yaml", overrides + ["model.adapter=grpose"])
    assert cfg.model.base == "sd15" and cfg.model.pretrained is None
    assert list(cfg.model.pose_level_channels) == [192, 256, 384, 512]  # the demo's tiny encoder is replaced
    assert cfg.data.resolution == 256 and cfg.data.batch_size == 1  # explicit flags beat the full-size defaults
    assert cfg.sampling.num_inference_steps == 50 and cfg.sampling.guidance_scale == 9.0


def test_adapter_override_is_rejected():
    benchmark = load_benchmark()
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--config", "configs/demo.yaml", "model.adapter=controlnet"])


def test_adapters_takes_every_trainable_method_from_the_config_choices():
    benchmark = load_benchmark()
    every = benchmark.trainable_adapters()
    assert set(every) >= {"grpose", "controlnet", "t2i_adapter", "uni_controlnet", "stable_pose"}
    assert "none" not in every
    assert benchmark.parse_args(["--config", "configs/demo.yaml", "--adapters", "all"]).adapters == list(every)
    assert benchmark.parse_args(["--config", "configs/demo.yaml"]).adapters == ["grpose", "controlnet"]
    picked = benchmark.parse_args(["--config", "configs/demo.yaml", "--adapters", "stable_pose, t2i_adapter"])
    assert picked.adapters == ["stable_pose", "t2i_adapter"]
    for bad in ("none", "humansd_typo", "grpose,grpose", ""):
        with pytest.raises(SystemExit):
            benchmark.parse_args(["--config", "configs/demo.yaml", "--adapters", bad])


def test_smoke_run_of_the_other_baselines_reports_each_without_ratios(tmp_path):
    benchmark = load_benchmark()
    others = ["t2i_adapter", "uni_controlnet", "stable_pose"]
    report = benchmark.main(
        ["--config", str(ROOT / "configs" / "demo.yaml"), "--adapters", ",".join(others), "--warmup", "0",
         "--steps", "1", "--repeats", "1", "--sample-steps", "1", "--batch-size", "1", "--sample-batch-size", "1",
         "data.resolution=64"],
        log=lambda line: None)
    assert list(report.results) == others and report.ratios == {}  # the ratios compare grpose with controlnet
    params = {}
    for name, result in report.results.items():
        assert result.step_s > 0 and result.sample_s_per_image > 0 and result.flops_per_step > 0
        assert result.pgi_forward_share is None and result.knn_share is None  # no PGIs outside GRPose
        params[name] = result.trainable_params
    assert len(set(params.values())) == 3 and min(params, key=params.get) == "t2i_adapter"
    header = next(line for line in report.markdown.splitlines() if line.startswith("| metric"))
    assert header == "| metric | t2i_adapter | uni_controlnet | stable_pose |"
    assert "PGI overhead" not in report.markdown


def test_flop_count_covers_every_method_on_the_meta_device():
    benchmark = load_benchmark()
    report = benchmark.main(["--config", str(ROOT / "configs" / "demo.yaml"), "--adapters", "all",
                             "--count-flops-only", "--full-size", "--batch-size", "2", "--resolution", "64"],
                            log=lambda line: None)
    rows = {line.split("|")[1].strip(): float(line.split("|")[2]) for line in report.markdown.splitlines()
            if line.startswith("| ") and not line.startswith("| adapter")}
    assert set(rows) == set(benchmark.trainable_adapters())
    assert "FLOP ratio grpose / controlnet" in report.markdown
