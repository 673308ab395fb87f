"""Released ControlNet openpose checkpoints -> our `controlnet` baseline (diffusers' ControlNetModel): ControlNet 1.0's
whole-ControlLDM `.pth`, ControlNet 1.1's `control_model.*` `.pth`, and the diffusers-format folder."""

from __future__ import annotations

import json
import re

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from grpose.cli import run
from grpose.config import load_config
from grpose.errors import WeightsError
from grpose.models.adapter import ControlNetBaseline, build_adapter, count_parameters
from grpose.sd15 import build_sd15, sd15_config
from grpose.weights import check_state_dict, load_adapter
from grpose.weights.baselines import convert_baseline_state_dict, prepare_controlnet_state_dict

from .adapter_checks import perturb, residual_tensors
from .conftest import TINY_OVERRIDES, load_entry_point
from .test_baselines import _uni_release_key


def _cfg(*extra):
    return load_config(None, [*TINY_OVERRIDES, "model.adapter=controlnet", *extra])


@pytest.fixture(scope="module")
def tiny_unet():
    torch.manual_seed(0)
    return build_sd15("tiny").unet.eval()


def _inputs(batch: int = 2, seed: int = 1, size: int = 64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 4, size // 8, size // 8, generator=g), torch.tensor([10, 900])[:batch],
            torch.randn(batch, 77, 32, generator=g), torch.rand(batch, 3, size, size, generator=g) * 2 - 1)


def _perturbed(tiny_unet):
    return perturb(build_adapter(_cfg().model, tiny_unet))


def _assert_same_outputs(a, b):
    # The weights are compared exactly (_assert_same_weights); outputs of convs may differ in the last bit with the
    # thread count, so they are compared to float32 rounding.
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def _assert_same_weights(a, b):
    a, b = a.state_dict(), b.state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def _ldm_key(ours: str) -> str:
    """Our (diffusers) key -> ControlNet's LDM name without `control_model.`, written independently of the converter:
    the hint encoder is `input_hint_block` = conv, SiLU, conv, SiLU, ..., zero conv (convs at even indices)."""
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_in\.(.*)", ours):
        return f"input_hint_block.0.{m[1]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(.*)", ours):
        return f"input_hint_block.{2 * int(m[1]) + 2}.{m[2]}"
    if m := re.fullmatch(r"controlnet_cond_embedding\.conv_out\.(.*)", ours):
        return f"input_hint_block.14.{m[1]}"
    return _uni_release_key(ours).removeprefix("local_adapter.")


_SD_PARTS = {  # one tensor from each other part of ControlNet 1.0's whole-model checkpoint
    "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (32,),
    "betas": (1000,), "alphas_cumprod": (1000,),
}


def _release(adapter, version: str, meta: bool = False) -> dict[str, torch.Tensor]:
    prefix = "" if version == "bare" else "control_model."
    release = {prefix + _ldm_key(k): v.clone() for k, v in adapter.state_dict().items()}
    if version == "1.0":
        make = (lambda s: torch.empty(s, device="meta")) if meta else torch.randn
        release.update({k: make(shape) for k, shape in _SD_PARTS.items()})
    return release


@pytest.mark.parametrize("version", ["1.0", "1.1", "bare"])
def test_released_controlnet_converts_to_an_identical_adapter(version, tiny_unet, tmp_path, capsys):
    adapter = _perturbed(tiny_unet)
    release = _release(adapter, version)
    path = tmp_path / "control_sd15_openpose.pth"
    torch.save({"state_dict": release} if version == "1.0" else release, path)
    report = load_entry_point("scripts/convert_baseline_ckpt.py").main(
        ["controlnet", str(path), str(tmp_path / "out"), *TINY_OVERRIDES])
    assert report["unmapped"] == []
    assert sorted(report["dropped"]) == (sorted(_SD_PARTS) if version == "1.0" else [])
    prefix = "" if version == "bare" else "control_model."
    assert report["mapped"]["controlnet_cond_embedding.blocks.5.weight"] == prefix + "input_hint_block.12.weight"
    assert report["mapped"]["controlnet_mid_block.weight"] == prefix + "middle_block_out.0.weight"
    printed = capsys.readouterr().out
    assert "unmapped: 0" in printed and "key layout: ldm" in printed
    converted = load_adapter(tmp_path / "out", expected=_cfg().model)
    assert type(converted) is ControlNetBaseline
    _assert_same_weights(converted, adapter)
    _assert_same_outputs(residual_tensors(converted, _inputs()), residual_tensors(adapter, _inputs()))


def test_a_diffusers_controlnet_folder_loads_directly_and_re_saves(tiny_unet, tmp_path):
    """The layout of lllyasviel/control_v11p_sd15_openpose: diffusers' own ControlNetModel folder."""
    adapter = _perturbed(tiny_unet)
    original = ControlNetModel.from_unet(tiny_unet)
    original.load_state_dict(adapter.state_dict())
    original.save_pretrained(tmp_path / "hub")
    config_path = tmp_path / "hub" / "config.json"
    config = json.loads(config_path.read_text())
    assert config["_class_name"] == "ControlNetModel"
    # the Hub's file was written by diffusers 0.16, before these fields existed: loading fills their defaults
    for newer in ("transformer_layers_per_block", "num_attention_heads", "addition_embed_type", "encoder_hid_dim",
                  "addition_time_embed_dim", "global_pool_conditions", "addition_embed_type_num_heads"):
        config.pop(newer, None)
    config["_diffusers_version"] = "0.16.0.dev0"
    config_path.write_text(json.dumps(config))
    loaded = load_adapter(tmp_path / "hub", expected=_cfg().model)
    assert type(loaded) is ControlNetBaseline
    x, t, text, pose = _inputs()
    with torch.no_grad():
        down, mid = original(x, t, text, controlnet_cond=(pose + 1) / 2, return_dict=False)  # theirs takes [0, 1]
        _assert_same_outputs(residual_tensors(loaded, _inputs()), [*down, mid])
    _assert_same_weights(loaded, adapter)
    report = load_entry_point("scripts/convert_baseline_ckpt.py").main(
        ["controlnet", str(tmp_path / "hub"), str(tmp_path / "out"), *TINY_OVERRIDES])
    assert report["layout"] == "diffusers folder"
    _assert_same_weights(load_adapter(tmp_path / "out"), adapter)
    # its weights file alone (diffusers key layout) converts too
    converted, file_report = prepare_controlnet_state_dict(original.state_dict(), _cfg().model)
    assert file_report["layout"] == "diffusers" and converted.keys() == adapter.state_dict().keys()


@pytest.mark.parametrize("change, message", [
    ({"control_model.input_hint_block.16.weight": torch.zeros(1)},
     r"no place in diffusers' ControlNetModel: control_model\.input_hint_block\.16\.weight"),
    ({"global_adapter.ff1.weight": torch.zeros(1)}, r"no known part: global_adapter\.ff1\.weight"),
    ({"control_model.zero_convs.3.0.bias": None}, r"missing: controlnet_down_blocks\.3\.bias"),
], ids=["unknown-control-key", "unknown-top-level", "missing"])
def test_conversion_fails_with_one_line_naming_the_key(tiny_unet, change, message):
    state = _release(build_adapter(_cfg().model, tiny_unet), "1.0")
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(WeightsError, match=message) as err:
        convert_baseline_state_dict("controlnet", state, _cfg().model, "control_sd15_openpose.pth")
    assert "\n" not in str(err.value)


def test_a_checkpoint_that_is_no_controlnet_is_refused_in_one_line(tmp_path, capsys):
    torch.save({"local_adapter.time_embed.0.weight": torch.zeros(1)}, tmp_path / "uni.ckpt")
    status = run(load_entry_point("scripts/convert_baseline_ckpt.py").main,
                 ["controlnet", str(tmp_path / "uni.ckpt"), str(tmp_path / "out"), *TINY_OVERRIDES])
    err = capsys.readouterr().err
    assert status == 1 and "not a ControlNet checkpoint" in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("version", ["1.0", "1.1"])
def test_full_size_release_layouts_map_completely(version):
    cfg = load_config(None, ["model.adapter=controlnet", "model.pretrained=null"])
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("sd15", "unet"))
        adapter = build_adapter(cfg.model, unet, load_weights_from_unet=False)
    assert count_parameters(adapter) == 361_279_120
    release = _release(adapter, version, meta=True)
    assert tuple(release["control_model.input_hint_block.14.weight"].shape) == (320, 256, 3, 3)
    converted, report = prepare_controlnet_state_dict(release, cfg.model, "control_sd15_openpose.pth")
    assert report["unmapped"] == [] and len(converted) == len(adapter.state_dict())
    assert len(report["dropped"]) == (len(_SD_PARTS) if version == "1.0" else 0)
    check_state_dict(adapter.state_dict(), converted, "control_sd15_openpose.pth")
