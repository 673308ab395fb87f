"""Paper Table 1 baselines as grpose adapters: T2I-Adapter and Uni-ControlNet (pose only), on the tiny model.

Per method: behaviour at init, gradients, train / resume / export / sample / evaluate through the shared entry
points, export -> import, full-size parameter counts (meta device), and conversion of the released key layouts.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers import T2IAdapter, UNet2DConditionModel

import train
from grpose.cli import run
from grpose.config import load_config
from grpose.errors import WeightsError
from grpose.lit_module import GRPoseLitModule
from grpose.models.adapter import T2IAdapterBaseline, UniControlNetAdapter, build_adapter, count_parameters
from grpose.models.residuals import UNetResiduals
from grpose.models.uni_controlnet import FDNResBlock
from grpose.pipeline import GRPosePipeline
from grpose.sd15 import build_sd15, sd15_config
from grpose.weights import check_state_dict, load_adapter
from grpose.weights.baselines import (UNI_OPENPOSE_CHANNELS, convert_baseline_state_dict,
                                      prepare_t2i_adapter_state_dict, prepare_uni_controlnet_state_dict)

from .adapter_checks import assert_identical, perturb, residual_tensors
from .conftest import TINY_OVERRIDES, load_entry_point

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("t2i_adapter", "uni_controlnet")
CLASSES = {"t2i_adapter": T2IAdapterBaseline, "uni_controlnet": UniControlNetAdapter}
PRESETS = {"t2i_adapter": "configs/baselines/t2i_adapter_humanart.yaml",
           "uni_controlnet": "configs/baselines/uni_controlnet_humanart.yaml"}
# The presets are full-size Human-Art recipes; these make them tiny, synthetic and CPU-only.
SHRINK = [*TINY_OVERRIDES, "model.adapter_weights=null", "model.frozen_dtype=fp32", "trainer.precision=32-true"]


def _cfg(kind, *extra):
    return load_config(None, [*TINY_OVERRIDES, f"model.adapter={kind}", *extra])


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_sd15("tiny").unet.eval()


def _inputs(batch: int = 2, seed: int = 1, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, size // 8, size // 8, generator=g)
    timestep = torch.tensor([10, 900])[:batch]
    text = torch.randn(batch, 77, 32, generator=g)  # tiny CLIP width
    pose = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    return sample, timestep, text, pose


# ---- the protocol --------------------------------------------------------------------------------------------


def test_residual_kinds_map_to_their_unet_keywords():
    t = [torch.zeros(1)]
    assert UNetResiduals().unet_kwargs() == {}
    assert set(UNetResiduals(down=t, mid=t[0]).unet_kwargs()) == {"down_block_additional_residuals",
                                                                  "mid_block_additional_residual"}
    assert set(UNetResiduals(intrablock=t).unet_kwargs()) == {"down_intrablock_additional_residuals"}
    with pytest.raises(ValueError, match="both"):  # diffusers would read this as the deprecated adapter path
        UNetResiduals(down=t)


@torch.no_grad()
def test_t2i_features_are_never_mutated_and_residuals_serve_several_unet_calls(tiny_unet):
    """The UNet pops the intrablock list and adds the last feature in place into its hidden state. The features a
    sampler caches for all steps and both CFG halves must stay as they were, and one UNetResiduals may feed several
    UNet calls."""
    adapter = build_adapter(_cfg("t2i_adapter").model, tiny_unet).eval()
    x, t, text, pose = _inputs()
    features = adapter.encode_pose(pose)
    kept = [f.clone() for f in features]
    residuals = adapter.residuals(x, t, text, features)
    assert len(residuals.intrablock) == 4 and all(r is not f for r, f in zip(residuals.intrablock, features))
    first = tiny_unet(x, t, text, **residuals.unet_kwargs()).sample
    second = tiny_unet(x, t, text, **residuals.unet_kwargs()).sample
    # the cached features again, at another step: the same features, the same result
    third = tiny_unet(x, t, text, **adapter.residuals(x, t, text, features).unet_kwargs()).sample
    assert torch.equal(first, second) and torch.equal(first, third)
    assert_identical(features, kept)
    assert_identical(residuals.intrablock, kept)
    assert not torch.equal(first, tiny_unet(x, t, text).sample)  # the features do reach the UNet


def test_t2i_adapter_at_scale_zero_leaves_the_base_unchanged(tiny_unet):
    # T2I-Adapter is not zero-initialised: at init it already changes the base, except at conditioning scale 0.
    adapter = build_adapter(_cfg("t2i_adapter").model, tiny_unet).eval()
    x, t, text, pose = _inputs()
    with torch.no_grad():
        base = tiny_unet(x, t, text).sample
        off = tiny_unet(x, t, text, **adapter.residuals(x, t, text, pose, conditioning_scale=0.0).unet_kwargs())
        on = tiny_unet(x, t, text, **adapter.residuals(x, t, text, pose).unet_kwargs())
    assert torch.equal(off.sample, base)
    assert (on.sample - base).abs().max() > 1e-4
    # channels follow the UNet's levels; the features sit at the four levels' resolutions
    assert adapter.config.channels == list(tiny_unet.config.block_out_channels)
    assert [tuple(f.shape[1:]) for f in adapter.encode_pose(pose)] == [(32, 8, 8), (32, 4, 4), (64, 2, 2), (64, 1, 1)]


def test_uni_controlnet_copies_the_unet_and_leaves_it_untouched_at_init(tiny_unet):
    adapter = build_adapter(_cfg("uni_controlnet").model, tiny_unet).eval()
    unet_state = tiny_unet.state_dict()
    for level, block in enumerate(adapter.down_blocks):
        fdn = block.resnets[0]
        assert isinstance(fdn, FDNResBlock)
        # conv1, time_emb_proj, conv2 (SD's weights, not zeros) and the shortcut come from the replaced SD block
        for name in ("conv1", "time_emb_proj", "conv2") + (("conv_shortcut",) if fdn.conv_shortcut else ()):
            for p in ("weight", "bias"):
                assert torch.equal(getattr(getattr(fdn, name), p),
                                   unet_state[f"down_blocks.{level}.resnets.0.{name}.{p}"])
    assert adapter.down_blocks[2].resnets[0].conv_shortcut is not None  # 32 -> 64 channels in the tiny UNet
    assert torch.equal(adapter.down_blocks[1].attentions[0].proj_in.weight,
                       unet_state["down_blocks.1.attentions.0.proj_in.weight"])
    x, t, text, pose = _inputs()
    with torch.no_grad():
        residuals = adapter.residuals(x, t, text, pose)
        assert all(r.abs().sum() == 0 for r in residuals.tensors()) and len(residuals.down) == 12
        combined = tiny_unet(x, t, text, **residuals.unet_kwargs()).sample
    assert torch.equal(combined, tiny_unet(x, t, text).sample)


def test_fdn_is_groupnorm_denormalised_by_the_condition():
    block = FDNResBlock(32, 64, 16, condition_channels=8).eval()
    x, c = torch.randn(2, 32, 4, 4), torch.randn(2, 8, 4, 4)
    fdn = block.norm_in
    expected = F.group_norm(x, 32) * (1 + fdn.conv_gamma(c)) + fdn.conv_beta(c)
    torch.testing.assert_close(fdn(x, c), expected)
    with pytest.raises(ValueError, match="same size"):
        fdn(x, torch.randn(2, 8, 2, 2))


def test_precomputed_pose_features_give_the_same_residuals(tiny_unet):
    for kind in KINDS:
        adapter = perturb(build_adapter(_cfg(kind).model, tiny_unet))
        x, t, text, pose = _inputs()
        with torch.no_grad():
            assert_identical(adapter.residuals(x, t, text, pose).tensors(),
                              adapter.residuals(x, t, text, adapter.encode_pose(pose)).tensors())


# ---- training --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gradients_reach_exactly_the_adapter(kind, tiny_cfg, synthetic_batch):
    # 128 px: the tiny UNet's middle block sees 2x2 cells (one token would give its attention zero gradients).
    module = GRPoseLitModule.from_config(tiny_cfg(f"model.adapter={kind}", "optim.lr=1e-3", "data.resolution=128"))
    module.compute_loss(synthetic_batch(2, resolution=128))["loss"].backward()
    adapter_params = {id(p) for p in module.adapter.parameters()}
    for name, p in module.named_parameters():
        if id(p) in adapter_params:
            assert p.requires_grad, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # T2I-Adapter has no zero convs: every parameter learns from the first step. Uni-ControlNet's zero convs (the
    # residual ones, then the feature extractor's behind the FDNs) open the chain over a few steps.
    optimizer = module.configure_optimizers()
    for _ in range(0 if kind == "t2i_adapter" else 4):
        optimizer.step()
        optimizer.zero_grad()
        module.compute_loss(synthetic_batch(2, resolution=128))["loss"].backward()
    missing = [n for n, p in module.adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []
    assert len(optimizer.param_groups[0]["params"]) == len(list(module.adapter.parameters()))


@pytest.mark.parametrize("preset", sorted(str(p.relative_to(ROOT)) for kind in KINDS
                                    for p in (ROOT / "configs" / "baselines").glob(f"{kind}_*.yaml")))
def test_one_training_step_per_preset(preset, synthetic_batch, monkeypatch):
    monkeypatch.chdir(ROOT)
    full, cfg = load_config(preset), load_config(preset, SHRINK)
    assert cfg.model.adapter == full.model.adapter in KINDS and full.loss.pose_perception.alpha == 0
    module = GRPoseLitModule.from_config(cfg)
    before = {n: p.detach().clone() for n, p in module.adapter.named_parameters()}
    optimizer = module.configure_optimizers()
    loss = module.compute_loss(synthetic_batch(2))["loss"]
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert any(not torch.equal(p, before[n]) for n, p in module.adapter.named_parameters())


@pytest.mark.parametrize("kind", KINDS)
def test_train_resume_export_sample_and_evaluate(kind, tmp_path, monkeypatch):
    """The preset through train.py (2 steps), --resume to 3 steps, the run's exported adapter through the one loader,
    the shared pipeline and eval_pose.py."""
    monkeypatch.chdir(ROOT)
    preset = PRESETS[kind]
    common = ["--config", preset, *SHRINK, f"output_dir={tmp_path}", "name=run", "data.batch_size=2",
              "data.synthetic_train_size=8", "trainer.checkpoint_every_n_steps=1", "trainer.limit_val_batches=0",
              "trainer.sample_every_n_steps=0", "trainer.logger=csv", "sampling.num_images=1"]
    train.main([*common, "trainer.max_steps=2"])
    trainer = train.main([*common, "trainer.max_steps=3", "--resume", "last"])
    assert trainer.global_step == 3
    assert {float(s["step"]) for s in trainer.optimizers[0].state_dict()["state"].values()} == {3.0}

    run_dir = tmp_path / "run"
    cfg = load_config(preset, SHRINK)
    exported = load_adapter(run_dir / "adapter", expected=cfg.model)
    from_ckpt = load_adapter(run_dir / "checkpoints" / "last.ckpt", expected=cfg.model)
    assert type(exported) is CLASSES[kind] and type(from_ckpt) is CLASSES[kind]
    inputs = _inputs()
    assert_identical(residual_tensors(exported, inputs), residual_tensors(from_ckpt, inputs))

    pipe = GRPosePipeline.from_pretrained(None, run_dir / "adapter", arch="tiny", device="cpu")
    images = pipe(["a person"], inputs[3][:1], [5], num_inference_steps=2, progress=False)
    assert images.shape == (1, 3, 64, 64) and torch.isfinite(images).all()

    out = tmp_path / "outputs"
    status = run(load_entry_point("eval_pose.py").main,
                 ["--config", preset, *SHRINK, "--ckpt", str(run_dir / "adapter"), "--limit", "2", "--metrics",
                  "none", f"eval.output_dir={out}", "eval.run_name=ev", "sampling.num_inference_steps=2"])
    assert status == 0
    records = [json.loads(line) for line in (out / "ev" / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 2


@pytest.mark.parametrize("kind", KINDS)
def test_export_import_round_trip_gives_identical_outputs(kind, tiny_unet, tmp_path):
    adapter = perturb(build_adapter(_cfg(kind).model, tiny_unet))
    adapter.save_pretrained(tmp_path / "exported")
    config = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert config["_class_name"] == CLASSES[kind].__name__
    inputs = _inputs()
    expected = residual_tensors(adapter, inputs)
    for loaded in (load_adapter(tmp_path / "exported"), load_adapter(tmp_path / "exported", expected=_cfg(kind).model),
                   CLASSES[kind].from_pretrained(tmp_path / "exported")):
        assert type(loaded) is CLASSES[kind]
        assert_identical(residual_tensors(loaded, inputs), expected)
    other = "uni_controlnet" if kind == "t2i_adapter" else "t2i_adapter"
    with pytest.raises(WeightsError, match="another adapter architecture"):
        load_adapter(tmp_path / "exported", expected=_cfg(other).model)


@pytest.mark.parametrize("safe", [True, False], ids=["safetensors", "bin"])
def test_a_diffusers_t2i_adapter_folder_loads_directly(safe, tmp_path):
    """A folder written by diffusers' own T2IAdapter (the Hub's t2iadapter_*_sd14v1 repos hold only the .bin)."""
    torch.manual_seed(2)
    original = T2IAdapter(in_channels=3, channels=[32, 32, 64, 64], num_res_blocks=2, downscale_factor=8,
                          adapter_type="full_adapter").eval()
    original.save_pretrained(tmp_path / "hub", safe_serialization=safe)
    loaded = load_adapter(tmp_path / "hub", expected=_cfg("t2i_adapter").model)
    assert type(loaded) is T2IAdapterBaseline
    pose = _inputs()[3]
    with torch.no_grad():
        assert_identical(loaded.encode_pose(pose), original((pose + 1) / 2))  # theirs takes [0, 1]


# ---- parameter counts at full size (meta device) ---------------------------------------------------------------


def _full_size(kind):
    cfg = load_config(None, [f"model.adapter={kind}", "model.pretrained=null"])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("sd15", "unet"))
        return cfg, build_adapter(cfg.model, unet, load_weights_from_unet=False)


@pytest.mark.parametrize("kind, expected", [
    ("t2i_adapter", 77_369_280),  # the keypose / openpose sd14v1 releases (T2I-Adapter's model zoo: 77 M)
    # SD1.5 encoder 348,712,960 - 8 affine GroupNorms 12,160 + FDN convs 43,511,680 + feature extractor 8,206,208
    # + 13 zero convs 11,479,680
    ("uni_controlnet", 411_898_368),
])
def test_full_size_trainable_parameter_count(kind, expected):
    _, adapter = _full_size(kind)
    assert count_parameters(adapter) == expected
    assert count_parameters(adapter, trainable_only=True) == expected


# ---- released checkpoints: T2I-Adapter -------------------------------------------------------------------------


def _t2i_original_layout(channels, cin, nums_rb=2, device=None, seed=0):
    """The original `Adapter(cin, channels, nums_rb, ksize=1, sk=True, use_conv=False)` state dict, from its module
    names: `conv_in`; a flat `body` of len(channels) * nums_rb ResnetBlocks (block1 3x3, block2 1x1), where the first
    block of a level whose channels change also has a 1x1 `in_conv`."""
    g = torch.Generator().manual_seed(seed)

    def tensor(*shape):
        return torch.empty(shape, device="meta") if device == "meta" else torch.randn(shape, generator=g) * 0.05

    state = {"conv_in.weight": tensor(channels[0], cin, 3, 3), "conv_in.bias": tensor(channels[0])}
    for i, c in enumerate(channels):
        for j in range(nums_rb):
            n = i * nums_rb + j
            if j == 0 and i > 0 and channels[i - 1] != c:
                state[f"body.{n}.in_conv.weight"] = tensor(c, channels[i - 1], 1, 1)
                state[f"body.{n}.in_conv.bias"] = tensor(c)
            state[f"body.{n}.block1.weight"] = tensor(c, c, 3, 3)
            state[f"body.{n}.block1.bias"] = tensor(c)
            state[f"body.{n}.block2.weight"] = tensor(c, c, 1, 1)
            state[f"body.{n}.block2.bias"] = tensor(c)
    return state


def _t2i_reference(original: dict) -> torch.nn.Module:
    """An independent forward of the original layout: unshuffle, conv_in, then per block (avg-pool + in_conv on a
    level's first block except the first level) x + block2(relu(block1(x))); a feature after each level."""
    def run(pose01):
        h = F.conv2d(F.pixel_unshuffle(pose01, 8), original["conv_in.weight"], original["conv_in.bias"], padding=1)
        feats = []
        for i in range(4):
            for j in range(2):
                n = 2 * i + j
                if j == 0 and i > 0:
                    h = F.avg_pool2d(h, 2)
                    if f"body.{n}.in_conv.weight" in original:
                        h = F.conv2d(h, original[f"body.{n}.in_conv.weight"], original[f"body.{n}.in_conv.bias"])
                r = F.relu(F.conv2d(h, original[f"body.{n}.block1.weight"], original[f"body.{n}.block1.bias"],
                                    padding=1))
                h = h + F.conv2d(r, original[f"body.{n}.block2.weight"], original[f"body.{n}.block2.bias"])
            feats.append(h)
        return feats
    return run


@pytest.mark.parametrize("prefix", ["", "adapter."])
def test_released_t2i_adapter_converts_and_matches_the_original_computation(prefix, tmp_path, capsys):
    original = _t2i_original_layout([32, 32, 64, 64], cin=3 * 64)
    assert len(original) == 2 + 8 * 4 + 2  # conv_in, 8 blocks, one in_conv (the tiny levels change once)
    path = tmp_path / "t2iadapter_keypose_sd14v1.pth"
    torch.save({prefix + k: v for k, v in original.items()}, path)
    report = load_entry_point("scripts/convert_baseline_ckpt.py").main(
        ["t2i_adapter", str(path), str(tmp_path / "out"), *TINY_OVERRIDES])
    assert report["unmapped"] == [] and len(report["mapped"]) == len(original)
    printed = capsys.readouterr().out
    assert "unmapped: 0" in printed and "key layout: original" in printed
    converted = load_adapter(tmp_path / "out", expected=_cfg("t2i_adapter").model)
    pose = _inputs()[3]
    with torch.no_grad():
        got = converted.encode_pose(pose)
        want = _t2i_reference(original)((pose + 1) / 2)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b)


def test_diffusers_layout_t2i_state_dict_converts_too(tiny_unet):
    adapter = perturb(build_adapter(_cfg("t2i_adapter").model, tiny_unet))
    converted, report = convert_baseline_state_dict("t2i_adapter", adapter.state_dict(), _cfg("t2i_adapter").model)
    assert report["layout"] == "diffusers"
    assert_identical(residual_tensors(converted, _inputs()), residual_tensors(adapter, _inputs()))


@pytest.mark.parametrize("change, message", [
    ({"body.0.skep.weight": torch.zeros(1)}, r"no place in T2I-Adapter's layout: body\.0\.skep\.weight"),
    ({"body.1.in_conv.weight": torch.zeros(1)}, r"no place .*body\.1\.in_conv\.weight"),
    ({"body.7.block2.bias": None}, r"missing: adapter\.body\.3\.resnets\.1\.block2\.bias"),
    ({"conv_in.weight": torch.zeros(32, 3, 3, 3)}, r"another shape: conv_in\.weight"),
], ids=["unknown", "in-conv-on-a-second-block", "missing", "shape"])
def test_t2i_conversion_fails_with_one_line_naming_the_key(change, message):
    state = _t2i_original_layout([32, 32, 64, 64], cin=3 * 64)
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(WeightsError, match=message) as err:
        convert_baseline_state_dict("t2i_adapter", state, _cfg("t2i_adapter").model, "keypose.pth")
    assert "\n" not in str(err.value)


def test_full_size_t2i_release_layout_maps_completely():
    cfg, adapter = _full_size("t2i_adapter")
    original = _t2i_original_layout([320, 640, 1280, 1280], cin=3 * 64, device="meta")
    assert len(original) == 38  # the released files hold 38 tensors
    assert sum(t.numel() for t in original.values()) == 77_369_280
    converted, report = prepare_t2i_adapter_state_dict(original, cfg.model, "t2iadapter_keypose_sd14v1.pth")
    assert report["unmapped"] == [] and len(converted) == len(adapter.state_dict())
    check_state_dict(adapter.state_dict(), converted, "t2iadapter_keypose_sd14v1.pth")  # keys and shapes


# ---- released checkpoints: Uni-ControlNet ----------------------------------------------------------------------

# Our key -> the release's, written from Uni-ControlNet's module names (LDM UNet naming, LocalResBlock, FDN,
# FeatureExtractor), independently of the converter under test.
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection"}
_MID = {"resnets.0": "middle_block.0", "attentions.0": "middle_block.1", "resnets.1": "middle_block.2"}


def _resnet_part(rest: str) -> str:
    module, param = rest.rsplit(".", 1)
    return f"{_RESNET.get(module, module)}.{param}"  # FDN names (norm_in.conv_gamma, ...) are the release's own


def _uni_release_key(key: str, layers_per_block: int = 2) -> str:
    simple = [(r"conv_in\.(.*)", r"input_blocks.0.0.\1"), (r"time_embedding\.linear_1\.(.*)", r"time_embed.0.\1"),
              (r"time_embedding\.linear_2\.(.*)", r"time_embed.2.\1"),
              (r"controlnet_down_blocks\.(\d+)\.(.*)", r"zero_convs.\1.0.\2"),
              (r"controlnet_mid_block\.(.*)", r"middle_block_out.0.\1"),
              (r"feature_extractor\.stem\.(.*)", r"feature_extractor.pre_extractor.\1"),
              (r"feature_extractor\.stages\.(\d+)\.0\.(.*)", r"feature_extractor.extractors.\1.0.\2"),
              (r"feature_extractor\.zero_convs\.(.*)", r"feature_extractor.zero_convs.\1")]
    for pattern, replacement in simple:
        if re.fullmatch(pattern, key):
            return "local_adapter." + re.sub(pattern, replacement, key)
    step = layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        return f"local_adapter.input_blocks.{1 + step * int(m[1]) + int(m[2])}.0.{_resnet_part(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        return f"local_adapter.input_blocks.{1 + step * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"local_adapter.input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets\.\d|attentions\.0)\.(.*)", key):
        rest = _resnet_part(m[2]) if m[1].startswith("resnets") else m[2]
        return f"local_adapter.{_MID[m[1]]}.{rest}"
    raise AssertionError(f"the test's inverse mapping does not cover {key}")


_UNI_FROZEN = {  # one tensor from each other part of the integrated uni.ckpt
    "global_adapter.ff1.weight": (8, 8),
    "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (32,),
    "betas": (1000,),
}


def _uni_release(adapter, meta=False):
    """The adapter's weights in uni.ckpt's layout, with the released 21-channel condition input: ours at the openpose
    channels, other values elsewhere (the other six conditions)."""
    release = {_uni_release_key(k): v.clone() for k, v in adapter.state_dict().items()}
    first = "local_adapter.feature_extractor.pre_extractor.0.weight"
    w = release[first]
    start, stop = UNI_OPENPOSE_CHANNELS
    full = torch.empty(w.shape[0], 21, *w.shape[2:], device=w.device) if meta else torch.randn(w.shape[0], 21, 3, 3)
    if not meta:
        full[:, start:stop] = w
    release[first] = full
    make = (lambda s: torch.empty(s, device="meta")) if meta else torch.randn
    release.update({k: make(shape) for k, shape in _UNI_FROZEN.items()})
    return release


def test_released_uni_controlnet_converts_to_an_identical_adapter(tiny_unet, tmp_path, capsys):
    adapter = perturb(build_adapter(_cfg("uni_controlnet").model, tiny_unet))
    release = _uni_release(adapter)
    path = tmp_path / "uni.ckpt"
    torch.save({"state_dict": release}, path)
    report = load_entry_point("scripts/convert_baseline_ckpt.py").main(
        ["uni_controlnet", str(path), str(tmp_path / "out"), *TINY_OVERRIDES])
    assert report["unmapped"] == [] and sorted(report["dropped"]) == sorted(_UNI_FROZEN)
    assert report["sliced"] and report["condition_channels"] == 21
    assert report["mapped"]["down_blocks.3.resnets.0.norm_in.conv_gamma.weight"] == \
        "local_adapter.input_blocks.10.0.norm_in.conv_gamma.weight"
    assert report["mapped"]["down_blocks.1.resnets.0.conv2.weight"] == "local_adapter.input_blocks.4.0.out_layers.3.weight"
    printed = capsys.readouterr().out
    assert "unmapped: 0" in printed and "global_adapter." in printed and "openpose" in printed
    converted = load_adapter(tmp_path / "out", expected=_cfg("uni_controlnet").model)
    assert_identical(residual_tensors(converted, _inputs()), residual_tensors(adapter, _inputs()))


def test_keeping_the_openpose_channels_equals_zeros_for_the_other_conditions():
    w, b = torch.randn(8, 21, 3, 3, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    pose = torch.rand(2, 3, 16, 16, dtype=torch.float64)
    start, stop = UNI_OPENPOSE_CHANNELS
    stacked = torch.zeros(2, 21, 16, 16, dtype=torch.float64)
    stacked[:, start:stop] = pose
    torch.testing.assert_close(F.conv2d(pose, w[:, start:stop], b, padding=1), F.conv2d(stacked, w, b, padding=1))


@pytest.mark.parametrize("change, message", [
    ({"local_adapter.input_blocks.1.0.norm_mid.conv_gamma.weight": torch.zeros(1)},
     r"unexpected: local_adapter\.input_blocks\.1\.0\.norm_mid\.conv_gamma\.weight"),
    ({"local_adapter.feature_extractor.post_extractor.0.weight": torch.zeros(1)},
     r"no place in our layout: local_adapter\.feature_extractor\.post_extractor\.0\.weight"),
    ({"control_model.time_embed.0.weight": torch.zeros(1)}, r"no known part: control_model\.time_embed"),
    ({"local_adapter.input_blocks.4.0.norm_out.conv_beta.bias": None},
     r"missing: down_blocks\.1\.resnets\.0\.norm_out\.conv_beta\.bias"),
    ({"local_adapter.feature_extractor.pre_extractor.0.weight": torch.zeros(16, 6, 3, 3)},
     r"takes 6 condition channels"),
], ids=["unknown-trunk-key", "unknown-extractor-key", "unknown-top-level", "missing", "channels"])
def test_uni_conversion_fails_with_one_line_naming_the_key(tiny_unet, change, message):
    state = _uni_release(build_adapter(_cfg("uni_controlnet").model, tiny_unet))
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(WeightsError, match=message) as err:
        convert_baseline_state_dict("uni_controlnet", state, _cfg("uni_controlnet").model, "uni.ckpt")
    assert "\n" not in str(err.value)


def test_full_size_uni_controlnet_release_layout_maps_completely():
    cfg, adapter = _full_size("uni_controlnet")
    release = _uni_release(adapter, meta=True)
    converted, report = prepare_uni_controlnet_state_dict(release, cfg.model, "uni.ckpt")
    assert report["unmapped"] == [] and len(converted) == len(adapter.state_dict())
    assert report["sliced"] and len(report["dropped"]) == len(_UNI_FROZEN)
    check_state_dict(adapter.state_dict(), converted, "uni.ckpt")  # keys and shapes
    # the released local adapter: 21 condition channels, 5,184 more parameters in its first conv
    assert sum(v.numel() for k, v in release.items() if k.startswith("local_adapter.")) == 411_903_552


def test_convert_cli_errors_are_one_line(tmp_path, capsys):
    torch.save({"body.0.skep.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    status = run(load_entry_point("scripts/convert_baseline_ckpt.py").main,
                 ["t2i_adapter", str(tmp_path / "bad.pth"), str(tmp_path / "out"), *TINY_OVERRIDES])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("error: Cannot convert") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
