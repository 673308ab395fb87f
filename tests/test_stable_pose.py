"""Stable-Pose as a grpose adapter: PMSA-ViT pieces against hand computations, the coarse-to-fine masks against a
brute-force dilation, behaviour at init, gradients, presets, train / resume / export, full-size parameter counts and
conversion of the released key layout."""

from __future__ import annotations

import json
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel
from torchvision.transforms.functional import gaussian_blur

import train
from grpose.config import load_config
from grpose.data.skeleton import pose_image_to_tensor, render_skeleton
from grpose.errors import WeightsError
from grpose.lit_module import GRPoseLitModule
from grpose.losses.diffusion import pose_region_mask
from grpose.models.adapter import StablePoseAdapter, build_adapter, count_parameters
from grpose.models.stable_pose import (AttnResBlock, Patchify, PMSAViT, SoftMaskedAttention, Unpatchify,
                                       dilated_pose_mask, sincos_position_embedding, token_attention_mask)
from grpose.pipeline import GRPosePipeline
from grpose.sd15 import build_sd15, sd15_config
from grpose.weights import check_state_dict, load_adapter
from grpose.weights.baselines import convert_baseline_state_dict, prepare_stable_pose_state_dict

from .adapter_checks import assert_identical, perturb, residual_tensors
from .conftest import TINY_OVERRIDES, load_entry_point
from .test_baselines import _uni_release_key

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("configs/baselines/stable_pose_humanart.yaml", "configs/baselines/stable_pose_laionhuman.yaml")
SHRINK = [*TINY_OVERRIDES, "model.adapter_weights=null", "model.frozen_dtype=fp32", "trainer.precision=32-true"]


def _cfg(*extra):
    return load_config(None, [*TINY_OVERRIDES, "model.adapter=stable_pose", *extra])


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_sd15("tiny").unet.eval()


def _skeleton_pose(size: int = 64, batch: int = 2, seed: int = 1):
    """Rendered skeletons in [-1, 1] (a black background, so the masks are not trivially full)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(batch):
        kp = np.ones((17, 3))
        kp[:, :2] = rng.uniform(0.3 * size, 0.7 * size, size=(17, 2))
        images.append(pose_image_to_tensor(render_skeleton([kp], size, size, line_width=max(1, size // 50))))
    return torch.stack(images)


def _inputs(batch: int = 2, seed: int = 1, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    timestep = torch.tensor([10, 900])[:batch]
    text = torch.randn(batch, 77, 32, generator=g)  # tiny CLIP width
    return sample, timestep, text, _skeleton_pose(size, batch, seed)


# ---- the ViT's pieces ------------------------------------------------------------------------------------------


def test_patchify_orders_tokens_row_major_and_features_pixel_then_channel():
    x = torch.randn(2, 3, 4, 6)
    tokens = Patchify(2)(x)
    assert tokens.shape == (2, 6, 12)
    for row in range(2):
        for col in range(3):
            for i in range(2):
                for j in range(2):
                    for ch in range(3):
                        assert tokens[1, row * 3 + col, (i * 2 + j) * 3 + ch] == x[1, ch, row * 2 + i, col * 2 + j]
    assert torch.equal(Unpatchify(2)(tokens, (2, 3)), x)


def test_sincos_position_embedding_values():
    pe = sincos_position_embedding(2, 3, 8)  # frequencies 1 and 1e-4
    assert pe.shape == (6, 8)
    token = 1 * 3 + 2  # y = 1, x = 2
    w = torch.tensor([1.0, 1e-4])
    expected = torch.cat([(2 * w).sin(), (2 * w).cos(), (1 * w).sin(), (1 * w).cos()])
    torch.testing.assert_close(pe[token], expected)


def test_soft_masking_sets_disallowed_logits_to_the_minimum():
    torch.manual_seed(3)
    attention = SoftMaskedAttention(dim=8, heads=2, head_dim=3).eval()
    x = torch.randn(2, 5, 8)
    allowed = torch.rand(2, 5, 5) > 0.5
    allowed[1] = True  # the second sample is unmasked
    with torch.no_grad():
        got = attention(x, allowed)
        q, k, v = attention.to_qkv(attention.norm(x)).chunk(3, dim=-1)

        def heads(t):
            return t.reshape(2, 5, 2, 3).transpose(1, 2)

        logits = heads(q) @ heads(k).transpose(-1, -2) / 3 ** 0.5
        filled = logits.clone()
        for b in range(2):
            floor = logits[b].min()
            for h in range(2):
                filled[b, h][~allowed[b]] = floor
        weights = filled.softmax(-1)
        expected = attention.to_out((weights @ heads(v)).transpose(1, 2).reshape(2, 5, 6))
    torch.testing.assert_close(got, expected)
    # soft, not hard: every disallowed pair keeps a positive weight
    assert (weights[0][:, ~allowed[0]] > 0).all()
    torch.testing.assert_close(got[1], attention(x, None)[1])  # an all-allowed mask is no mask
    # per-sample floor: a sample's output does not depend on the rest of its batch; the batch-wide floor does
    torch.testing.assert_close(attention(x[:1], allowed[:1]), got[:1])
    batch_wide = SoftMaskedAttention(dim=8, heads=2, head_dim=3, soft_mask_scope="batch").eval()
    batch_wide.load_state_dict(attention.state_dict())
    with torch.no_grad():
        filled = logits.clone()
        for b in range(2):
            for h in range(2):
                filled[b, h][~allowed[b]] = logits.min()
        expected = batch_wide.to_out((filled.softmax(-1) @ heads(v)).transpose(1, 2).reshape(2, 5, 6))
        torch.testing.assert_close(batch_wide(x, allowed), expected)


def test_pmsa_vit_layers_use_their_own_masks():
    torch.manual_seed(0)
    vit = PMSAViT(channels=16, reduced_channels=4, patch_size=2, depth=2, heads=2).eval()
    assert vit.dim == 16 and len(vit.transformer.layers) == 2
    x = torch.randn(1, 16, 4, 4)
    full = torch.ones(1, 4, 4, dtype=torch.bool)
    some = token_attention_mask(torch.tensor([[[1, 0, 0, 0]] + [[0, 0, 0, 0]] * 3]).bool(), 2)
    with torch.no_grad():
        unmasked = vit(x)
        assert torch.equal(vit(x, [full, full]), unmasked)
        coarse_only, fine_only = vit(x, [some, full]), vit(x, [full, some])
    assert not torch.allclose(coarse_only, unmasked) and not torch.allclose(fine_only, unmasked)
    assert not torch.allclose(coarse_only, fine_only)
    with pytest.raises(ValueError, match="2 layers but got 1 masks"):
        vit(x, [full])


# ---- masks -----------------------------------------------------------------------------------------------------


def _brute_force_cells(pose: torch.Tensor, grid: int, kernel: int) -> torch.Tensor:
    """A cell is on when some skeleton pixel lies within Chebyshev distance (kernel - 1) / 2 of its pixel box."""
    on = (pose > -1).any(dim=0).numpy()
    ys, xs = np.nonzero(on)
    r, cell = kernel // 2, pose.shape[-1] // grid
    out = torch.zeros(grid, grid, dtype=torch.bool)
    for i in range(grid):
        for j in range(grid):
            near = ((ys >= i * cell - r) & (ys <= (i + 1) * cell - 1 + r)
                    & (xs >= j * cell - r) & (xs <= (j + 1) * cell - 1 + r))
            out[i, j] = bool(near.any())
    return out


def test_coarse_to_fine_masks_are_the_k23_and_k13_dilations_of_a_skeleton(tiny_unet):
    kp = np.zeros((17, 3))
    kp[:, 2] = 1
    kp[:, :2] = [(256, 60), (246, 50), (266, 50), (236, 60), (276, 60), (200, 140), (312, 140), (170, 220),
                 (342, 220), (150, 300), (362, 300), (220, 300), (292, 300), (210, 400), (302, 400), (205, 490),
                 (307, 490)]
    kp[[13, 15], 2] = 0  # no left knee / ankle: a leg missing
    pose = pose_image_to_tensor(render_skeleton([kp], 512))[None]
    coarse, fine = build_adapter(_cfg().model, tiny_unet).pose_masks(pose, (64, 64))
    assert torch.equal(coarse[0], _brute_force_cells(pose[0], 64, 23))
    assert torch.equal(fine[0], _brute_force_cells(pose[0], 64, 13))
    assert (fine <= coarse).all() and coarse.sum() > fine.sum() > 0
    assert not coarse.all() and not coarse[0, 60:, :10].any()  # the feet region of the missing leg stays off

    # Stable-Pose's own recipe, a float32 Gaussian blur and `> -1`: the k=23 mask is all ones (the bug fixed here);
    # at k=13 it is the same dilation as ours.
    def blur_mask(k):
        blurred = gaussian_blur(pose, [k, k], [3.0, 3.0])
        return F.adaptive_max_pool2d((blurred > -1).any(1, keepdim=True).float(), (64, 64))[:, 0] > 0
    assert blur_mask(23).all()
    assert torch.equal(blur_mask(13), fine)
    # The loss's pose-region mask (k=13 blur with a margin) is the fine mask up to its outermost cells.
    loss_mask = pose_region_mask(pose, (64, 64), 13, 3.0)[:, 0] > 0
    assert (loss_mask <= fine).all() and loss_mask.sum() >= 0.97 * fine.sum()


def test_token_mask_allows_pairs_with_a_pose_token():
    cells = torch.zeros(1, 4, 4, dtype=torch.bool)
    cells[0, 3, 3] = True  # only token 3 (bottom right patch) is a pose token
    allowed = token_attention_mask(cells, 2)[0]
    expected = torch.zeros(4, 4, dtype=torch.bool)
    expected[3, :] = expected[:, 3] = True
    assert torch.equal(allowed, expected)


def test_masks_are_computed_in_the_adapter_from_the_pose_image(tiny_unet):
    adapter = build_adapter(_cfg().model, tiny_unet).eval()
    pose = _skeleton_pose(64)
    (condition,) = adapter.encode_pose(pose)
    assert condition.feature.shape == (2, 16, 8, 8)  # model.pose_level_channels[0] at the latent's size
    assert len(condition.masks) == 2 and all(m.shape == (2, 16, 16) and m.dtype == torch.bool
                                             for m in condition.masks)
    expected = [token_attention_mask(dilated_pose_mask(pose, (8, 8), k), 2) for k in (23, 13)]
    assert_identical(list(condition.masks), expected)
    empty = adapter.encode_pose(-torch.ones(1, 3, 64, 64))[0]
    assert not any(m.any() for m in empty.masks)  # no skeleton, no pose token


# ---- the adapter -----------------------------------------------------------------------------------------------


def test_copies_the_unet_and_leaves_it_untouched_at_init(tiny_unet):
    adapter = build_adapter(_cfg().model, tiny_unet).eval()
    assert type(adapter) is StablePoseAdapter
    block = adapter.down_blocks[0].resnets[0]
    assert isinstance(block, AttnResBlock)
    assert not any(isinstance(b.resnets[0], AttnResBlock) for b in adapter.down_blocks[1:])
    unet_state = tiny_unet.state_dict()
    for name in ("conv1", "time_emb_proj", "conv2"):
        for p in ("weight", "bias"):
            assert torch.equal(getattr(getattr(block, name), p), unet_state[f"down_blocks.0.resnets.0.{name}.{p}"])
    assert torch.equal(adapter.down_blocks[1].resnets[0].conv1.weight,
                       unet_state["down_blocks.1.resnets.0.conv1.weight"])
    x, t, text, pose = _inputs()
    with torch.no_grad():
        residuals = adapter.residuals(x, t, text, pose)
        assert len(residuals.down) == 12 and all(r.abs().sum() == 0 for r in residuals.tensors())
        combined = tiny_unet(x, t, text, **residuals.unet_kwargs()).sample
    assert torch.equal(combined, tiny_unet(x, t, text).sample)


def test_attn_res_block_order_of_operations():
    torch.manual_seed(0)
    block = AttnResBlock(32, 32, 16, pose_channels=8, vit_channels=4, vit_heads=2, depth=2).eval()
    x, temb, c = torch.randn(2, 32, 4, 4), torch.randn(2, 16), torch.randn(2, 8, 4, 4)
    masks = (torch.ones(2, 4, 4, dtype=torch.bool),) * 2
    from grpose.models.stable_pose import StablePoseCondition
    with torch.no_grad():
        h = block.conv1(F.silu(x)) + block.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = F.group_norm(block.attn_layer(h, masks), 32) + block.cond_conv(c)
        expected = x + block.conv2(F.silu(h))
        torch.testing.assert_close(block(x, temb, StablePoseCondition(c, masks)), expected)
        with pytest.raises(ValueError, match="VAE's factor"):
            block(x, temb, StablePoseCondition(torch.randn(2, 8, 2, 2), masks))


def test_precomputed_condition_gives_the_same_residuals(tiny_unet):
    adapter = perturb(build_adapter(_cfg().model, tiny_unet))
    x, t, text, pose = _inputs()
    with torch.no_grad():
        assert_identical(adapter.residuals(x, t, text, pose).tensors(),
                          adapter.residuals(x, t, text, adapter.encode_pose(pose)).tensors())
        # the masks matter once the weights are trained: a skeleton in one corner masks most token pairs
        corner = -torch.ones_like(pose)
        corner[:, :, :3, :3] = 1
        (condition,) = adapter.encode_pose(corner)
        assert not condition.masks[0].all()
        unmasked = [replace(condition, masks=tuple(torch.ones_like(m) for m in condition.masks))]
        assert not torch.allclose(adapter.residuals(x, t, text, unmasked).down[1],
                                  adapter.residuals(x, t, text, [condition]).down[1])  # down[0] is conv_in's


def test_gradients_reach_exactly_the_adapter(tiny_cfg, synthetic_batch):
    # 128 px: the tiny UNet's middle block sees 2x2 cells (one token would give its attention zero gradients).
    module = GRPoseLitModule.from_config(tiny_cfg("model.adapter=stable_pose", "optim.lr=1e-3", "data.resolution=128",
                                                  "loss.pose_mask_weight=5.0"))
    module.compute_loss(synthetic_batch(2, resolution=128))["loss"].backward()
    adapter_params = {id(p) for p in module.adapter.parameters()}
    for name, p in module.named_parameters():
        if id(p) in adapter_params:
            assert p.requires_grad, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # The residual zero convs, then the feature extractor's zero conv behind cond_conv, open the chain in a few steps.
    optimizer = module.configure_optimizers()
    for _ in range(4):
        optimizer.step()
        optimizer.zero_grad()
        module.compute_loss(synthetic_batch(2, resolution=128))["loss"].backward()
    missing = [n for n, p in module.adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert len(optimizer.param_groups[0]["params"]) == len(list(module.adapter.parameters()))


@pytest.mark.parametrize("preset", PRESETS)
def test_one_training_step_per_preset(preset, synthetic_batch, monkeypatch):
    monkeypatch.chdir(ROOT)
    full, cfg = load_config(preset), load_config(preset, SHRINK)
    assert cfg.model.adapter == full.model.adapter == "stable_pose"
    assert (full.optim.lr, full.data.batch_size, full.data.prompt_dropout) == (1e-5, 4, 0.5)
    assert (full.loss.pose_mask_weight, full.loss.pose_mask_kernel, full.loss.pose_perception.alpha) == (5.0, 13, 0)
    module = GRPoseLitModule.from_config(cfg)
    before = {n: p.detach().clone() for n, p in module.adapter.named_parameters()}
    optimizer = module.configure_optimizers()
    loss = module.compute_loss(synthetic_batch(2))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in module.adapter.named_parameters())


def test_train_resume_export_and_sample(tmp_path, monkeypatch):
    """The preset through train.py (2 steps), --resume to 3, the run's adapter through the one loader and the
    shared pipeline."""
    monkeypatch.chdir(ROOT)
    common = ["--config", PRESETS[0], *SHRINK, f"output_dir={tmp_path}", "name=run", "data.batch_size=2",
              "data.synthetic_train_size=8", "trainer.checkpoint_every_n_steps=1", "trainer.limit_val_batches=0",
              "trainer.sample_every_n_steps=0", "trainer.logger=csv", "sampling.num_images=1"]
    train.main([*common, "trainer.max_steps=2"])
    trainer = train.main([*common, "trainer.max_steps=3", "--resume", "last"])
    assert trainer.global_step == 3
    assert {float(s["step"]) for s in trainer.optimizers[0].state_dict()["state"].values()} == {3.0}
    run_dir = tmp_path / "run"
    cfg = load_config(PRESETS[0], SHRINK)
    exported = load_adapter(run_dir / "adapter", expected=cfg.model)
    from_ckpt = load_adapter(run_dir / "checkpoints" / "last.ckpt", expected=cfg.model)
    assert type(exported) is StablePoseAdapter and type(from_ckpt) is StablePoseAdapter
    inputs = _inputs()
    assert_identical(residual_tensors(exported, inputs), residual_tensors(from_ckpt, inputs))
    pipe = GRPosePipeline.from_pretrained(None, run_dir / "adapter", arch="tiny", device="cpu")
    images = pipe(["a person"], inputs[3][:1], [5], num_inference_steps=2, progress=False)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()


def test_export_import_round_trip_gives_identical_outputs(tiny_unet, tmp_path):
    adapter = perturb(build_adapter(_cfg().model, tiny_unet))
    adapter.save_pretrained(tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["_class_name"] == "StablePoseAdapter"
    inputs = _inputs()
    expected = residual_tensors(adapter, inputs)
    for loaded in (load_adapter(tmp_path / "exported"), load_adapter(tmp_path / "exported", expected=_cfg().model)):
        assert type(loaded) is StablePoseAdapter
        assert_identical(residual_tensors(loaded, inputs), expected)
    with pytest.raises(WeightsError, match="another adapter architecture"):
        load_adapter(tmp_path / "exported",
                     expected=load_config(None, [*TINY_OVERRIDES, "model.adapter=uni_controlnet"]).model)


# ---- full size (meta device) -----------------------------------------------------------------------------------


def _full_size():
    cfg = load_config(None, ["model.adapter=stable_pose", "model.pretrained=null"])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("sd15", "unet"))
        return cfg, build_adapter(cfg.model, unet, load_weights_from_unet=False)


def test_full_size_parameter_counts():
    _, adapter = _full_size()
    block = adapter.down_blocks[0].resnets[0]
    assert count_parameters(block.attn_layer) == 3_367_872  # PMSAViT(64, 2, dim 512, depth 2, heads 8, dim_head 40)
    assert count_parameters(adapter.feature_extractor) == 831_104
    # SD1.5 encoder 348,712,960 - 2 GroupNorm affines 1,280 + cond_conv 553,280 + PMSAViT + feature extractor
    # + 13 zero convs 11,479,680
    assert count_parameters(adapter) == count_parameters(adapter, trainable_only=True) == 364_943_616
    vit = block.attn_layer
    assert (vit.dim, vit.transformer.layers[0][0].heads, vit.transformer.layers[0][0].head_dim) == (512, 8, 40)


# ---- conversion of the released layout -------------------------------------------------------------------------


def _release_key(ours: str) -> str:
    """Our key -> Stable-Pose's (`stable_pose_adapter.` + LDM names), written independently of the converter."""
    return "stable_pose_adapter." + _uni_release_key(ours).removeprefix("local_adapter.")


_FROZEN = {  # one tensor from each other part of a Stable-Pose checkpoint
    "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (32,),
    "alphas_cumprod": (1000,),
}


def _release(adapter, meta=False):
    release = {_release_key(k): v.clone() for k, v in adapter.state_dict().items()}
    make = (lambda s: torch.empty(s, device="meta")) if meta else torch.randn
    release.update({k: make(shape) for k, shape in _FROZEN.items()})
    return release


@pytest.mark.parametrize("wrapped", [True, False], ids=["lightning", "bare"])
def test_released_stable_pose_converts_to_an_identical_adapter(wrapped, tiny_unet, tmp_path, capsys):
    adapter = perturb(build_adapter(_cfg().model, tiny_unet))
    release = _release(adapter)
    assert "stable_pose_adapter.input_blocks.1.0.attn_layer.to_patch_embedding.0.weight" in release
    assert "stable_pose_adapter.input_blocks.1.0.cond_conv.weight" in release
    path = tmp_path / "final.pth"
    torch.save({"state_dict": release} if wrapped else release, path)
    report = load_entry_point("scripts/convert_baseline_ckpt.py").main(
        ["stable_pose", str(path), str(tmp_path / "out"), *TINY_OVERRIDES])
    assert report["unmapped"] == [] and sorted(report["dropped"]) == sorted(_FROZEN)
    assert report["mapped"]["down_blocks.0.resnets.0.conv2.weight"] == \
        "stable_pose_adapter.input_blocks.1.0.out_layers.3.weight"
    assert "unmapped: 0" in capsys.readouterr().out
    converted = load_adapter(tmp_path / "out", expected=_cfg().model)
    assert type(converted) is StablePoseAdapter
    assert_identical(residual_tensors(converted, _inputs()), residual_tensors(adapter, _inputs()))


@pytest.mark.parametrize("change, message", [
    ({"stable_pose_adapter.input_blocks.1.0.attn_layer.final_norm.weight": torch.zeros(1)},
     r"unexpected: stable_pose_adapter\.input_blocks\.1\.0\.attn_layer\.final_norm\.weight"),
    ({"stable_pose_adapter.feature_extractor.post_extractor.0.weight": torch.zeros(1)},
     r"no place in our layout: stable_pose_adapter\.feature_extractor\.post_extractor\.0\.weight"),
    ({"local_adapter.time_embed.0.weight": torch.zeros(1)}, r"no known part: local_adapter\.time_embed"),
    ({"stable_pose_adapter.input_blocks.1.0.cond_conv.bias": None}, r"missing: down_blocks\.0\.resnets\.0\.cond_conv"),
], ids=["unknown-block-key", "unknown-extractor-key", "unknown-top-level", "missing"])
def test_conversion_fails_with_one_line_naming_the_key(tiny_unet, change, message):
    state = _release(build_adapter(_cfg().model, tiny_unet))
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(WeightsError, match=message) as err:
        convert_baseline_state_dict("stable_pose", state, _cfg().model, "final.pth")
    assert "\n" not in str(err.value)


def test_conversion_refuses_a_checkpoint_without_the_adapter():
    with pytest.raises(WeightsError, match=r"no 'stable_pose_adapter\.\*' keys"):
        convert_baseline_state_dict("stable_pose", {"local_adapter.x": torch.zeros(1)}, _cfg().model, "uni.ckpt")


def test_full_size_release_layout_maps_completely():
    cfg, adapter = _full_size()
    release = _release(adapter, meta=True)
    # the shapes the published layout has (docs/baselines.md)
    shapes = {re.sub(r"^stable_pose_adapter\.", "", k): tuple(v.shape) for k, v in release.items()}
    assert shapes["feature_extractor.pre_extractor.0.weight"] == (32, 3, 3, 3)
    assert shapes["feature_extractor.extractors.0.0.weight"] == (192, 128, 3, 3)
    assert shapes["input_blocks.1.0.cond_conv.weight"] == (320, 192, 3, 3)
    assert shapes["input_blocks.1.0.attn_layer.transformer.layers.1.0.to_qkv.weight"] == (960, 512)
    assert shapes["input_blocks.1.0.attn_layer.transformer.layers.0.0.to_out.weight"] == (512, 320)
    assert shapes["input_blocks.1.0.attn_layer.to_out.1.weight"] == (320, 128, 3, 3)
    converted, report = prepare_stable_pose_state_dict(release, cfg.model, "final.pth")
    assert report["unmapped"] == [] and len(converted) == len(adapter.state_dict())
    assert len(report["dropped"]) == len(_FROZEN)
    check_state_dict(adapter.state_dict(), converted, "final.pth")
