"""Adapter weight files: initial weights from SD1.5 (prepare_weights.py), export / import of trained adapters, and
conversion of the authors' released GRPose checkpoint into our key layout (scripts/)."""

from __future__ import annotations

import importlib.util
import json
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from .config import ConfigError, ExperimentConfig, ModelConfig, validate
from .models.adapter import ControlNetBaseline, GraphPoseAdapter, build_adapter, copy_matching_weights
from .safe_pickle import unsafe_globals_in_torch_pickle
from .sd15 import compare_state_dicts, sd15_config

# `_class_name` in a diffusers config.json -> the class that loads it. A plain diffusers ControlNetModel folder is
# loaded as our baseline, which is the same network with the pose image mapped from [-1, 1] to ControlNet's [0, 1].
ADAPTER_CLASSES: dict[str, type] = {
    "GraphPoseAdapter": GraphPoseAdapter,
    "ControlNetBaseline": ControlNetBaseline,
    "ControlNetModel": ControlNetBaseline,
}

# safetensors metadata written by prepare_weights.py: the model config the file was made for, so that
# `load_adapter(file)` can rebuild the adapter without being told the config.
META_MODEL_CONFIG = "grpose_model_config"
META_SOURCE = "grpose_source"


class WeightsError(ValueError):
    """A weights file that does not fit the adapter it is meant for; the message names the file and the keys."""


# ----------------------------------------------------------------------------------------------------------------
# Reading files
# ----------------------------------------------------------------------------------------------------------------


def read_checkpoint(path: str | Path, trust_pickle: bool = False) -> Any:
    """Load a .ckpt/.pt/.pth/.bin (torch pickle) or .safetensors file on the CPU, without unwrapping anything.

    Pickles are read with `weights_only=True`, which refuses files that would run code when loaded; `trust_pickle`
    lifts that for a file the user vouches for (old Lightning checkpoints may pickle other objects).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist (or is not a file).")
    if path.suffix.lower() == ".safetensors":
        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"Cannot read {path} as safetensors: {err}") from err
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle,
                          mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        first = ", ".join(unsafe_globals_in_torch_pickle(path, err)) or str(err).splitlines()[0]
        raise WeightsError(
            f"{path} holds objects other than tensors ({first}). If you trust the file, load it with "
            "trust_pickle=True (--trust-pickle on the command line): that runs the code in the pickle."
        ) from err
    except (RuntimeError, EOFError, OSError) as err:
        raise WeightsError(f"Cannot read {path} as a torch checkpoint: {str(err).splitlines()[0]}") from err


def _unwrap_state_dict(checkpoint: Any, path: Path) -> dict[str, torch.Tensor]:
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(checkpoint).__name__}).")
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


# ----------------------------------------------------------------------------------------------------------------
# Building adapters from a config
# ----------------------------------------------------------------------------------------------------------------


def model_config(source: Any) -> DictConfig:
    """The validated `model` section from a full experiment config, a `model` section, or a plain dict of either."""
    if isinstance(source, DictConfig):
        source = OmegaConf.to_container(source, resolve=True)
    if not isinstance(source, dict):
        raise ConfigError(f"expected a config mapping, got {type(source).__name__}")
    section = source["model"] if isinstance(source.get("model"), dict) else source
    try:
        merged = OmegaConf.merge(OmegaConf.structured(ModelConfig), section)
    except OmegaConfBaseException as err:
        raise ConfigError(f"invalid model config: {str(err).splitlines()[0]}") from None
    full = OmegaConf.structured(ExperimentConfig)
    full.model = merged
    validate(full)
    return full.model


def _meta_unet(model_cfg: DictConfig) -> UNet2DConditionModel:
    with torch.device("meta"):
        return UNet2DConditionModel.from_config(sd15_config(model_cfg.base, "unet"))


def build_adapter_from_config(model_cfg: DictConfig) -> nn.Module:
    """A freshly initialised adapter of the configured architecture, built from the shipped UNet config of
    `model.base` alone: no SD1.5 weights are read (the UNet is only instantiated on the meta device)."""
    return build_adapter(model_cfg, _meta_unet(model_cfg), load_weights_from_unet=False)


def adapter_with_weights(model_cfg: DictConfig, state_dict: dict[str, torch.Tensor], source: str,
                         names: Optional[dict[str, str]] = None) -> nn.Module:
    """The configured adapter holding exactly `state_dict` (strict: every key, no extra, same shapes), float32, eval.

    Built on the meta device and filled by assignment, so a full-size adapter costs no random init. `names` maps a
    key to the name it had in the file, for the error message.
    """
    with torch.device("meta"):
        adapter = build_adapter_from_config(model_cfg)
    check_state_dict(adapter.state_dict(), state_dict, source, names)
    tensors = {k: (v.float() if v.is_floating_point() else v).contiguous() for k, v in state_dict.items()}
    adapter.load_state_dict(tensors, strict=True, assign=True)
    left = [name for name, t in [*adapter.named_parameters(), *adapter.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"{type(adapter).__name__} has tensors no state dict fills ({left[:3]}); "
                           "grpose.weights cannot build it by assignment.")
    return adapter.eval()


def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str,
                     names: Optional[dict[str, str]] = None) -> None:
    """Raise a WeightsError listing missing, unexpected and wrongly shaped keys. `names` maps a given key to the
    name it had in the file, when that differs."""
    names = names or {}
    missing, unexpected, wrong = compare_state_dicts(expected, given)
    if not (missing or unexpected or wrong):
        return
    lines = []
    if missing:
        lines.append(f"{len(missing)} missing: {_few(missing)}")
    if unexpected:
        lines.append(f"{len(unexpected)} unexpected: {_few([_named(k, names) for k in unexpected])}")
    if wrong:
        lines.append(f"{len(wrong)} with another shape: " + _few(
            [f"{_named(k, names)} {tuple(given[k].shape)} vs {tuple(expected[k].shape)}" for k in wrong]))
    raise WeightsError(f"{source} does not fit the configured adapter:\n  " + "\n  ".join(lines) +
                       "\nCheck that the config (model.base, model.adapter, model.pgi_levels, model.graphs, "
                       "model.pose_*_channels) is the one the weights were made with.")


def _named(key: str, names: dict[str, str]) -> str:
    return f"{names[key]} (-> {key})" if key in names and names[key] != key else key


def _few(items: list[str], limit: int = 20) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# ----------------------------------------------------------------------------------------------------------------
# Initial weights from SD1.5 (prepare_weights.py)
# ----------------------------------------------------------------------------------------------------------------


def init_adapter_from_unet(model_cfg: DictConfig, unet: UNet2DConditionModel) -> tuple[nn.Module, dict[str, list[str]]]:
    """The configured adapter with every tensor that mirrors the UNet (same key and shape) copied from it: conv_in,
    time embedding, down blocks, mid block, and in each PGI conv1 / time_emb_proj / conv_shortcut (reference-notes
    section 4). Everything else keeps its designed init (zero convs stay zero). Returns (adapter, report) with
    report = {"copied", "new", "mismatched"} key lists."""
    adapter = build_adapter(model_cfg, unet, load_weights_from_unet=False)
    return adapter, copy_matching_weights(adapter, unet.state_dict())


def save_adapter_weights(adapter: nn.Module, path: str | Path, model_cfg: DictConfig, source: str = "",
                         overwrite: bool = False) -> Path:
    """Write the adapter's own state dict as safetensors (what `model.adapter_weights` loads), with the model config
    in the metadata. Refuses to replace an existing file unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass --force to overwrite it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
    metadata = {
        "format": "pt",
        META_MODEL_CONFIG: json.dumps(OmegaConf.to_container(model_cfg, resolve=True)),
        META_SOURCE: str(source),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Key reports
# ----------------------------------------------------------------------------------------------------------------

_BLOCK_CONTAINERS = {"down_blocks": 2, "up_blocks": 2, "mid_block": 1}  # how many indices name one block


def module_group(key: str) -> tuple[str, str]:
    """Split a parameter key into (group, sub-module): the group is one UNet block (`down_blocks.1.resnets.0`,
    `mid_block.attentions.0`) or a top-level module (`pose_encoder`, `controlnet_down_blocks`)."""
    parts = key.split(".")
    cut = 1
    depth = _BLOCK_CONTAINERS.get(parts[0])
    if depth:
        numeric = [i for i, p in enumerate(parts[:-1]) if p.isdigit()]
        if len(numeric) >= depth:
            cut = numeric[depth - 1] + 1
    return ".".join(parts[:cut]), ".".join(parts[cut:-1])


def format_key_groups(keys: list[str], verbose: bool = False, width: int = 118) -> list[str]:
    """One line per group: name, tensor count, and the sub-modules it holds (all keys when verbose)."""
    groups: dict[str, list[str]] = {}
    members: dict[str, list[str]] = {}
    for key in keys:
        group, sub = module_group(key)
        groups.setdefault(group, []).append(key)
        if sub and sub not in members.setdefault(group, []):
            members[group].append(sub)
    lines = []
    for group, group_keys in groups.items():
        line = f"    {group:<34} {len(group_keys):>4}  {', '.join(members.get(group, []))}".rstrip()
        if not verbose and len(line) > width:
            line = line[: width - 3] + "..."
        lines.append(line)
        if verbose:
            lines.extend(f"        {k}" for k in group_keys)
    return lines


def format_key_report(sections: dict[str, list[str]], verbose: bool = False) -> str:
    """Counts and grouped key lists, one section per (title, keys)."""
    lines = []
    for title, keys in sections.items():
        lines.append(f"{title}: {len(keys)} tensors")
        lines.extend(format_key_groups(keys, verbose))
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------
# Export / import of trained adapters
# ----------------------------------------------------------------------------------------------------------------


def adapter_from_lightning_checkpoint(path: str | Path, model_cfg: Optional[DictConfig] = None,
                                      trust_pickle: bool = False) -> nn.Module:
    """Rebuild the adapter of a training checkpoint (`state_dict` with `adapter.*` keys) from the config stored in
    its `hyper_parameters.config` (or `model_cfg`, when given), without any SD1.5 weights."""
    from .lit_module import ADAPTER_PREFIX  # imported here: loading an adapter folder should not need Lightning

    path = Path(path)
    checkpoint = read_checkpoint(path, trust_pickle)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsError(f"{path} is not a Lightning checkpoint (no top-level 'state_dict').")
    state = checkpoint["state_dict"]
    if any(k.startswith("control_model.") for k in state):
        raise WeightsError(f"{path} is a checkpoint of the authors' release (control_model.* keys): convert it with "
                           "`python scripts/convert_release_ckpt.py CKPT OUT_DIR` first.")
    adapter_state = {k[len(ADAPTER_PREFIX):]: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
    foreign = [k for k in state if not k.startswith(ADAPTER_PREFIX)]
    if not adapter_state or foreign:
        raise WeightsError(f"{path}: expected only '{ADAPTER_PREFIX}*' keys in its state_dict, found "
                           f"{len(adapter_state)} of those and {len(foreign)} others ({_few(foreign, 5)}).")
    if model_cfg is None:
        stored = (checkpoint.get("hyper_parameters") or {}).get("config")
        if stored is None:
            raise WeightsError(f"{path} does not store its config (hyper_parameters.config); pass --config "
                               "with the YAML it was trained with.")
        model_cfg = model_config(stored)
    return adapter_with_weights(model_cfg, adapter_state, str(path))


def export_adapter(checkpoint: str | Path, out_dir: str | Path, model_cfg: Optional[DictConfig] = None,
                   overwrite: bool = False, trust_pickle: bool = False) -> nn.Module:
    """Lightning checkpoint -> diffusers folder (`config.json` + `diffusion_pytorch_model.safetensors`)."""
    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, overwrite)
    adapter = adapter_from_lightning_checkpoint(checkpoint, model_cfg, trust_pickle)
    adapter.save_pretrained(str(out_dir), safe_serialization=True)
    return adapter


def refuse_overwrite(out_dir: Path, overwrite: bool) -> None:
    if (out_dir / "config.json").exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds an exported model; pass --force to overwrite it.")


def load_adapter(path: str | Path, model_cfg: Optional[DictConfig] = None, trust_pickle: bool = False) -> nn.Module:
    """Load a trained or prepared adapter (float32, eval mode) from any of the files grpose writes:

    - a diffusers folder (`save_pretrained`, `<run>/adapter`, export_adapter.py, convert_release_ckpt.py): the class
      is chosen by `_class_name` in its config.json (GraphPoseAdapter or ControlNetBaseline);
    - a Lightning training checkpoint (.ckpt): rebuilt from the config it stores;
    - a safetensors state dict from prepare_weights.py: rebuilt from the config in its metadata (or `model_cfg`).
    """
    path = Path(path).expanduser()
    if path.is_dir():
        return _load_pretrained_folder(path)
    if not path.is_file():
        raise FileNotFoundError(f"No adapter at {path}: expected a diffusers folder, a .ckpt or a .safetensors file.")
    if path.suffix.lower() == ".safetensors":
        if (path.parent / "config.json").is_file() and model_cfg is None:
            return _load_pretrained_folder(path.parent)
        return _load_adapter_safetensors(path, model_cfg)
    return adapter_from_lightning_checkpoint(path, model_cfg, trust_pickle)


def _load_pretrained_folder(folder: Path) -> nn.Module:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a folder written by save_pretrained.")
    with open(config_path, encoding="utf-8") as f:
        class_name = json.load(f).get("_class_name")
    cls = ADAPTER_CLASSES.get(class_name)
    if cls is None:
        raise WeightsError(f"{config_path} names class {class_name!r}; grpose loads {sorted(ADAPTER_CLASSES)}.")
    # Without accelerate, diffusers falls back to a normal load anyway, after a warning; ask for that directly.
    low_mem = importlib.util.find_spec("accelerate") is not None
    return cls.from_pretrained(str(folder), low_cpu_mem_usage=low_mem).eval()


def _load_adapter_safetensors(path: Path, model_cfg: Optional[DictConfig]) -> nn.Module:
    if model_cfg is None:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get(META_MODEL_CONFIG)
        if stored is None:
            raise WeightsError(f"{path} carries no model config in its metadata (not written by prepare_weights.py); "
                               "pass the model config it was made for.")
        model_cfg = model_config(json.loads(stored))
    return adapter_with_weights(model_cfg, read_checkpoint(path), str(path))


# ----------------------------------------------------------------------------------------------------------------
# The authors' released checkpoint (LDM layout) -> our GraphPoseAdapter
# ----------------------------------------------------------------------------------------------------------------

RELEASE_ADAPTER_PREFIX = "control_model."
# Frozen parts of their LatentDiffusion model that every checkpoint carries (reference-notes section 1.1); we load
# SD1.5 from its own file and never store the pose network, so these are dropped.
RELEASE_DROPPED_PREFIXES = (
    "model.diffusion_model.",  # the frozen SD1.5 UNet
    "model_ema.",  # an EMA copy of that UNet when use_ema is on
    "first_stage_model.",  # the VAE
    "cond_stage_model.",  # the CLIP text encoder
    "mmpose_model.",  # the MobileNetV2 of the pose perception loss
)
# The noise schedule that LDM's DDPM registers as buffers (plus the optional scale_factor / learned logvar);
# diffusers' scheduler recomputes all of it.
RELEASE_DROPPED_KEYS = frozenset({
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod", "posterior_variance",
    "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2", "lvlb_weights", "logvar",
    "scale_factor",
})

_PGI = r"^(input_blocks\.\d+\.0)\."  # a PGI sits where an SD ResBlock would: input_blocks.{1,4,7,10}.0
# Release names (after `control_model.`) -> ours, for the parts diffusers' ControlNet converter does not know:
# the PoseEncoder (reference-notes 1.3) and the PGI layers without an SD ResBlock counterpart (1.4, 1.5). The
# PGI's in_layers.2 / emb_layers.1 / skip_connection are ResBlock names; diffusers renames them to conv1 /
# time_emb_proj / conv_shortcut, together with the whole UNet-mirroring trunk. A key that matches nothing here and
# that the converter does not place is an error. Module names as in the release's cldm/grpose.py (PGI, FuseLayer,
# PoseEncoder) and gcn_lib/torch_vertex.py (GCN.conv1, GCN.graph_conv -> DyGraphConv2d.gconv -> EdgeConv2d.nn).
RELEASE_KEY_TABLE: dict[str, str] = {
    # PoseEncoder: pre_extractor = Sequential(conv, SiLU) x 5, the same indices as our stem
    r"^pose_encoder\.pre_extractor\.(\d+)\.": r"pose_encoder.stem.\1.",
    # extractors[i] = Sequential(3x3 conv stride 2, SiLU)
    r"^pose_encoder\.extractors\.(\d+)\.0\.": r"pose_encoder.stages.\1.0.",
    # zero_convs[i] = zero-initialised 3x3 conv on each extractor output
    r"^pose_encoder\.zero_convs\.(\d+)\.": r"pose_encoder.zero_convs.\1.",
    # PGI: out_layers = Sequential(Identity, Dropout, zero conv)
    _PGI + r"out_layers\.2\.": r"\1.conv_out.",
    # PGI: 3x3 conv on the level's pose feature
    _PGI + r"cond_conv\.": r"\1.pose_conv.",
    # PGI FuseLayer: 1x1 convs on latent and pose, then 1x1 conv on their concatenation
    _PGI + r"fuse\.latent_conv\.": r"\1.fuse.latent_proj.",
    _PGI + r"fuse\.pose_conv\.": r"\1.fuse.pose_proj.",
    _PGI + r"fuse\.fusion_conv\.": r"\1.fuse.out_proj.",
    # ViG GCN on the latent (G_l): conv1 = Sequential(1x1 conv, BatchNorm2d); graph_conv.gconv.nn = BasicConv,
    # whose index 0 is the grouped (groups=4) 1x1 edge conv followed by ReLU
    _PGI + r"gnn_latent\.conv1\.0\.": r"\1.graph_latent.node_proj.",
    _PGI + r"gnn_latent\.conv1\.1\.": r"\1.graph_latent.node_norm.",
    _PGI + r"gnn_latent\.graph_conv\.gconv\.nn\.0\.": r"\1.graph_latent.edge_conv.",
    # ViG GCN on the pose feature (G_p)
    _PGI + r"gnn_pose\.conv1\.0\.": r"\1.graph_pose.node_proj.",
    _PGI + r"gnn_pose\.conv1\.1\.": r"\1.graph_pose.node_norm.",
    _PGI + r"gnn_pose\.graph_conv\.gconv\.nn\.0\.": r"\1.graph_pose.edge_conv.",
    # ViG GCN on the fused features (G_fuse); the release calls this one plain `gnn`
    _PGI + r"gnn\.conv1\.0\.": r"\1.graph_fuse.node_proj.",
    _PGI + r"gnn\.conv1\.1\.": r"\1.graph_fuse.node_norm.",
    _PGI + r"gnn\.graph_conv\.gconv\.nn\.0\.": r"\1.graph_fuse.edge_conv.",
}
_RELEASE_PATTERNS = [(re.compile(pattern), replacement) for pattern, replacement in RELEASE_KEY_TABLE.items()]


def split_release_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """-> (adapter tensors with `control_model.` removed, dropped keys, keys that belong to neither)."""
    adapter, dropped, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith(RELEASE_ADAPTER_PREFIX):
            adapter[key[len(RELEASE_ADAPTER_PREFIX):]] = value
        elif key.startswith(RELEASE_DROPPED_PREFIXES) or key in RELEASE_DROPPED_KEYS:
            dropped.append(key)
        else:
            unknown.append(key)
    return adapter, dropped, unknown


def _rename_release_key(key: str) -> Optional[str]:
    """The key with RELEASE_KEY_TABLE applied, or None when no entry matches."""
    for pattern, replacement in _RELEASE_PATTERNS:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    return None


def map_release_keys(release_keys: list[str], unet_config: dict) -> tuple[dict[str, str], list[str]]:
    """Map adapter keys of the release (without `control_model.`) to ours: -> ({our key: release key}, unmapped).

    The UNet-mirroring trunk (time_embed, input_blocks, zero_convs, middle_block, middle_block_out) is placed by
    diffusers' own LDM ControlNet conversion. It only moves values around, so it is run on the key names
    themselves: the returned values tell which release key each diffusers key came from.
    """
    pose: dict[str, str] = {}  # our key -> release key; PoseEncoder keys are placed by the table alone
    trunk: dict[str, str] = {}  # LDM-style name for diffusers' converter -> release key
    for key in release_keys:
        new = _rename_release_key(key)
        if key.startswith("pose_encoder."):
            if new is not None:
                pose[new] = key
        else:
            trunk[new or key] = key
    placed = convert_controlnet_checkpoint({name: name for name in trunk}, unet_config) if trunk else {}
    mapping = {ours: trunk[name] for ours, name in placed.items() if name is not None}
    mapping.update(pose)
    used = set(mapping.values())
    unmapped = sorted(k for k in release_keys if k not in used)
    return mapping, unmapped


def convert_release_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                               ) -> tuple[nn.Module, dict[str, Any]]:
    """The authors' GRPose state dict (control_model.* + frozen parts) -> our GraphPoseAdapter, strictly.

    Returns (adapter, report) with report = {"mapped": {our key: release key}, "dropped": [...], "unmapped": []}.
    Keys that are neither adapter nor known frozen parts, adapter keys that map nowhere, and adapter tensors the
    release lacks are all errors naming the keys.
    """
    if model_cfg.adapter != "grpose":
        raise ConfigError(f"the release checkpoint holds a GRPose adapter; set model.adapter=grpose "
                          f"(got {model_cfg.adapter!r})")
    release, dropped, unknown = split_release_state_dict(state)
    if not release:
        raise WeightsError(f"{source} has no '{RELEASE_ADAPTER_PREFIX}*' keys: not a GRPose release checkpoint.")
    unet_config = sd15_config(model_cfg.base, "unet")
    mapping, unmapped = map_release_keys(list(release), unet_config)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys outside '{RELEASE_ADAPTER_PREFIX}' that are not known frozen parts: "
                        f"{_few(sorted(unknown))}")
    if unmapped:
        problems.append(f"{len(unmapped)} adapter keys with no place in our layout: " +
                        _few([RELEASE_ADAPTER_PREFIX + k for k in unmapped]))
    if problems:
        raise WeightsError(f"Cannot convert {source}:\n  " + "\n  ".join(problems) +
                           "\nThe mapping is grpose.weights.RELEASE_KEY_TABLE (plus diffusers' ControlNet conversion "
                           "for the UNet-mirroring trunk); a release with other module names needs entries there.")
    converted = {ours: release[theirs] for ours, theirs in mapping.items()}
    names = {ours: RELEASE_ADAPTER_PREFIX + theirs for ours, theirs in mapping.items()}
    folded = _fold_node_proj_bias(converted)
    adapter = adapter_with_weights(model_cfg, converted, source, {k: v for k, v in names.items() if k in converted})
    return adapter, {"mapped": names, "dropped": dropped, "unmapped": unmapped, "folded": folded}


def _fold_node_proj_bias(state: dict[str, torch.Tensor]) -> list[str]:
    """The release's ViG conv1x1 before BatchNorm has a bias; ours has none, because BN(Wx + b) with running mean
    m equals BN(Wx) with running mean m - b (and in training the batch mean absorbs b). Fold it, in place."""
    folded = []
    for key in [k for k in state if k.endswith(".node_proj.bias")]:
        mean_key = key[:-len("node_proj.bias")] + "node_norm.running_mean"
        state[mean_key] = state[mean_key] - state.pop(key)
        folded.append(key)
    return folded


def convert_release_checkpoint(path: str | Path, model_cfg: DictConfig, trust_pickle: bool = False
                               ) -> tuple[nn.Module, dict[str, Any]]:
    """Read the authors' released .ckpt (Lightning, or a bare state dict) and convert it; see
    `convert_release_state_dict`."""
    path = Path(path)
    state = _unwrap_state_dict(read_checkpoint(path, trust_pickle), path)
    return convert_release_state_dict(state, model_cfg, str(path))


def format_dropped(keys: list[str]) -> list[str]:
    """Counts of dropped keys per frozen part."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = next((p for p in RELEASE_DROPPED_PREFIXES if key.startswith(p)), "LDM buffers (noise schedule)")
        counts[prefix] = counts.get(prefix, 0) + 1
    return [f"    {prefix:<34} {n:>4}" for prefix, n in counts.items()]
