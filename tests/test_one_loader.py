"""One adapter loader, one precision policy: the same adapter file gives the same images through every path.

- eval_pose.py (generation for metrics) and scripts/pose2img.py (inference) read the adapter through
  `grpose.weights.load_adapter` and sample through `GRPosePipeline`: identical PNGs for the same sample.
- Sample grids (the training module) and `GRPosePipeline.from_pretrained(dtype=...)` run at the same precision:
  frozen base in its dtype, adapter in float32, autocast; identical images.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from grpose.cli import run
from grpose.config import load_config
from grpose.data.datamodule import PoseDataModule
from grpose.data.skeleton import tensor_to_uint8
from grpose.eval.generate import sample_seed
from grpose.eval.run_layout import RunLayout
from grpose.lit_module import GRPoseLitModule
from grpose.pipeline import GRPosePipeline, sampling_options
from grpose.weights import load_adapter

from .conftest import TINY_OVERRIDES, load_entry_point

DEMO = "configs/demo.yaml"


def _perturbed_adapter_folder(cfg, folder):
    """The tiny adapter with every weight nudged (zero convs included), so it visibly changes the image."""
    module = GRPoseLitModule.from_config(cfg)
    with torch.no_grad():
        for p in module.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.adapter.save_pretrained(folder)
    return module


def test_eval_pose_and_pose2img_give_identical_images_from_one_adapter_file(tmp_path, monkeypatch):
    cfg = load_config(DEMO, TINY_OVERRIDES)
    _perturbed_adapter_folder(cfg, tmp_path / "adapter")
    monkeypatch.chdir(load_entry_point.__globals__["REPO"])
    out = tmp_path / "outputs"
    # One image per forward pass, as pose2img runs it: CPU convolutions may differ in the last bit across batch sizes.
    status = run(load_entry_point("eval_pose.py").main,
                 ["--config", DEMO, *TINY_OVERRIDES, "--ckpt", str(tmp_path / "adapter"), "--limit", "2",
                  "--metrics", "none", f"eval.output_dir={out}", "eval.run_name=one", "eval.batch_size=1"])
    assert status == 0
    records = [json.loads(line) for line in (out / "one" / "manifest.jsonl").read_text().splitlines()]
    sample = PoseDataModule(cfg.data).test_dataset()[1]
    record = records[1]
    assert record["id"] == sample["id"]
    Image.fromarray(tensor_to_uint8(sample["hint"])).save(tmp_path / "pose.png")
    seed = sample_seed(cfg.sampling.seed, sample["id"])
    assert record["seed"] == seed
    status = run(load_entry_point("scripts/pose2img.py").main,
                 ["--sd15", "random", "--arch", "tiny", "--adapter", str(tmp_path / "adapter"), "--prompt",
                  sample["prompt"], "--pose", str(tmp_path / "pose.png"), "--seed", str(seed),
                  "--steps", str(cfg.sampling.num_inference_steps), "--guidance", str(cfg.sampling.guidance_scale),
                  "--negative-prompt", cfg.sampling.negative_prompt,
                  "--resolution", "64", "--device", "cpu", "--out", str(tmp_path / "p2i")])
    assert status == 0
    from_eval = np.asarray(Image.open(RunLayout(out / "one").resolve(record["image"])))
    from_pose2img = np.asarray(Image.open(tmp_path / "p2i" / f"pose_{seed}.png"))
    np.testing.assert_array_equal(from_eval, from_pose2img)
    # and the adapter really matters: the plain base draws something else
    assert np.abs(from_eval.astype(int) - np.asarray(Image.open(
        RunLayout(out / "one").resolve(records[0]["image"]))).astype(int)).max() > 0


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sample_grids_and_from_pretrained_share_one_precision(dtype, tmp_path):
    precision = "bf16-mixed" if dtype == "bf16" else "32-true"
    cfg = load_config(DEMO, [*TINY_OVERRIDES, f"trainer.precision={precision}", f"model.frozen_dtype={dtype}"])
    module = _perturbed_adapter_folder(cfg, tmp_path / "adapter").eval()
    prompts = ["a person in red waving in a park", "two people"]
    hints = torch.stack([PoseDataModule(cfg.data).test_dataset()[i]["hint"] for i in range(2)])
    from_grid = module.sample(prompts, hints, seeds=[3, 4])

    pipe = GRPosePipeline.from_pretrained(None, tmp_path / "adapter", arch="tiny", device="cpu", dtype=dtype)
    expected = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    for path in (module.pipeline(), pipe):
        assert path.dtype == expected
        assert all(p.dtype == torch.float32 for p in path.adapter.parameters())
    from_pipeline = pipe(prompts, hints, [3, 4], **sampling_options(cfg.sampling), progress=False)
    torch.testing.assert_close(from_grid, from_pipeline, rtol=0, atol=0)


def test_the_loader_takes_the_architecture_from_the_file(tmp_path):
    cfg = load_config(DEMO, [*TINY_OVERRIDES, "model.pgi_levels=[1,2]", "model.graphs=[fuse]"])
    _perturbed_adapter_folder(cfg, tmp_path / "adapter")
    adapter = load_adapter(tmp_path / "adapter")  # no config given: everything comes from config.json
    assert adapter.config.pgi_levels == [1, 2] and list(adapter.config.graphs) == ["fuse"]
    load_adapter(tmp_path / "adapter", expected=cfg.model)  # agrees
    with pytest.raises(Exception, match=r"pgi_levels: file \[1, 2\] vs config \[0, 1, 2, 3\]"):
        load_adapter(tmp_path / "adapter", expected=load_config(DEMO, TINY_OVERRIDES).model)
