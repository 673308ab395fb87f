"""Weight tooling on the tiny model: prepare_weights (SD1.5 -> initial adapter), export / import of trained adapters,
and conversion of the authors' release key layout."""

import importlib.util
import re
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from safetensors.torch import load_file

import prepare_weights
import train
from tests.adapter_checks import residual_tensors
from tests.conftest import TINY_OVERRIDES
from grpose.config import load_config
from grpose.lit_module import GRPoseLitModule
from grpose.models.adapter import ControlNetBaseline, GraphPoseAdapter, build_adapter
from grpose.sd15 import build_sd15, load_unet
from grpose.errors import WeightsError
from grpose.weights import convert_release_state_dict, load_adapter

ROOT = Path(__file__).resolve().parents[1]
DEMO = str(ROOT / "configs" / "demo.yaml")


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"_script_{name}", ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _inputs(batch: int = 2, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, 4, 8, 8, generator=g)
    timestep = torch.tensor([10, 900])[:batch]
    text = torch.randn(batch, 77, 32, generator=g)  # tiny CLIP width
    pose = torch.rand(batch, 3, 64, 64, generator=g) * 2 - 1
    return sample, timestep, text, pose


def _assert_same_residuals(a, b):
    """Same function: the weights are compared bit for bit elsewhere; the outputs to rounding, because CPU kernels
    may sum in another order for differently aligned copies of the same weights (seen with OMP_NUM_THREADS=1)."""
    assert len(a) == len(b) == 13
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y)  # float32 defaults: rtol 1.3e-6, atol 1e-5


@pytest.fixture(scope="module")
def tiny_sd_folder(tmp_path_factory):
    """Random tiny SD1.5 parts saved as a diffusers folder (what build_sd15 / load_unet read)."""
    folder = tmp_path_factory.mktemp("sd") / "tiny-sd15"
    torch.manual_seed(123)
    parts = build_sd15("tiny")
    for name in ("unet", "vae", "text_encoder"):
        getattr(parts, name).save_pretrained(str(folder / name))
    return folder


# ---- prepare_weights.py --------------------------------------------------------------------------------------


@pytest.mark.parametrize("adapter_kind", ["grpose", "controlnet"])
def test_prepare_weights_copies_the_unet_mirror_and_keeps_designed_init(tmp_path, tiny_sd_folder, capsys,
                                                                        adapter_kind):
    out = tmp_path / "init.safetensors"
    report = prepare_weights.main([str(tiny_sd_folder), DEMO, str(out), *TINY_OVERRIDES,
                                   f"model.adapter={adapter_kind}"])
    saved = load_file(str(out))
    unet = load_unet(str(tiny_sd_folder), arch="tiny").state_dict()

    # Independent oracle: an adapter key is copied exactly when the UNet has a tensor of that name.
    mirrored = sorted(k for k in saved if k in unet)
    assert sorted(report["copied"]) == mirrored
    assert sorted(report["new"]) == sorted(k for k in saved if k not in unet)
    assert report["mismatched"] == []
    for key in mirrored:
        assert torch.equal(saved[key], unet[key]), key

    zero_prefixes = ("controlnet_down_blocks.", "controlnet_mid_block.")
    if adapter_kind == "grpose":
        # Inside every PGI: conv1 / time_emb_proj from the replaced ResNet block, shortcut where channels change.
        for level in range(4):
            for part in ("conv1.weight", "conv1.bias", "time_emb_proj.weight"):
                assert f"down_blocks.{level}.resnets.0.{part}" in mirrored
        assert "down_blocks.2.resnets.0.conv_shortcut.weight" in mirrored  # 32 -> 64 channels in the tiny UNet
        zero_prefixes += ("pose_encoder.zero_convs.",)
        zero = [k for k in saved if k.startswith(zero_prefixes) or ".conv_out." in k]
        assert len(zero) == 2 * (13 + 4 + 4)  # residual zero convs, pose zero convs, PGI output convs
        new_parts = ("pose_conv", "graph_latent", "graph_pose", "graph_fuse", "fuse.", "conv_out", "pose_encoder")
        assert all(any(p in k for k in report["new"]) for p in new_parts)
        assert saved["down_blocks.0.resnets.0.pose_conv.weight"].abs().sum() > 0  # fresh init, not zeroed
    else:
        zero = [k for k in saved if k.startswith(zero_prefixes) or k.startswith("controlnet_cond_embedding.conv_out")]
    assert zero and all(saved[k].abs().sum() == 0 for k in zero)
    assert set(zero) <= set(report["new"])

    printed = capsys.readouterr().out
    assert f"copied from the UNet: {len(mirrored)} tensors" in printed
    assert f"newly initialised: {len(report['new'])} tensors" in printed
    assert "controlnet_down_blocks" in printed
    if adapter_kind == "grpose":
        assert re.search(r"down_blocks\.1\.resnets\.0 .*pose_conv", printed)


def test_prepared_adapter_leaves_the_unet_untouched_at_init(tmp_path, tiny_sd_folder, tiny_cfg):
    out = tmp_path / "init.safetensors"
    prepare_weights.main([str(tiny_sd_folder), DEMO, str(out), *TINY_OVERRIDES])
    # The training path: model.adapter_weights is loaded by the LightningModule on top of the SD1.5 folder.
    module = GRPoseLitModule.from_config(tiny_cfg(f"model.pretrained={tiny_sd_folder}", f"model.adapter_weights={out}"))
    saved = load_file(str(out))
    assert all(torch.equal(v, saved[k]) for k, v in module.adapter.state_dict().items())
    assert torch.equal(module.adapter.conv_in.weight, module.unet.conv_in.weight)

    sample, timestep, text, pose = _inputs()
    residuals = residual_tensors(module.adapter, (sample, timestep, text, pose))
    assert all(r.abs().sum() == 0 for r in residuals)
    with torch.no_grad():
        plain = module.unet(sample, timestep, encoder_hidden_states=text).sample
        combined = module.unet(sample, timestep, encoder_hidden_states=text,
                               down_block_additional_residuals=residuals[:-1],
                               mid_block_additional_residual=residuals[-1]).sample
    assert torch.equal(plain, combined)
    # The file also loads on its own: its metadata carries the model config.
    standalone = load_adapter(out)
    assert isinstance(standalone, GraphPoseAdapter)
    assert all(torch.equal(v, saved[k]) for k, v in standalone.state_dict().items())


def test_prepare_weights_refuses_to_overwrite_and_names_a_missing_sd_file(tmp_path, tiny_sd_folder):
    out = tmp_path / "init.safetensors"
    args = [str(tiny_sd_folder), DEMO, str(out), *TINY_OVERRIDES]
    prepare_weights.main(args)
    before = out.read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        prepare_weights.main(args + ["model.knn_k=5"])
    assert out.read_bytes() == before
    prepare_weights.main(args + ["--force", "model.pose_level_channels=[16,16,32,64]"])
    assert load_file(str(out))["pose_encoder.zero_convs.3.weight"].shape[0] == 64

    missing = tmp_path / "nowhere" / "v1-5-pruned.safetensors"
    with pytest.raises(FileNotFoundError, match=re.escape(str(missing))):
        prepare_weights.main([str(missing), DEMO, str(tmp_path / "other.safetensors"), *TINY_OVERRIDES])


# ---- export_adapter.py / load_adapter ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpose_checkpoint(tmp_path_factory):
    """A real checkpoint of a 2-step train.py run on the tiny config."""
    out = tmp_path_factory.mktemp("run")
    train.main(["--config", DEMO, *TINY_OVERRIDES, f"output_dir={out}", "trainer.max_steps=2", "data.batch_size=2",
                "data.synthetic_train_size=4", "data.synthetic_val_size=2", "trainer.limit_val_batches=0",
                "trainer.checkpoint_every_n_epochs=null", "trainer.checkpoint_every_n_steps=2", "trainer.logger=csv",
                "sampling.num_images=1", "sampling.num_inference_steps=1"])
    return out / "demo" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def controlnet_checkpoint(tmp_path_factory):
    """A Lightning checkpoint of the ControlNet baseline written with trainer.save_checkpoint, weights perturbed so
    that its residuals are not zero."""
    path = tmp_path_factory.mktemp("controlnet") / "baseline.ckpt"
    module = GRPoseLitModule.from_config(load_config(DEMO, TINY_OVERRIDES + ["model.adapter=controlnet"]))
    torch.manual_seed(7)
    with torch.no_grad():
        for p in module.adapter.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.strategy.connect(module)
    trainer.save_checkpoint(path)
    return path


@pytest.mark.parametrize("kind", ["grpose", "controlnet"])
def test_export_import_round_trip_gives_identical_residuals(tmp_path, request, kind):
    ckpt = request.getfixturevalue(f"{kind}_checkpoint")
    checkpoint = torch.load(ckpt, map_location="cpu", weights_only=True)
    # The reference: the LightningModule the checkpoint came from, restored the usual way.
    reference = GRPoseLitModule.from_config(load_config(None, TINY_OVERRIDES + [f"model.adapter={kind}"]))
    reference.load_state_dict(checkpoint["state_dict"])
    inputs = _inputs()
    expected = residual_tensors(reference.adapter, inputs)
    assert any(r.abs().sum() > 0 for r in expected)  # a trained adapter, not the zero-initialised one

    out_dir = tmp_path / "exported"
    export = _script("export_adapter")
    export.main([str(ckpt), str(out_dir)])
    assert (out_dir / "config.json").is_file() and (out_dir / "diffusion_pytorch_model.safetensors").is_file()
    cls = GraphPoseAdapter if kind == "grpose" else ControlNetBaseline
    for loaded in (load_adapter(out_dir), cls.from_pretrained(out_dir), load_adapter(ckpt)):
        assert type(loaded) is cls
        state = loaded.state_dict()
        assert all(torch.equal(state[k[len("adapter."):]], v) for k, v in checkpoint["state_dict"].items())
        _assert_same_residuals(residual_tensors(loaded, inputs), expected)

    with pytest.raises(FileExistsError, match="--force"):
        export.main([str(ckpt), str(out_dir)])
    export.main([str(ckpt), str(out_dir), "--force"])


# ---- convert_release_ckpt.py ---------------------------------------------------------------------------------

# Our key -> the release's, written from the release's module names (LDM UNet / ControlNet naming, their
# PGI, ViG GCN and PoseEncoder attribute names), independently of the converter under test.
_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "time_emb_proj": "emb_layers.1", "norm2": "out_layers.0",
           "conv2": "out_layers.3", "conv_shortcut": "skip_connection", "conv_out": "out_layers.2",
           "pose_conv": "cond_conv", "fuse.latent_proj": "fuse.latent_conv", "fuse.pose_proj": "fuse.pose_conv",
           "fuse.out_proj": "fuse.fusion_conv"}
_GRAPHS = {"graph_latent": "gnn_latent", "graph_pose": "gnn_pose", "graph_fuse": "gnn"}
_GRAPH_PARTS = {"node_proj": "conv1.0", "node_norm": "conv1.1", "edge_conv": "graph_conv.gconv.nn.0"}
_MID = {"resnets.0": "middle_block.0", "attentions.0": "middle_block.1", "resnets.1": "middle_block.2"}


def _release_resnet_part(rest: str) -> str:
    module, param = rest.rsplit(".", 1)
    if module in _RESNET:
        return f"{_RESNET[module]}.{param}"
    graph, part = module.split(".")
    return f"{_GRAPHS[graph]}.{_GRAPH_PARTS[part]}.{param}"


def _release_key(key: str, layers_per_block: int = 2) -> str:
    simple = [(r"conv_in\.(.*)", r"input_blocks.0.0.\1"), (r"time_embedding\.linear_1\.(.*)", r"time_embed.0.\1"),
              (r"time_embedding\.linear_2\.(.*)", r"time_embed.2.\1"),
              (r"controlnet_down_blocks\.(\d+)\.(.*)", r"zero_convs.\1.0.\2"),
              (r"controlnet_mid_block\.(.*)", r"middle_block_out.0.\1"),
              (r"pose_encoder\.stem\.(.*)", r"pose_encoder.pre_extractor.\1"),
              (r"pose_encoder\.stages\.(\d+)\.0\.(.*)", r"pose_encoder.extractors.\1.0.\2"),
              (r"pose_encoder\.zero_convs\.(.*)", r"pose_encoder.zero_convs.\1")]
    for pattern, replacement in simple:
        if re.fullmatch(pattern, key):
            return "control_model." + re.sub(pattern, replacement, key)
    step = layers_per_block + 1
    if m := re.fullmatch(r"down_blocks\.(\d+)\.resnets\.(\d+)\.(.*)", key):
        block = 1 + step * int(m[1]) + int(m[2])
        return f"control_model.input_blocks.{block}.0.{_release_resnet_part(m[3])}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.attentions\.(\d+)\.(.*)", key):
        return f"control_model.input_blocks.{1 + step * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.*)", key):
        return f"control_model.input_blocks.{step * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"mid_block\.(resnets\.\d|attentions\.0)\.(.*)", key):
        rest = _release_resnet_part(m[2]) if m[1].startswith("resnets") else m[2]
        return f"control_model.{_MID[m[1]]}.{rest}"
    raise AssertionError(f"the test's inverse mapping does not cover {key}")


_FROZEN = {  # one tensor from each frozen part the release also stores
    "model.diffusion_model.input_blocks.0.0.weight": (32, 4, 3, 3),
    "first_stage_model.encoder.conv_in.weight": (32, 3, 3, 3),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": (32,),
    "mmpose_model.backbone.conv1.conv.weight": (32, 3, 3, 3),
    "betas": (1000,),
    "alphas_cumprod": (1000,),
}


@pytest.fixture(scope="module")
def release_model():
    """A tiny GraphPoseAdapter with random values in every tensor, and the same weights in the release layout."""
    cfg = load_config(None, TINY_OVERRIDES)
    torch.manual_seed(3)
    adapter = build_adapter(cfg.model, build_sd15("tiny").unet)
    with torch.no_grad():
        for name, tensor in adapter.state_dict().items():
            if name.endswith("num_batches_tracked"):
                tensor.fill_(17)
            elif name.endswith("running_var"):
                tensor.copy_(torch.rand_like(tensor) + 0.5)
            else:
                tensor.copy_(0.1 * torch.randn_like(tensor))
    release = {_release_key(k): v.clone() for k, v in adapter.state_dict().items()}
    # the release's ViG conv1x1 before BatchNorm carries a bias that ours folds into the BN running mean
    for key, value in adapter.state_dict().items():
        if key.endswith("node_proj.weight"):
            bias = 0.1 * torch.randn(value.shape[0])
            release[_release_key(key)[:-len("weight")] + "bias"] = bias
            release[_release_key(key.replace("node_proj.weight", "node_norm.running_mean"))] += bias
    release.update({k: torch.randn(shape) for k, shape in _FROZEN.items()})
    return cfg, adapter.eval(), release


def test_release_checkpoint_converts_to_an_identical_adapter(tmp_path, release_model, capsys):
    cfg, adapter, release = release_model
    ckpt = tmp_path / "epoch=000035.ckpt"
    torch.save({"state_dict": release, "epoch": 35, "global_step": 1000}, ckpt)
    out_dir = tmp_path / "converted"
    report = _script("convert_release_ckpt").main([str(ckpt), str(out_dir), *TINY_OVERRIDES])
    n_graphs = sum(k.endswith("node_proj.weight") for k in adapter.state_dict())
    assert len(report["mapped"]) == len(adapter.state_dict()) + n_graphs
    assert len(report["folded"]) == n_graphs
    assert sorted(report["dropped"]) == sorted(_FROZEN) and report["unmapped"] == []
    assert report["mapped"]["down_blocks.3.resnets.0.graph_fuse.edge_conv.weight"] == \
        "control_model.input_blocks.10.0.gnn.graph_conv.gconv.nn.0.weight"

    converted = load_adapter(out_dir)
    assert isinstance(converted, GraphPoseAdapter)
    state = converted.state_dict()
    assert all(torch.allclose(state[k], v, atol=1e-6) for k, v in adapter.state_dict().items())
    inputs = _inputs()
    # folding rounds in float32
    for got, want in zip(residual_tensors(converted, inputs), residual_tensors(adapter, inputs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    printed = capsys.readouterr().out
    assert f"mapped: {len(state) + n_graphs} tensors" in printed and "mmpose_model." in printed


@pytest.mark.parametrize("change, message", [
    ({"control_model.input_blocks.1.0.gnn_extra.weight": torch.zeros(4)},
     r"unexpected: control_model\.input_blocks\.1\.0\.gnn_extra\.weight"),
    ({"control_model.pose_encoder.post_extractor.0.weight": torch.zeros(4)},
     r"no place in our layout: control_model\.pose_encoder\.post_extractor\.0\.weight"),
    ({"control_model.label_emb.0.0.weight": torch.zeros(4)}, r"no place in our layout: .*label_emb\.0\.0\.weight"),
    ({"ema_control_model.time_embed.0.weight": torch.zeros(4)}, r"not known frozen parts: ema_control_model\."),
    ({"control_model.input_blocks.4.0.cond_conv.weight": None}, r"missing: down_blocks\.1\.resnets\.0\.pose_conv\.w"),
    ({"control_model.input_blocks.2.1.proj_in.weight": torch.zeros(32, 32, 3, 3)},
     r"another shape: control_model\.input_blocks\.2\.1\.proj_in\.weight"),
], ids=["extra-pgi-key", "unknown-pose-encoder-key", "unknown-trunk-key", "unknown-top-level", "missing", "shape"])
def test_release_conversion_fails_loudly_naming_the_key(release_model, change, message):
    cfg, _, release = release_model
    state = dict(release)
    for key, value in change.items():
        if value is None:
            del state[key]
        else:
            state[key] = value
    with pytest.raises(WeightsError, match=message):
        convert_release_state_dict(state, cfg.model, "release.ckpt")
