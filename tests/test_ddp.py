"""The multi-process paths, on the CPU: 2 processes with DDP over gloo, launched the way a user launches them.

One training step (both ranks step, rank 0 writes the checkpoint) and evaluation generation (each rank a shard,
shards merged, every sample exactly once, an interrupted run resumed without regenerating anything).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .conftest import REPO, TINY_OVERRIDES

DDP = ["trainer.accelerator=cpu", "trainer.devices=2", "trainer.strategy=ddp"]
DEMO = "configs/demo.yaml"


def _run(script: str, *args: str, tmp_path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "GRPOSE_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
           "MASTER_PORT": str(20000 + os.getpid() % 20000)}
    overrides = [o for o in TINY_OVERRIDES if not o.startswith(("trainer.accelerator", "trainer.devices"))]
    result = subprocess.run([sys.executable, script, "--config", DEMO, *overrides, *DDP, *args], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def ddp_checkpoint(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    _run("train.py", f"output_dir={tmp}", "name=ddp", "trainer.max_steps=1", "data.batch_size=2",
         "data.synthetic_train_size=8", "trainer.checkpoint_every_n_steps=1", "trainer.sample_every_n_steps=0",
         tmp_path=tmp)
    return tmp


def test_two_process_training_step_writes_one_checkpoint(ddp_checkpoint):
    import torch

    last = ddp_checkpoint / "ddp" / "checkpoints" / "last.ckpt"
    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1
    assert all(k.startswith("adapter.") for k in checkpoint["state_dict"])
    assert (ddp_checkpoint / "ddp" / "adapter" / "config.json").is_file()  # exported once, by rank 0


def test_two_process_generation_shards_merge_and_resume(ddp_checkpoint):
    ckpt = str(ddp_checkpoint / "ddp" / "checkpoints" / "last.ckpt")
    out = ddp_checkpoint / "outputs"
    common = ["--ckpt", ckpt, "--metrics", "none", f"eval.output_dir={out}", "eval.run_name=ddp",
              "eval.protocol=standard", "data.synthetic_val_size=7", "eval.batch_size=2"]
    _run("eval_pose.py", *common, "--limit", "3", tmp_path=ddp_checkpoint)  # an "interrupted" first run
    run_dir = out / "ddp"
    first = {p: p.stat().st_mtime_ns for p in (run_dir / "images").glob("*/*.png")}
    assert len(first) == 3
    result = _run("eval_pose.py", *common, tmp_path=ddp_checkpoint)
    records = [json.loads(line) for line in (run_dir / "manifest.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == list(range(7))  # every sample exactly once, in order
    assert len({r["id"] for r in records}) == 7
    images = sorted((run_dir / "images").glob("*/*.png"))
    assert len(images) == 7 and all((run_dir / r["image"]).is_file() for r in records)
    assert all(p.stat().st_mtime_ns == t for p, t in first.items())  # resumed: nothing regenerated
    assert "generated 4 images; 3 were already present" in result.stdout + result.stderr
    assert not (run_dir / ".manifest_parts").exists()
