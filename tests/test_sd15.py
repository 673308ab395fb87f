"""Tests for grpose.sd15: shipped SD1.5 configs, offline loading (LDM single file, diffusers folder), tokenizer."""

from __future__ import annotations

import re

import pytest
import torch
from safetensors.torch import save_file

from grpose.sd15 import (
    StableDiffusionParts,
    build_sd15,
    encode_prompts,
    load_unet,
    make_scheduler,
    make_tokenizer,
    sd15_config,
)

PROMPTS = [
    "a photo of a cat",
    "Dance: a woman in a red dress, dancing on the stage!",
    "Two men's shadows, 3 kids & 42 balloons -- isn't it GREAT?",
    "oil painting,   a knight   riding a horse;  (masterpiece), 8k UHD, café",
    "",
]


@pytest.fixture(autouse=True)
def _tokenizer_cache(tmp_path_factory, monkeypatch):
    # Keep the tokenizer files out of the user's home directory.
    monkeypatch.setenv("GRPOSE_CACHE", str(tmp_path_factory.getbasetemp() / "grpose_cache"))


@pytest.fixture(scope="module")
def tiny_parts() -> StableDiffusionParts:
    torch.manual_seed(0)
    parts = build_sd15(arch="tiny")
    # Make every tensor distinct (GroupNorm weights start as all ones), so a swapped key cannot go unnoticed.
    with torch.no_grad():
        for module in (parts.unet, parts.vae, parts.text_encoder):
            for p in module.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return parts


# ------------------------------------------------------------------------------------------------------------
# Independent oracle: diffusers/transformers state dicts -> original LDM single-file keys
# ------------------------------------------------------------------------------------------------------------

_RESNET_TO_LDM = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}


def unet_to_ldm(sd: dict, config: dict) -> dict:
    """The LDM openaimodel layout: input_blocks (conv_in, then per level L resnets(+attn) and a downsampler),
    middle_block (resnet, attn, resnet), output_blocks (per level L+1 resnets(+attn), the last with an upsampler)."""
    n_layers = config["layers_per_block"]
    up_has_attn = ["CrossAttn" in t for t in config["up_block_types"]]
    fixed = {
        "time_embedding.linear_1": "time_embed.0",
        "time_embedding.linear_2": "time_embed.2",
        "conv_in": "input_blocks.0.0",
        "conv_norm_out": "out.0",
        "conv_out": "out.2",
    }
    out = {}
    for key, value in sd.items():
        stem, _, leaf = key.rpartition(".")
        if stem in fixed:
            out[f"{fixed[stem]}.{leaf}"] = value
            continue
        m = re.fullmatch(r"(down|up)_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
        if m:
            kind, b, what, j, rest = m.group(1), int(m.group(2)), m.group(3), int(m.group(4)), m.group(5)
            idx = 1 + b * (n_layers + 1) + j if kind == "down" else b * (n_layers + 1) + j
            blocks = "input_blocks" if kind == "down" else "output_blocks"
            if what == "resnets":
                sub, _, tail = rest.partition(".")
                out[f"{blocks}.{idx}.0.{_RESNET_TO_LDM[sub]}.{tail}"] = value
            else:
                out[f"{blocks}.{idx}.1.{rest}"] = value
            continue
        m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key)
        if m:
            out[f"input_blocks.{(int(m.group(1)) + 1) * (n_layers + 1)}.0.op.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key)
        if m:
            b = int(m.group(1))
            slot = 2 if up_has_attn[b] else 1
            out[f"output_blocks.{b * (n_layers + 1) + n_layers}.{slot}.conv.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
        if m:
            what, j, rest = m.groups()
            if what == "resnets":
                sub, _, tail = rest.partition(".")
                out[f"middle_block.{2 * int(j)}.{_RESNET_TO_LDM[sub]}.{tail}"] = value
            else:
                out[f"middle_block.1.{rest}"] = value
            continue
        raise AssertionError(f"oracle has no LDM name for UNet key {key}")
    return {f"model.diffusion_model.{k}": v for k, v in out.items()}


def vae_to_ldm(sd: dict, config: dict) -> dict:
    """The LDM autoencoder layout: encoder.down.i.block.j, decoder.up counted from the lowest resolution, nin_shortcut,
    mid.block_1/attn_1/block_2, and the mid attention as 1x1 convs q/k/v/proj_out."""
    n_levels = len(config["block_out_channels"])
    attn_names = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
    out = {}
    for key, value in sd.items():
        m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(\w+)", key)
        if m:
            out[f"{m.group(1)}.norm_out.{m.group(2)}"] = value
            continue
        if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.\w+|(post_)?quant_conv\.\w+", key):
            out[key] = value
            continue
        m = re.fullmatch(r"(encoder\.down|decoder\.up)_blocks\.(\d+)\.resnets\.(\d+)\.(\w+)\.(\w+)", key)
        if m:
            side, i, j, sub, leaf = m.group(1), int(m.group(2)), m.group(3), m.group(4), m.group(5)
            level = i if side == "encoder.down" else n_levels - 1 - i
            sub = "nin_shortcut" if sub == "conv_shortcut" else sub
            out[f"{side}.{level}.block.{j}.{sub}.{leaf}"] = value
            continue
        m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(\w+)", key)
        if m:
            out[f"encoder.down.{m.group(1)}.downsample.conv.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(\w+)", key)
        if m:
            out[f"decoder.up.{n_levels - 1 - int(m.group(1))}.upsample.conv.{m.group(2)}"] = value
            continue
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
        if m:
            out[f"{m.group(1)}.mid.block_{int(m.group(2)) + 1}.{m.group(3)}"] = value
            continue
        m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_[qkv]|to_out\.0)\.(\w+)", key)
        if m:
            if value.ndim == 2:  # the original stores these projections as 1x1 convs
                value = value[:, :, None, None]
            out[f"{m.group(1)}.mid.attn_1.{attn_names[m.group(2)]}.{m.group(3)}"] = value
            continue
        raise AssertionError(f"oracle has no LDM name for VAE key {key}")
    return {f"first_stage_model.{k}": v for k, v in out.items()}


def text_to_ldm(sd: dict) -> dict:
    """LDM's FrozenCLIPEmbedder stores a transformers CLIPTextModel under cond_stage_model.transformer.text_model.*,
    including the position_ids buffer that current transformers no longer saves."""
    out = {}
    for key, value in sd.items():
        key = key if key.startswith("text_model.") else f"text_model.{key}"
        out[f"cond_stage_model.transformer.{key}"] = value
    out["cond_stage_model.transformer.text_model.embeddings.position_ids"] = torch.arange(77)[None]
    return out


def make_ldm_checkpoint(parts: StableDiffusionParts) -> dict:
    ldm = {}
    ldm.update(unet_to_ldm(parts.unet.state_dict(), sd15_config("tiny", "unet")))
    ldm.update(vae_to_ldm(parts.vae.state_dict(), sd15_config("tiny", "vae")))
    ldm.update(text_to_ldm(parts.text_encoder.state_dict()))
    # Other entries of a real v1-5-pruned file that loading must ignore.
    ldm["betas"] = torch.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2
    ldm["model_ema.decay"] = torch.tensor(0.9999)
    ldm["model_ema.num_updates"] = torch.tensor(470000)
    return {k: v.detach().clone().contiguous() for k, v in ldm.items()}


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sorted(sa) == sorted(sb)
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=f"tensor {k} differs")


def assert_same_outputs(ref: StableDiffusionParts, got: StableDiffusionParts) -> None:
    g = torch.Generator().manual_seed(1)
    img = torch.rand(2, 3, 64, 64, generator=g) * 2 - 1
    latents = torch.randn(2, 4, 8, 8, generator=g)
    t = torch.tensor([10, 900])
    ids = ref.tokenizer(PROMPTS[:2], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        ctx_ref = ref.text_encoder(ids).last_hidden_state
        torch.testing.assert_close(got.text_encoder(ids).last_hidden_state, ctx_ref)
        torch.testing.assert_close(
            got.unet(latents, t, encoder_hidden_states=ctx_ref).sample,
            ref.unet(latents, t, encoder_hidden_states=ctx_ref).sample,
        )
        torch.testing.assert_close(got.vae.encode(img).latent_dist.mean, ref.vae.encode(img).latent_dist.mean)
        torch.testing.assert_close(got.vae.decode(latents).sample, ref.vae.decode(latents).sample)
    assert got.vae_scale_factor == pytest.approx(0.18215)


def assert_frozen(parts: StableDiffusionParts) -> None:
    for module in (parts.unet, parts.vae, parts.text_encoder):
        assert not module.training
        assert all(not m.training for m in module.modules())
        assert not any(p.requires_grad for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------
# Shipped configs
# ------------------------------------------------------------------------------------------------------------


def test_sd15_arch_parameter_counts_on_meta_device():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("sd15", "unet"))
        vae = AutoencoderKL.from_config(sd15_config("sd15", "vae"))
        text = CLIPTextModel(CLIPTextConfig(**sd15_config("sd15", "text_encoder")))
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # The published SD1.5 sizes: UNet 859.52M, VAE 83.65M, CLIP ViT-L/14 text 123.06M.
    assert count(unet) == 859_520_964
    assert count(vae) == 83_653_863
    assert count(text) == 123_060_480
    assert unet.config.attention_head_dim == 8 and unet.config.cross_attention_dim == 768
    assert vae.config.scaling_factor == pytest.approx(0.18215)
    assert text.config.hidden_act == "quick_gelu"


def test_tiny_arch_keeps_the_sd15_layout(tiny_parts):
    sd15_unet, tiny_unet = sd15_config("sd15", "unet"), sd15_config("tiny", "unet")
    for key in ("down_block_types", "up_block_types", "layers_per_block", "in_channels", "out_channels"):
        assert tiny_unet[key] == sd15_unet[key]
    groups = tiny_unet["norm_num_groups"]
    assert all(c % groups == 0 for c in tiny_unet["block_out_channels"])
    assert len(sd15_config("tiny", "vae")["block_out_channels"]) == 4  # latent factor 8 like SD1.5

    # 12 skips + 1 mid, same as SD1.5: the adapter's residual layout is identical.
    latents = torch.randn(1, 4, 8, 8)
    ctx = torch.randn(1, 77, 32)
    with torch.no_grad():
        emb = tiny_parts.unet.time_embedding(tiny_parts.unet.time_proj(torch.tensor([3])))
        h = tiny_parts.unet.conv_in(latents)
        skips = (h,)
        for block in tiny_parts.unet.down_blocks:
            if hasattr(block, "attentions") and block.attentions is not None:
                h, res = block(h, emb, encoder_hidden_states=ctx)
            else:
                h, res = block(h, emb)
            skips += res
    assert len(skips) == 12

    img = torch.rand(1, 3, 64, 64) * 2 - 1
    with torch.no_grad():
        z = tiny_parts.vae.encode(img).latent_dist.mean * tiny_parts.vae_scale_factor
        eps = tiny_parts.unet(z, torch.tensor([500]), encoder_hidden_states=ctx).sample
        out = tiny_parts.vae.decode(z / tiny_parts.vae_scale_factor).sample
    assert z.shape == (1, 4, 8, 8) and eps.shape == z.shape and out.shape == img.shape


def test_sd15_config_rejects_unknown_names_and_returns_copies():
    cfg = sd15_config("tiny", "unet")
    cfg["block_out_channels"] = [1]
    assert sd15_config("tiny", "unet")["block_out_channels"] == [32, 32, 64, 64]
    with pytest.raises(ValueError, match="unknown SD1.5 arch 'sdxl'"):
        sd15_config("sdxl", "unet")
    with pytest.raises(ValueError, match="Unknown SD1.5 part 'clip'"):
        sd15_config("tiny", "clip")


def test_random_parts_are_frozen(tiny_parts):
    assert_frozen(tiny_parts)
    half = build_sd15(arch="tiny", torch_dtype=torch.bfloat16)
    assert_frozen(half)
    for module in (half.unet, half.vae, half.text_encoder):
        assert all(p.dtype == torch.bfloat16 for p in module.parameters())


# ------------------------------------------------------------------------------------------------------------
# Loading
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_single_file_ldm_checkpoint_loads(tiny_parts, tmp_path, fmt):
    ldm = make_ldm_checkpoint(tiny_parts)
    path = tmp_path / f"tiny-sd.{fmt}"
    if fmt == "ckpt":
        torch.save({"state_dict": ldm, "global_step": 470000}, path)
    else:
        save_file(ldm, str(path))
    loaded = build_sd15(arch="tiny", weights=str(path))
    assert_same_weights(loaded.unet, tiny_parts.unet)
    assert_same_weights(loaded.vae, tiny_parts.vae)
    assert_same_weights(loaded.text_encoder, tiny_parts.text_encoder)
    assert_same_outputs(tiny_parts, loaded)
    assert_frozen(loaded)
    assert not any(t.is_meta for t in loaded.text_encoder.buffers())

    unet = load_unet(str(path), arch="tiny")
    assert_same_weights(unet, tiny_parts.unet)
    assert not any(p.requires_grad for p in unet.parameters())


def test_full_size_sd15_single_file_layout_converts_on_meta_device():
    """The full SD1.5 key layout, with shapes, converts without allocating 1 B parameters."""
    from pathlib import Path

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from grpose.sd15.single_file import parts_from_ldm_state_dict

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(sd15_config("sd15", "unet"))
        vae = AutoencoderKL.from_config(sd15_config("sd15", "vae"))
        text = CLIPTextModel(CLIPTextConfig(**sd15_config("sd15", "text_encoder")))
    ldm = {}
    ldm.update(unet_to_ldm(unet.state_dict(), sd15_config("sd15", "unet")))
    ldm.update(vae_to_ldm(vae.state_dict(), sd15_config("sd15", "vae")))
    ldm.update(text_to_ldm(text.state_dict()))

    # Names and shapes as they appear in runwayml's v1-5-pruned.safetensors.
    known = {
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.input_blocks.7.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.input_blocks.9.0.op.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.ff.net.0.proj.weight": (10240, 1280),
        "model.diffusion_model.middle_block.2.emb_layers.1.weight": (1280, 1280),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.0.in_layers.2.weight": (320, 640, 3, 3),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.quant_conv.weight": (8, 8, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    for key, shape in known.items():
        assert tuple(ldm[key].shape) == shape, key
    assert sum(k.startswith("model.diffusion_model.") for k in ldm) == len(unet.state_dict())

    got_unet, got_vae, got_text = parts_from_ldm_state_dict(ldm, "sd15", Path("v1-5-pruned.safetensors"))
    for ref, got in ((unet, got_unet), (vae, got_vae), (text, got_text)):
        ref_sd, got_sd = ref.state_dict(), got.state_dict()
        assert sorted(ref_sd) == sorted(got_sd)
        assert all(ref_sd[k].shape == got_sd[k].shape for k in ref_sd)


def test_diffusers_folder_round_trip(tiny_parts, tmp_path):
    folder = tmp_path / "tiny-sd-diffusers"
    tiny_parts.unet.save_pretrained(folder / "unet")
    tiny_parts.vae.save_pretrained(folder / "vae")
    tiny_parts.text_encoder.save_pretrained(folder / "text_encoder")
    tiny_parts.tokenizer.save_pretrained(folder / "tokenizer")

    loaded = build_sd15(arch="tiny", weights=str(folder))
    assert_same_weights(loaded.unet, tiny_parts.unet)
    assert_same_weights(loaded.vae, tiny_parts.vae)
    assert_same_weights(loaded.text_encoder, tiny_parts.text_encoder)
    assert_same_outputs(tiny_parts, loaded)
    assert_frozen(loaded)
    assert loaded.tokenizer(PROMPTS).input_ids == tiny_parts.tokenizer(PROMPTS).input_ids
    assert loaded.tokenizer.model_max_length == 77

    # A community UNet is swapped in from a pipeline folder, a UNet folder or a diffusers UNet file.
    for source in (folder, folder / "unet", folder / "unet" / "diffusion_pytorch_model.safetensors"):
        assert_same_weights(load_unet(str(source), arch="tiny"), tiny_parts.unet)

    with pytest.raises(ValueError, match="arch 'sd15' expects"):
        build_sd15(arch="sd15", weights=str(folder))


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_missing_weights_say_where_to_get_them(tmp_path):
    with pytest.raises(FileNotFoundError) as excinfo:
        build_sd15(arch="sd15", weights=str(tmp_path / "models" / "v1-5-pruned.safetensors"))
    message = _one_line_error(excinfo)
    assert "v1-5-pruned.safetensors" in message and "runwayml/stable-diffusion-v1-5" in message
    with pytest.raises(FileNotFoundError, match="runwayml/stable-diffusion-v1-5"):
        load_unet(str(tmp_path / "nothing.ckpt"))

    incomplete = tmp_path / "incomplete"
    (incomplete / "unet").mkdir(parents=True)
    (incomplete / "unet" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError) as excinfo:
        build_sd15(arch="tiny", weights=str(incomplete))
    assert "vae/config.json" in _one_line_error(excinfo)


def test_wrong_files_give_clear_errors(tiny_parts, tmp_path):
    foreign = tmp_path / "foreign.safetensors"
    save_file({"encoder.layer.0.weight": torch.randn(4, 4)}, str(foreign))
    with pytest.raises(ValueError) as excinfo:
        build_sd15(arch="tiny", weights=str(foreign))
    message = _one_line_error(excinfo)
    assert "model.diffusion_model." in message and "not an SD1.5 single-file checkpoint" in message
    with pytest.raises(ValueError, match="holds no SD1.5 UNet"):
        load_unet(str(foreign), arch="tiny")

    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all" * 10)
    with pytest.raises(ValueError) as excinfo:
        build_sd15(arch="tiny", weights=str(garbage))
    assert "cannot read" in _one_line_error(excinfo) and "damaged or not a checkpoint" in _one_line_error(excinfo)

    wrong_ext = tmp_path / "weights.txt"
    wrong_ext.write_text("hello")
    with pytest.raises(ValueError, match="unsupported weights file"):
        build_sd15(arch="tiny", weights=str(wrong_ext))

    # A tiny checkpoint read as full SD1.5 fails on shapes before any weights are allocated.
    tiny_file = tmp_path / "tiny.safetensors"
    save_file(make_ldm_checkpoint(tiny_parts), str(tiny_file))
    with pytest.raises(ValueError) as excinfo:
        build_sd15(arch="sd15", weights=str(tiny_file))
    assert "do not fit the shipped 'sd15' config" in _one_line_error(excinfo)


# ------------------------------------------------------------------------------------------------------------
# Tokenizer, prompt encoding, schedulers
# ------------------------------------------------------------------------------------------------------------


def test_tokenizer_matches_open_clip_and_sd15(tmp_path, monkeypatch):
    from open_clip.tokenizer import SimpleTokenizer

    monkeypatch.setenv("GRPOSE_CACHE", str(tmp_path))
    tokenizer = make_tokenizer()
    assert (tmp_path / "clip_tokenizer" / "vocab.json").is_file()
    assert (tmp_path / "clip_tokenizer" / "merges.txt").is_file()
    assert len(tokenizer) == 49408 and tokenizer.model_max_length == 77

    # SD1.5's own tokenizer (openai/clip-vit-large-patch14) gives these ids for this prompt.
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]

    reference = SimpleTokenizer(context_length=77)
    long_prompt = ", ".join(f"person number {i} with a hat" for i in range(40))
    prompts = PROMPTS + [long_prompt]
    ours = tokenizer(prompts, padding="max_length", max_length=77, truncation=True, return_tensors="pt").input_ids
    theirs = reference(prompts)
    assert ours.shape == theirs.shape == (len(prompts), 77)
    for row_ours, row_theirs in zip(ours.tolist(), theirs.tolist()):
        end = row_theirs.index(49407) + 1
        assert row_ours[:end] == row_theirs[:end]
        # open_clip pads with 0; SD1.5 pads with <|endoftext|>.
        assert row_ours[end:] == [49407] * (77 - end)
    assert theirs[-1, -1] == 49407 and ours[-1, -1] == 49407  # truncated prompt still ends with EOT

    # The cached files are reused, not rewritten.
    mtime = (tmp_path / "clip_tokenizer" / "vocab.json").stat().st_mtime_ns
    assert make_tokenizer()(PROMPTS).input_ids == tokenizer(PROMPTS).input_ids
    assert (tmp_path / "clip_tokenizer" / "vocab.json").stat().st_mtime_ns == mtime

    with pytest.raises(FileNotFoundError, match="vocab.json and merges.txt"):
        make_tokenizer(str(tmp_path / "no_tokenizer"))


def test_encode_prompts_is_the_padded_last_hidden_state(tiny_parts):
    ctx = encode_prompts(tiny_parts, ["a person dancing", ""])
    assert ctx.shape == (2, 77, 32)
    ids = torch.tensor([tiny_parts.tokenizer("a person dancing").input_ids + [49407] * 72,
                        [49406] + [49407] * 76])
    with torch.no_grad():
        expected = tiny_parts.text_encoder(ids).last_hidden_state
    torch.testing.assert_close(ctx, expected)
    assert not ctx.requires_grad
    with pytest.raises(TypeError, match="list of prompts"):
        encode_prompts(tiny_parts, "a single string")


def test_schedulers_follow_sd15():
    expected_betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
    ddpm = make_scheduler("ddpm")
    assert type(ddpm).__name__ == "DDPMScheduler"
    assert ddpm.config.prediction_type == "epsilon" and ddpm.config.num_train_timesteps == 1000
    torch.testing.assert_close(ddpm.betas.double(), expected_betas, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        ddpm.alphas_cumprod.double(), torch.cumprod(1 - expected_betas, 0), rtol=1e-5, atol=1e-8
    )

    ddim = make_scheduler("ddim")
    assert type(ddim).__name__ == "DDIMScheduler" and not ddim.config.clip_sample
    ddim.set_timesteps(50)
    assert ddim.timesteps.tolist() == list(range(981, 0, -20))  # 981, 961, ..., 1 (LDM DDIM)
    assert float(ddim.final_alpha_cumprod) == pytest.approx(float(ddim.alphas_cumprod[0]))

    dpm = make_scheduler("DPMSolverMultistepScheduler")
    assert type(dpm).__name__ == "DPMSolverMultistepScheduler"
    torch.testing.assert_close(dpm.betas.double(), expected_betas, rtol=1e-6, atol=1e-9)
    with pytest.raises(ValueError, match="Unknown scheduler 'UNet2DModel'"):
        make_scheduler("UNet2DModel")
    with pytest.raises(ValueError, match="Unknown scheduler"):
        make_scheduler("no_such_sampler")


def test_random_base_is_reproducible_and_leaves_the_global_rng_alone():
    """A run trained on a random base (the demo) is evaluated later on the identical base."""
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = build_sd15("tiny")
    assert torch.equal(torch.rand(1), expected_next)
    second = build_sd15("tiny")
    for a, b in ((first.unet, second.unet), (first.vae, second.vae), (first.text_encoder, second.text_encoder)):
        for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(p, q), name
