"""HumanSD (paper Table 1) and its SD2.1-base: the 8-channel trainable UNet through the adapter protocol's hooks,
the heatmap-guided loss in both variants, the presets, SD2.1-base offline loading and humansd-v1.ckpt conversion.

Tiny archs on CPU: `tiny_sd2` is SD2-shaped (linear proj_in/out, per-level attention heads, GELU text encoder,
"!" padding); the heatmap network is the shipped mini HigherHRNet (assets/mini/evaluator/).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel

import train
from grpose.cli import run
from grpose.config import load_config
from grpose.errors import ConfigError, WeightsError
from grpose.lit_module import GRPoseLitModule
from grpose.losses.humansd_heatmap import HeatmapGuidedLoss
from grpose.models.adapter import HumanSDUNet, build_adapter, count_parameters
from grpose.pipeline import GRPosePipeline
from grpose.sd15 import build_sd15, make_scheduler, make_tokenizer, sd15_config
from grpose.sd15.schedulers import SD15_SAMPLING, SD15_SCHEDULE
from grpose.weights import check_state_dict, load_adapter
from grpose.weights.baselines import convert_baseline_state_dict, prepare_humansd_state_dict

from .conftest import TINY_OVERRIDES, load_entry_point
from .test_sd15 import assert_same_weights, unet_to_ldm, vae_to_ldm

ROOT = Path(__file__).resolve().parents[1]
MINI_HRNET = ["loss.humansd_heatmap.network_config=assets/mini/evaluator/higherhrnet_mini_synthetic.py",
              "loss.humansd_heatmap.network_checkpoint=assets/mini/evaluator/higherhrnet_mini_synthetic.pth"]
requires_mmpose = pytest.mark.skipif(importlib.util.find_spec("mmpose") is None,
                                     reason="mmpose 0.x is not installed (run `bash scripts/install_mmpose.sh`)")
PRESETS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs" / "baselines").glob("humansd_*.yaml"))
# The presets are full-size recipes: the SD2.1 ones shrink to the SD2-shaped tiny arch, the SD1.5 ones to `tiny`.
TINY_ARCH = {"sd21base": "tiny_sd2", "sd15": "tiny"}


def _shrink(preset_cfg):
    return [*TINY_OVERRIDES, f"model.base={TINY_ARCH[preset_cfg.model.base]}", "model.frozen_dtype=fp32",
            "trainer.precision=32-true", *MINI_HRNET]


def _cfg(*extra, base="tiny_sd2"):
    return load_config(None, [*TINY_OVERRIDES, f"model.base={base}", "model.adapter=humansd", *extra])


@pytest.fixture(scope="module")
def sd2_parts():
    parts = build_sd15("tiny_sd2")
    with torch.no_grad():  # distinct tensors (GroupNorm weights start as ones): a swapped key cannot go unnoticed
        g = torch.Generator().manual_seed(3)
        for module in (parts.unet, parts.vae, parts.text_encoder):
            for p in module.parameters():
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    return parts


def _inputs(batch=2, seed=1, size=64, text_dim=32):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    timestep = torch.tensor([10, 900])[:batch]
    text = torch.randn(batch, 77, text_dim, generator=g)
    pose = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return sample, timestep, text, pose


def _perturb(module, scale=0.02, seed=7):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g))
    return module.eval()


def _bound(unet, parts):
    unet.bind_base(parts)
    return unet


# ---- the trainable UNet ----------------------------------------------------------------------------------------


def test_zero_pose_channels_make_the_trainable_unet_the_base_for_any_pose(sd2_parts):
    base = sd2_parts.unet
    model = _bound(build_adapter(_cfg().model, base), sd2_parts).eval()
    assert type(model) is HumanSDUNet and model.config.in_channels == 8 and model.pose_channels == 4
    w = model.conv_in.weight
    assert torch.equal(w[:, :4], base.conv_in.weight) and torch.count_nonzero(w[:, 4:]) == 0
    base_state = base.state_dict()
    assert all(torch.equal(v, base_state[k]) for k, v in model.state_dict().items() if k != "conv_in.weight")

    x, t, text, _ = _inputs()
    with torch.no_grad():
        reference = base(x, t, encoder_hidden_states=text).sample
        for seed in (2, 3):  # skeleton images (VAE-encoded here) and arbitrary pose latents alike
            pose_image = _inputs(seed=seed)[3]
            got = model.predict_noise(base, x, t, text, pose_image)
            torch.testing.assert_close(got, reference, rtol=0, atol=1e-6)
            latent = torch.randn(2, 4, 8, 8) * 10
            torch.testing.assert_close(model.predict_noise(base, x, t, text, latent), reference, rtol=0, atol=1e-6)
        # once the pose channels are non-zero the pose changes the prediction
        model.conv_in.weight[:, 4:] = 0.1
        assert (model.predict_noise(base, x, t, text, torch.randn(2, 4, 8, 8)) - reference).abs().max() > 1e-3


def test_pose_latent_is_the_vae_posterior_sample_times_the_scale(sd2_parts):
    model = _bound(build_adapter(_cfg().model, sd2_parts.unet), sd2_parts)
    pose = _inputs()[3]
    latent = model.encode_pose_seeded(pose, torch.Generator().manual_seed(5))
    expected = sd2_parts.vae.encode(pose).latent_dist.sample(torch.Generator().manual_seed(5)) * 0.18215
    torch.testing.assert_close(latent, expected, rtol=0, atol=0)
    assert latent.shape == (2, 4, 8, 8) and not latent.requires_grad
    with pytest.raises(RuntimeError, match="bind_base"):
        HumanSDUNet.from_unet(sd2_parts.unet).encode_pose(pose)
    with pytest.raises(ConfigError, match="no conditioning scale"):
        x, t, text, _ = _inputs()
        model.predict_noise(sd2_parts.unet, x, t, text, latent, conditioning_scale=0.5)
    with pytest.raises(TypeError, match="predict_noise"):
        model.residuals(*_inputs())


@pytest.mark.parametrize("variant", ["code", "paper"])
@pytest.mark.mmpose
@requires_mmpose
def test_gradients_reach_exactly_the_whole_unet(variant, synthetic_batch):
    # 128 px: the tiny UNet's middle block sees 2x2 cells (one token would give its attention zero gradients)
    module = GRPoseLitModule.from_config(_cfg("data.resolution=128", f"loss.humansd_heatmap.variant={variant}",
                                              *MINI_HRNET))
    # the zero pose channels of conv_in get gradient too: their input, the pose latent, is not zero
    module.compute_loss(synthetic_batch(2, resolution=128))["loss"].backward()
    trainable = {id(p) for p in module.adapter.parameters()}
    for name, p in module.named_parameters():
        if id(p) in trainable:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
        else:  # the frozen base UNet (unused by HumanSD), VAE and text encoder
            assert not p.requires_grad and p.grad is None, name
    net = module.heatmap_loss.heatmaps._net
    assert all(not p.requires_grad and p.grad is None for p in net.parameters())
    assert not any(n.startswith("heatmap_loss") for n, _ in module.named_parameters())
    optimizer = module.configure_optimizers()
    assert len(optimizer.param_groups[0]["params"]) == len(list(module.adapter.parameters()))
    assert sorted(module.state_dict()) == sorted(f"adapter.{k}" for k in module.adapter.state_dict())


@pytest.mark.mmpose
@requires_mmpose
def test_a_seeded_loss_is_reproducible_and_the_pose_latent_uses_the_generator(synthetic_batch):
    """Validation losses are seeded: the pose latent's posterior noise and the `code` weight's come from the same
    generator as the rest of the step."""
    module = GRPoseLitModule.from_config(_cfg("loss.humansd_heatmap.variant=code", *MINI_HRNET))
    batch = synthetic_batch(2)
    with torch.no_grad():
        first = module.compute_loss(batch, torch.Generator().manual_seed(3))["loss"]
        torch.manual_seed(99)  # the global RNG plays no part
        second = module.compute_loss(batch, torch.Generator().manual_seed(3))["loss"]
        other = module.compute_loss(batch, torch.Generator().manual_seed(4))["loss"]
    assert torch.equal(first, second) and not torch.equal(first, other)


def test_full_size_trainable_parameter_counts():
    counts = {}
    for base in ("sd21base", "sd15"):
        cfg = load_config(None, [f"model.base={base}", "model.adapter=humansd", "model.pretrained=null"])
        with torch.device("meta"):
            unet = UNet2DConditionModel.from_config(sd15_config(base, "unet"))
            model = build_adapter(cfg.model, unet, load_weights_from_unet=False)
        assert model.conv_in.weight.shape == (320, 8, 3, 3)
        counts[base] = count_parameters(model, trainable_only=True)
        # the base UNet plus 4 pose channels x 320 filters x 3 x 3
        assert counts[base] == count_parameters(unet) + 4 * 320 * 9
    assert counts == {"sd21base": 865_922_244, "sd15": 859_532_484}


# ---- the heatmap-guided loss ------------------------------------------------------------------------------------


class _StubVAE(torch.nn.Module):
    """decode: first 3 latent channels, nearest-upsampled x2; encode: 2x2 average, 4th channel = mean of the 3."""

    config = SimpleNamespace(block_out_channels=[1, 1])
    dtype = torch.float32

    def decode(self, z):
        return SimpleNamespace(sample=F.interpolate(z[:, :3], scale_factor=2, mode="nearest"))

    def encode(self, x):
        pooled = F.avg_pool2d(x, 2)
        latent = torch.cat([pooled, pooled.mean(1, keepdim=True)], 1)
        return SimpleNamespace(latent_dist=SimpleNamespace(sample=lambda generator=None: latent))


class _StubHeatmaps(torch.nn.Module):
    """Two joints: the image's red channel, and one minus its green channel, at the image's resolution."""

    def forward(self, images01):
        return torch.stack([images01[:, 0], 1 - images01[:, 1]], 1)


def _hand_loss(pred, noise, variant, weight, threshold, scale):
    """The two variants written out with numpy loops over one sample (batch 1, 4 x 2 x 2 latents)."""
    err = (pred - noise)[0].numpy().astype(np.float64)
    image = np.zeros((3, 4, 4))
    for c in range(3):
        for y in range(4):
            for x in range(4):
                image[c, y, x] = min(max((err[c, y // 2, x // 2] / scale + 1) / 2, 0.0), 1.0)
    heat = np.stack([image[0], 1 - image[1]])
    total = 0.0
    for c in range(4):
        for y in range(2):
            for x in range(2):
                cells = [(2 * y + dy, 2 * x + dx) for dy in (0, 1) for dx in (0, 1)]
                if variant == "code":
                    counts = [sum(heat[j, p, q] <= threshold for j in range(2)) for p, q in cells]
                    w = scale * float(np.mean(counts))  # 3 equal channels: their mean is the same count
                    total += err[c, y, x] ** 2 * (1 + weight * w)
                else:
                    a = np.mean([min(max(heat[0, p, q], heat[1, p, q], 0.0), 1.0) for p, q in cells])
                    total += ((1 + weight * a) * err[c, y, x]) ** 2
    return total / 16


def test_both_heatmap_variants_match_a_hand_computation_and_differ():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 4, 2, 2, generator=g)
    pred = noise + 0.2 * torch.randn(1, 4, 2, 2, generator=g)
    scale, weight, threshold = 0.18215, 0.1, 0.5
    values = {}
    for variant in ("code", "paper"):
        loss = HeatmapGuidedLoss(_StubHeatmaps(), variant=variant, weight=weight, threshold=threshold)
        values[variant] = float(loss(pred, noise, _StubVAE(), scale))
        assert values[variant] == pytest.approx(_hand_loss(pred, noise, variant, weight, threshold, scale), rel=1e-5)
    assert values["code"] != pytest.approx(values["paper"], rel=1e-3)
    plain = float(F.mse_loss(pred, noise))
    for variant in ("code", "paper"):  # weight 0: both are the plain epsilon MSE
        loss = HeatmapGuidedLoss(_StubHeatmaps(), variant=variant, weight=0.0, threshold=threshold)
        assert float(loss(pred, noise, _StubVAE(), scale)) == pytest.approx(plain, rel=1e-6)


def test_the_variants_differ_as_documented():
    """code: the weight is large off the keypoints (count of low joints), enters linearly; paper: large at them,
    enters squared (inside the norm)."""
    stub = _StubHeatmaps()
    heat = torch.zeros(1, 2, 4, 4)
    heat[0, 0, :2, :2] = 1.0  # one joint "on" in the top-left latent cell
    code = HeatmapGuidedLoss(stub, "code", weight=0.1, threshold=0.05)
    paper = HeatmapGuidedLoss(stub, "paper", weight=0.1)
    w_code = code.code_weight(heat, (4, 4), _StubVAE(), 1.0)[0, 0]
    w_paper = paper.paper_weight(heat, (2, 2))[0, 0]
    assert w_code[0, 0] == 1 and torch.all(w_code.flatten()[1:] == 2)  # off the keypoint: both joints count
    assert w_paper[0, 0] == pytest.approx(1.1) and torch.all(w_paper.flatten()[1:] == 1)
    # the same per-element weight enters linearly (code) and squared (paper)
    err = torch.full((1, 4, 2, 2), 0.5)
    flat = torch.zeros(1, 2, 4, 4)  # no keypoints: code counts 2 everywhere, paper has W_a = 1
    assert code.code_weight(flat, (4, 4), _StubVAE(), 1.0).unique().tolist() == [2.0]
    assert torch.equal(paper.paper_weight(flat, (2, 2)), torch.ones(1, 1, 2, 2))
    assert float((err ** 2 * (1 + 0.1 * 2)).mean()) == pytest.approx(0.25 * 1.2)


@pytest.mark.mmpose
@requires_mmpose
def test_heatmap_variants_on_the_real_pose_network_give_different_losses(sd2_parts):
    from grpose.eval.pose_estimator import PoseHeatmaps

    heatmaps = PoseHeatmaps(ROOT / "assets/mini/evaluator/higherhrnet_mini_synthetic.py",
                            ROOT / "assets/mini/evaluator/higherhrnet_mini_synthetic.pth")
    maps = heatmaps(torch.rand(2, 3, 64, 64))
    assert maps.shape == (2, 17, 32, 32)  # HigherHRNet: stages at 1/4 and 1/2, averaged at 1/2
    g = torch.Generator().manual_seed(4)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    pred = (noise + 0.5 * torch.randn(2, 4, 8, 8, generator=g)).requires_grad_()
    losses = {}
    for variant in ("code", "paper"):
        loss = HeatmapGuidedLoss(heatmaps, variant, weight=0.1, threshold=0.05)
        value = loss(pred, noise, sd2_parts.vae, 0.18215, torch.Generator().manual_seed(0))
        assert value.shape == (2,) and torch.isfinite(value).all()
        (grad,) = torch.autograd.grad(value.sum(), pred)
        assert grad.abs().sum() > 0
        losses[variant] = value.detach()
    plain = ((pred - noise) ** 2).mean(dim=(1, 2, 3)).detach()
    assert not torch.allclose(losses["code"], losses["paper"])
    assert torch.all(losses["paper"] >= plain)  # W_a >= 1 everywhere


# ---- presets, training, resume, export, sampling ----------------------------------------------------------------


def test_presets_are_the_published_recipe():
    sd21, sd15 = load_config("configs/baselines/humansd_sd21_humanart.yaml"), \
        load_config("configs/baselines/humansd_sd15_humanart.yaml")
    for cfg in (sd21, sd15):
        assert cfg.model.adapter == "humansd" and cfg.loss.humansd_heatmap.variant == "code"
        assert cfg.loss.humansd_heatmap.weight == 0.1 and cfg.loss.humansd_heatmap.threshold == 0.05
        assert cfg.optim.lr == 5e-6 and cfg.optim.scale_lr and cfg.data.batch_size == 4
        assert cfg.data.prompt_dropout == 0.0 and cfg.loss.pose_mask_weight == 1.0
    assert (sd21.model.base, sd15.model.base) == ("sd21base", "sd15")
    for name in ("sd21", "sd15"):
        laion = load_config(f"configs/baselines/humansd_{name}_laionhuman.yaml")
        assert laion.data.dataset == "laion_human" and laion.trainer.max_steps == 95000
    assert len(PRESETS) == 4


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.mmpose
@requires_mmpose
def test_one_training_step_per_preset(preset, synthetic_batch, monkeypatch):
    monkeypatch.chdir(ROOT)
    full = load_config(preset)
    cfg = load_config(preset, _shrink(full))
    module = GRPoseLitModule.from_config(cfg)
    assert type(module.adapter) is HumanSDUNet and module.heatmap_loss.variant == "code"
    before = {n: p.detach().clone() for n, p in module.adapter.named_parameters()}
    optimizer = module.configure_optimizers()
    loss = module.compute_loss(synthetic_batch(2))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    changed = [n for n, p in module.adapter.named_parameters() if not torch.equal(p, before[n])]
    assert "conv_in.weight" in changed and len(changed) > len(before) // 2


@pytest.mark.mmpose
@requires_mmpose
def test_train_resume_export_sample_and_evaluate(tmp_path, monkeypatch):
    """The SD2.1 preset through train.py (2 steps), --resume to 3 steps, the exported UNet through the one loader,
    the shared pipeline and eval_pose.py."""
    monkeypatch.chdir(ROOT)
    preset = "configs/baselines/humansd_sd21_humanart.yaml"
    shrink = _shrink(load_config(preset))
    common = ["--config", preset, *shrink, f"output_dir={tmp_path}", "name=run", "data.batch_size=2",
              "data.synthetic_train_size=8", "trainer.checkpoint_every_n_steps=1", "trainer.limit_val_batches=0",
              "trainer.sample_every_n_steps=0", "trainer.logger=csv", "sampling.num_images=1"]
    train.main([*common, "trainer.max_steps=2"])
    trainer = train.main([*common, "trainer.max_steps=3", "--resume", "last"])
    assert trainer.global_step == 3
    assert {float(s["step"]) for s in trainer.optimizers[0].state_dict()["state"].values()} == {3.0}

    run_dir = tmp_path / "run"
    cfg = load_config(preset, shrink)
    exported = load_adapter(run_dir / "adapter", expected=cfg.model)
    from_ckpt = load_adapter(run_dir / "checkpoints" / "last.ckpt", expected=cfg.model)
    assert type(exported) is HumanSDUNet and type(from_ckpt) is HumanSDUNet
    ckpt_state = from_ckpt.state_dict()
    assert all(torch.equal(v, ckpt_state[k]) for k, v in exported.state_dict().items())
    parts = build_sd15("tiny_sd2")
    x, t, text, pose = _inputs()
    latent = _bound(exported, parts).encode_pose_seeded(pose, torch.Generator().manual_seed(0))
    with torch.no_grad():  # same tensors; storage alignment may change the last bit of a CPU kernel
        torch.testing.assert_close(exported.predict_noise(None, x, t, text, latent),
                                   _bound(from_ckpt, parts).predict_noise(None, x, t, text, latent), rtol=0, atol=1e-5)

    pipe = GRPosePipeline.from_pretrained(None, run_dir / "adapter", arch="tiny_sd2", device="cpu")
    images = pipe(["a person"], pose[:1], [5], num_inference_steps=2, progress=False)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()
    # one image's result depends on its seed only, not on the batch it is sampled in
    both = pipe(["a person", "a dancer"], pose, [5, 6], num_inference_steps=2, progress=False)
    torch.testing.assert_close(both[:1], images, rtol=0, atol=1e-4)  # another seed would differ by O(1)

    out = tmp_path / "outputs"
    status = run(load_entry_point("eval_pose.py").main,
                 ["--config", preset, *shrink, "--ckpt", str(run_dir / "adapter"), "--limit", "2", "--metrics",
                  "none", f"eval.output_dir={out}", "eval.run_name=ev", "sampling.num_inference_steps=2"])
    assert status == 0
    assert len((out / "ev" / "manifest.jsonl").read_text().splitlines()) == 2


def test_sampling_gives_both_cfg_branches_the_same_pose_latent(sd2_parts):
    model = _perturb(_bound(build_adapter(_cfg().model, sd2_parts.unet), sd2_parts))
    seen = []
    original = model.predict_noise

    def spy(unet, sample, timestep, text, pose, scale=1.0, generator=None):
        seen.append(pose.clone())
        return original(unet, sample, timestep, text, pose, scale, generator)

    model.predict_noise = spy
    pipe = GRPosePipeline(sd2_parts, model)
    pose = _inputs()[3]
    pipe(["a", "b"], pose, [1, 2], num_inference_steps=2, guidance_scale=5.0, progress=False)
    assert len(seen) == 2 and torch.equal(seen[0], seen[1])
    negative, positive = seen[0].chunk(2)
    assert torch.equal(negative, positive) and not torch.equal(positive[0], positive[1])


def test_export_import_round_trip_gives_identical_outputs(sd2_parts, tmp_path):
    model = _perturb(build_adapter(_cfg().model, sd2_parts.unet))
    model.save_pretrained(tmp_path / "exported")
    assert json.loads((tmp_path / "exported" / "config.json").read_text())["_class_name"] == "HumanSDUNet"
    x, t, text, _ = _inputs()
    latent = torch.randn(2, 4, 8, 8)
    with torch.no_grad():
        expected = model.predict_noise(None, x, t, text, latent)
        for loaded in (load_adapter(tmp_path / "exported"), load_adapter(tmp_path / "exported", expected=_cfg().model),
                       HumanSDUNet.from_pretrained(tmp_path / "exported")):
            assert type(loaded) is HumanSDUNet
            loaded_state = loaded.state_dict()
            assert all(torch.equal(v, loaded_state[k]) for k, v in model.state_dict().items())
            # same tensors; the storage alignment of a loaded file may change a CPU kernel's last bit
            torch.testing.assert_close(loaded.predict_noise(None, x, t, text, latent), expected, rtol=0, atol=1e-5)
    with pytest.raises(WeightsError, match="another adapter architecture"):
        load_adapter(tmp_path / "exported", expected=_cfg(base="tiny").model)
    # export_adapter.py from the folder writes the same tensors again
    load_entry_point("scripts/export_adapter.py").main([str(tmp_path / "exported"), str(tmp_path / "again")])
    again = load_adapter(tmp_path / "again")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in again.state_dict().items())


# ---- SD2.1-base offline ------------------------------------------------------------------------------------------


def open_clip_to_ldm(text_sd: dict, hidden: int, extra_blocks: int = 1, meta: bool = False) -> dict:
    """Independent oracle: a transformers CLIPTextModel -> open_clip's text tower as SD2's LDM stores it
    (`cond_stage_model.model.*`: fused in_proj, ln_1/ln_2, mlp.c_fc/c_proj, ln_final, positional_embedding), plus
    the blocks SD2 never runs (the last `extra_blocks` resblocks) and the contrastive heads."""
    names = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
             "self_attn.out_proj": "attn.out_proj"}
    sd = {k.removeprefix("text_model."): v for k, v in text_sd.items()}
    out = {"token_embedding.weight": sd.pop("embeddings.token_embedding.weight"),
           "positional_embedding": sd.pop("embeddings.position_embedding.weight"),
           "ln_final.weight": sd.pop("final_layer_norm.weight"), "ln_final.bias": sd.pop("final_layer_norm.bias")}
    layers = 1 + max(int(k.split(".")[2]) for k in sd if k.startswith("encoder.layers."))
    for i in range(layers):
        p = f"encoder.layers.{i}."
        for leaf in ("weight", "bias"):
            out[f"transformer.resblocks.{i}.attn.in_proj_{leaf}"] = torch.cat(
                [sd.pop(f"{p}self_attn.{q}_proj.{leaf}") for q in "qkv"])
            for ours, theirs in names.items():
                out[f"transformer.resblocks.{i}.{theirs}.{leaf}"] = sd.pop(f"{p}{ours}.{leaf}")
    assert not sd, f"oracle left {sorted(sd)[:3]}"
    make = (lambda *s: torch.empty(s, device="meta")) if meta else (lambda *s: torch.randn(s))
    for i in range(layers, layers + extra_blocks):
        for key in [k for k in out if k.startswith("transformer.resblocks.0.")]:
            out[key.replace("resblocks.0.", f"resblocks.{i}.")] = make(*out[key].shape)
    out["text_projection"] = make(hidden, hidden)
    out["logit_scale"] = make()
    return {f"cond_stage_model.model.{k}": v for k, v in out.items()}


def _sd2_checkpoint(parts, arch="tiny_sd2", unet_sd=None):
    ldm = {}
    unet_sd = parts.unet.state_dict() if unet_sd is None else unet_sd
    ldm.update(unet_to_ldm(unet_sd, {**sd15_config(arch, "unet")}))
    ldm.update(vae_to_ldm(parts.vae.state_dict(), sd15_config(arch, "vae")))
    ldm.update(open_clip_to_ldm(parts.text_encoder.state_dict(), sd15_config(arch, "text_encoder")["hidden_size"]))
    ldm["betas"] = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2
    return {k: v.detach().clone().contiguous() for k, v in ldm.items()}


def test_sd21_base_loads_offline_from_a_single_file(sd2_parts, tmp_path):
    path = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file(_sd2_checkpoint(sd2_parts), str(path))
    loaded = build_sd15("tiny_sd2", str(path))
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(loaded, part), getattr(sd2_parts, part))
    assert loaded.unet.config.use_linear_projection
    assert loaded.unet.down_blocks[0].attentions[0].proj_in.weight.ndim == 2
    assert list(loaded.unet.config.attention_head_dim) == [2, 2, 4, 4]
    ids = loaded.tokenizer(["a person"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(loaded.text_encoder(ids).last_hidden_state,
                                   sd2_parts.text_encoder(ids).last_hidden_state, rtol=0, atol=0)
    with pytest.raises(WeightsError, match="not an SD2.x single-file checkpoint"):
        sd1 = {k: v for k, v in _sd2_checkpoint(sd2_parts).items() if not k.startswith("cond_stage_model.")}
        sd1["cond_stage_model.transformer.text_model.x"] = torch.zeros(1)
        save_file(sd1, str(tmp_path / "sd1.safetensors"))
        build_sd15("tiny_sd2", str(tmp_path / "sd1.safetensors"))


def test_the_trainable_unet_starts_from_the_stored_weights_with_a_half_precision_base(sd2_parts, tmp_path):
    path = tmp_path / "v2-1_512-ema-pruned.safetensors"
    save_file(_sd2_checkpoint(sd2_parts), str(path))
    module = GRPoseLitModule.from_config(_cfg(f"model.pretrained={path}", "model.frozen_dtype=bf16",
                                              "trainer.precision=bf16-mixed"))
    assert module.unet.dtype == torch.bfloat16 and module.adapter.dtype == torch.float32
    stored = sd2_parts.unet.state_dict()
    for key, value in module.adapter.state_dict().items():  # float32 values, not their bf16 rounding
        assert torch.equal(value[:, :4] if key == "conv_in.weight" else value, stored[key]), key


def test_sd21_base_loads_offline_from_a_diffusers_folder(sd2_parts, tmp_path):
    folder = tmp_path / "stable-diffusion-2-1-base"
    for part in ("unet", "vae", "text_encoder", "tokenizer"):
        getattr(sd2_parts, part).save_pretrained(folder / part)
    loaded = build_sd15("tiny_sd2", str(folder))
    for part in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(loaded, part), getattr(sd2_parts, part))
    assert loaded.tokenizer.pad_token == "!"
    # an SD1.5-shaped folder is refused for the SD2 arch (linear projection, heads, text activation differ)
    with pytest.raises(WeightsError, match="use_linear_projection|attention_head_dim"):
        build_sd15("tiny", str(folder))
    make_tokenizer().save_pretrained(folder / "tokenizer")  # SD1.5's tokenizer pads with <|endoftext|>
    with pytest.raises(WeightsError, match="pads with '<\\|endoftext\\|>'"):
        build_sd15("tiny_sd2", str(folder))


def test_missing_sd21_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        build_sd15("sd21base", str(tmp_path / "models" / "v2-1_512-ema-pruned.ckpt"))
    assert "SD2.1-base weights not found" in str(err.value) and "v2-1_512-ema-pruned" in str(err.value)
    assert "\n" not in str(err.value)


def test_tokenizer_pads_with_exclamation_mark_for_sd2_only():
    sd2, sd15 = build_sd15("tiny_sd2").tokenizer, build_sd15("tiny").tokenizer
    ids2 = sd2(["a cat"], padding="max_length", max_length=77).input_ids[0]
    ids1 = sd15(["a cat"], padding="max_length", max_length=77).input_ids[0]
    assert ids2[:4] == ids1[:4] == [49406, 320, 2368, 49407]  # same vocabulary and merges
    assert sd2.pad_token == "!" and sd2.pad_token_id == 0 and ids2[4:] == [0] * 73
    assert ids1[4:] == [49407] * 73
    assert build_sd15("tiny_sd2").tokenizer is not sd2  # a new tokenizer per build


def test_sd21_base_arch_configs():
    unet, text = sd15_config("sd21base", "unet"), sd15_config("sd21base", "text_encoder")
    assert unet["attention_head_dim"] == [5, 10, 20, 20] and unet["cross_attention_dim"] == 1024
    assert unet["use_linear_projection"] is True and unet["upcast_attention"] is False
    assert (text["hidden_size"], text["num_hidden_layers"], text["hidden_act"]) == (1024, 23, "gelu")
    scheduler = json.loads((ROOT / "grpose/sd15_configs/sd21base/scheduler.json").read_text())
    assert scheduler["prediction_type"] == "epsilon"
    # the schedule every grpose scheduler uses is SD2.1-base's too
    shared = {**SD15_SCHEDULE, **SD15_SAMPLING}
    assert all(scheduler[k] == shared[k] for k in scheduler if k in shared)
    assert make_scheduler("ddpm").config.prediction_type == "epsilon"
    with torch.device("meta"):
        assert count_parameters(UNet2DConditionModel.from_config(unet)) == 865_910_724
        assert count_parameters(CLIPTextModel(CLIPTextConfig(**text))) == 340_387_840
        assert count_parameters(AutoencoderKL.from_config(sd15_config("sd21base", "vae"))) == 83_653_863


# ---- humansd-v1.ckpt ---------------------------------------------------------------------------------------------


def _humansd_release(parts, unet_sd, arch="tiny_sd2"):
    """humansd-v1.ckpt's layout: the 8-channel UNet under model.diffusion_model.*, SD2.1's VAE and OpenCLIP, the
    training loss's HigherHRNet under mmpose_model.*, LDM schedule buffers."""
    ldm = _sd2_checkpoint(parts, arch, unet_sd)
    ldm["mmpose_model.backbone.conv1.weight"] = torch.randn(64, 3, 3, 3)
    ldm["mmpose_model.keypoint_head.final_layers.0.weight"] = torch.randn(34, 32, 1, 1)
    ldm["alphas_cumprod"] = torch.rand(1000)
    return ldm


def test_released_humansd_converts_to_an_identical_unet(sd2_parts, tmp_path, capsys):
    model = _perturb(build_adapter(_cfg().model, sd2_parts.unet))
    release = _humansd_release(sd2_parts, model.state_dict())
    assert release["model.diffusion_model.input_blocks.0.0.weight"].shape[1] == 8
    assert release["model.diffusion_model.input_blocks.1.1.proj_in.weight"].ndim == 2  # SD2: linear
    path = tmp_path / "humansd-v1.ckpt"
    torch.save({"state_dict": release, "global_step": 95000}, path)
    report = load_entry_point("scripts/convert_baseline_ckpt.py").main(
        ["humansd", str(path), str(tmp_path / "out"), *TINY_OVERRIDES, "model.base=tiny_sd2"])
    assert report["unmapped"] == [] and len(report["mapped"]) == len(model.state_dict())
    assert report["mapped"]["conv_in.weight"] == "model.diffusion_model.input_blocks.0.0.weight"
    assert {"mmpose_model.backbone.conv1.weight", "betas", "alphas_cumprod"} <= set(report["dropped"])
    assert report["base"]["vae"] == len(sd2_parts.vae.state_dict()) and report["base"]["unused"] > 0
    printed = capsys.readouterr().out
    assert "unmapped: 0" in printed and "mmpose_model." in printed and "base parts checked" in printed
    converted = load_adapter(tmp_path / "out", expected=_cfg().model)
    x, t, text, _ = _inputs()
    latent = torch.randn(2, 4, 8, 8)
    converted_state = converted.state_dict()
    assert all(torch.equal(v, converted_state[k]) for k, v in model.state_dict().items())
    with torch.no_grad():
        torch.testing.assert_close(converted.predict_noise(None, x, t, text, latent),
                                   model.predict_noise(None, x, t, text, latent), rtol=0, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"model.diffusion_model.input_blocks.1.9.proj_in.weight": torch.zeros(1)},
     r"no place in a diffusers UNet: model\.diffusion_model\.input_blocks\.1\.9\.proj_in\.weight"),
    ({"control_model.time_embed.0.weight": torch.zeros(1)}, r"no known part: control_model\.time_embed\.0\.weight"),
    ({"model.diffusion_model.out.2.bias": None}, r"missing: conv_out\.bias"),
    ({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(32, 4, 3, 3)},
     r"another shape: model\.diffusion_model\.input_blocks\.0\.0\.weight \(-> conv_in\.weight\)"),
    ({"cond_stage_model.model.ln_final.weight": None}, r"text encoder weights .* do not fit .*final_layer_norm"),
], ids=["unknown-unet-key", "unknown-part", "missing", "4-channel-conv-in", "broken-text-tower"])
def test_humansd_conversion_fails_with_one_line_naming_the_key(sd2_parts, change, message):
    state = _humansd_release(sd2_parts, build_adapter(_cfg().model, sd2_parts.unet).state_dict())
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(WeightsError, match=message) as err:
        convert_baseline_state_dict("humansd", state, _cfg().model, "humansd-v1.ckpt")
    assert "\n" not in str(err.value)


def test_full_size_humansd_release_layout_maps_completely():
    cfg = load_config(None, ["model.base=sd21base", "model.adapter=humansd", "model.pretrained=null"])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("sd21base", "unet"))
        model = build_adapter(cfg.model, unet, load_weights_from_unet=False)
        vae = AutoencoderKL.from_config(sd15_config("sd21base", "vae"))
        text = CLIPTextModel(CLIPTextConfig(**sd15_config("sd21base", "text_encoder")))
    release = unet_to_ldm(model.state_dict(), sd15_config("sd21base", "unet"))
    release.update(vae_to_ldm(vae.state_dict(), sd15_config("sd21base", "vae")))
    release.update(open_clip_to_ldm(text.state_dict(), 1024, meta=True))
    release["mmpose_model.backbone.conv1.weight"] = torch.empty(64, 3, 3, 3, device="meta")
    known = {  # names and shapes of the SD2 LDM layout with HumanSD's 8-channel conv_in
        "model.diffusion_model.input_blocks.0.0.weight": (320, 8, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320),
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight": (320, 1024),
        "model.diffusion_model.output_blocks.11.1.proj_out.weight": (320, 320),
        "cond_stage_model.model.token_embedding.weight": (49408, 1024),
        "cond_stage_model.model.transformer.resblocks.23.attn.in_proj_weight": (3072, 1024),
        "cond_stage_model.model.text_projection": (1024, 1024),
    }
    for key, shape in known.items():
        assert tuple(release[key].shape) == shape, key
    assert sum(k.startswith("cond_stage_model.model.transformer.resblocks.") and k.endswith("ln_1.weight")
               for k in release) == 24
    converted, report = prepare_humansd_state_dict(release, cfg.model, "humansd-v1.ckpt")
    assert report["unmapped"] == [] and len(converted) == len(model.state_dict())
    check_state_dict(model.state_dict(), converted, "humansd-v1.ckpt")  # keys and shapes
    assert sum(v.numel() for v in converted.values()) == 865_922_244
    assert report["base"]["unused"] == 12 + 2  # resblock 23 and the contrastive heads


# ---- user errors -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("overrides, message", [
    (["loss.humansd_heatmap.variant=off"], r"variant='False' is not one of none, code, paper .*write none"),
    (["loss.humansd_heatmap.variant=both"], r"loss\.humansd_heatmap\.variant='both' is not one of none, code, paper"),
    (["loss.humansd_heatmap.variant=code", "loss.pose_mask_weight=5.0"], r"both reweight the diffusion loss"),
    (["loss.humansd_heatmap.weight=-1"], r"loss\.humansd_heatmap\.weight must be >= 0"),
], ids=["off", "variant", "with-pose-mask", "weight"])
def test_bad_heatmap_loss_settings_are_one_line_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as err:
        _cfg(*overrides)
    assert "\n" not in str(err.value)


@pytest.mark.mmpose
@requires_mmpose
def test_a_missing_heatmap_network_says_where_to_get_it(tmp_path):
    from grpose.errors import MissingFileError

    with pytest.raises(MissingFileError, match="higherhrnet_w48_humanart_512x512_udp.pth.*HumanSD") as err:
        GRPoseLitModule.from_config(_cfg("loss.humansd_heatmap.variant=code",
                                         f"loss.humansd_heatmap.network_checkpoint={tmp_path / 'hrnet.pth'}"))
    assert "\n" not in str(err.value)
