"""train.py end to end on the tiny model: run directory, checkpoints, resume, config errors."""

import math

import pytest
import torch
from omegaconf import OmegaConf

import train
from grpose.config import load_config
from grpose.errors import ConfigError
from tests.conftest import TINY_OVERRIDES


def run(tmp_path, *extra, resume=None):
    argv = ["--config", "configs/demo.yaml", *TINY_OVERRIDES, f"output_dir={tmp_path}", "name=run",
            "data.batch_size=2", "data.synthetic_train_size=64", "trainer.checkpoint_every_n_steps=2",
            "trainer.sample_every_n_steps=0", "trainer.log_every_n_steps=1", *extra]
    if resume:
        argv += ["--resume", resume]
    return train.main(argv)


def test_train_writes_run_dir_and_resumes_with_optimizer_state(tmp_path):
    run(tmp_path, "trainer.max_steps=4")
    run_dir = tmp_path / "run"
    assert (run_dir / "config.yaml").is_file()
    assert OmegaConf.load(run_dir / "config.yaml").trainer.max_steps == 4
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and (run_dir / "checkpoints" / "epoch=0000-step=0000002.ckpt").is_file()
    assert (run_dir / "adapter" / "config.json").is_file()
    assert (run_dir / "samples").is_dir() and list((run_dir / "samples").glob("*.png"))  # end-of-training grid

    saved = torch.load(last, map_location="cpu", weights_only=False)
    assert saved["global_step"] == 4
    assert all(k.startswith("adapter.") for k in saved["state_dict"])  # never the frozen SD1.5
    adam_steps = {float(s["step"]) for s in saved["optimizer_states"][0]["state"].values()}
    assert adam_steps == {4.0}

    with pytest.raises(FileExistsError, match="--resume last"):  # a new run never mixes with the old one
        run(tmp_path, "trainer.max_steps=6")
    trainer = run(tmp_path, "trainer.max_steps=6", resume="last")
    assert trainer.global_step == 6
    resumed = trainer.optimizers[0].state_dict()["state"]
    # a fresh optimizer would have taken 2 steps; the restored one continues from 4
    assert {float(s["step"]) for s in resumed.values()} == {6.0}


def test_resume_missing_checkpoint_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run(tmp_path, "trainer.max_steps=1", resume="last")


def test_unknown_config_key_is_an_error():
    with pytest.raises(ConfigError, match="unknown config key 'model.nonexistent'"):
        load_config("configs/demo.yaml", ["model.nonexistent=3"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config("configs/demo.yaml", ["trainer.max_steps"])
    with pytest.raises(ConfigError, match="graph_type"):
        load_config("configs/demo.yaml", ["model.graph_type=gat"])


def test_full_size_presets_point_at_weights_with_clear_error(tmp_path):
    cfg = load_config("configs/grpose/humanart.yaml", [f"model.pretrained={tmp_path}/missing.safetensors"])
    from grpose.lit_module import GRPoseLitModule

    with pytest.raises(Exception, match="missing.safetensors"):
        GRPoseLitModule.from_config(cfg)


def test_auto_precision_resolves_at_load_time():
    cfg = load_config("configs/grpose/humanart.yaml", ["trainer.accelerator=cpu"])
    assert cfg.trainer.precision == "32-true" and cfg.model.frozen_dtype == "fp32"  # no GPU: full precision
    cfg = load_config("configs/demo.yaml", ["trainer.precision=bf16-mixed", "model.frozen_dtype=auto"])
    assert cfg.model.frozen_dtype == "bf16"
    with pytest.raises(ConfigError, match="needs a mixed trainer.precision"):
        load_config("configs/demo.yaml", ["model.frozen_dtype=fp16"])


def test_lr_schedule_steps_per_optimizer_step_and_resumes(tmp_path):
    """optim.lr_scheduler / lr_warmup_steps: diffusers' schedules over trainer.max_steps, restored on resume."""
    schedule = ["optim.lr=1e-3", "optim.lr_scheduler=cosine", "optim.lr_warmup_steps=2", "trainer.max_steps=6"]
    run(tmp_path, *schedule)
    checkpoints = tmp_path / "run" / "checkpoints"
    cosine = lambda step: 1e-3 * 0.5 * (1 + math.cos(math.pi * (step - 2) / 4))  # noqa: E731  after the warm-up
    for name, step, lr in (("epoch=0000-step=0000002.ckpt", 2, cosine(2)), ("last.ckpt", 6, cosine(6))):
        saved = torch.load(checkpoints / name, map_location="cpu", weights_only=False)
        assert saved["lr_schedulers"][0]["last_epoch"] == step
        assert saved["optimizer_states"][0]["param_groups"][0]["lr"] == pytest.approx(lr, abs=1e-12)

    # From step 2 again: a scheduler built afresh instead of restored would end 4 steps later, at cosine(4).
    trainer = run(tmp_path, *schedule, resume=str(checkpoints / "epoch=0000-step=0000002.ckpt"))
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(cosine(6), abs=1e-12)
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 6


def test_constant_lr_has_no_scheduler(tiny_cfg):
    from grpose.lit_module import GRPoseLitModule

    assert isinstance(GRPoseLitModule.from_config(tiny_cfg()).configure_optimizers(), torch.optim.AdamW)
    with pytest.raises(ConfigError, match="optim.lr_scheduler='step' is not one of"):
        load_config("configs/demo.yaml", ["optim.lr_scheduler=step"])


def test_resume_with_another_checkpoint_cadence_keeps_last_ckpt_current(tmp_path):
    run(tmp_path, "trainer.max_steps=4")
    run(tmp_path, "trainer.max_steps=6", "trainer.checkpoint_every_n_steps=3", resume="last")
    checkpoints = tmp_path / "run" / "checkpoints"
    assert not list(checkpoints.glob("last-v*.ckpt"))
    assert torch.load(checkpoints / "last.ckpt", map_location="cpu", weights_only=False)["global_step"] == 6
