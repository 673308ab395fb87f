"""The one way a file becomes an adapter, and the files grpose writes for adapters.

`load_adapter(path, expected=model_cfg)` reads any adapter file grpose writes:

- a Lightning checkpoint of `train.py` (`.ckpt`): the architecture is the `model` section it stores;
- a diffusers folder (`save_pretrained`: `<run>/adapter`, export_adapter.py, convert_release_ckpt.py) or the
  `diffusion_pytorch_model.safetensors` inside one: the architecture is its `config.json`;
- a `.safetensors` state dict from prepare_weights.py: the architecture is the model config in its metadata.

The architecture always comes from the file. When the caller has a config too (`expected`), the two must agree on
every architecture field; otherwise a one-line `WeightsError` names the differing fields.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers import UNet2DConditionModel
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import nn

from ..config import ExperimentConfig, ModelConfig, validate
from ..errors import ConfigError, MissingFileError, OutputExistsError, WeightsError
from ..files import few, first_line, read_checkpoint, state_dict_mismatch
from ..models.adapter import (ControlNetBaseline, GraphPoseAdapter, StablePoseAdapter, T2IAdapterBaseline,
                              UniControlNetAdapter, build_adapter)
from ..models.humansd import HumanSDUNet
from ..sd15 import sd15_config

# Lightning checkpoints of GRPoseLitModule hold the adapter's tensors under this prefix and nothing else.
ADAPTER_PREFIX = "adapter."

# `_class_name` in a diffusers config.json -> the class that loads it. Plain diffusers ControlNetModel and T2IAdapter
# folders (e.g. TencentARC/t2iadapter_keypose_sd14v1) load as our baselines, which are the same networks with the
# pose image mapped from our [-1, 1] to their [0, 1].
ADAPTER_CLASSES: dict[str, type] = {
    "GraphPoseAdapter": GraphPoseAdapter,
    "ControlNetBaseline": ControlNetBaseline,
    "ControlNetModel": ControlNetBaseline,
    "T2IAdapterBaseline": T2IAdapterBaseline,
    "T2IAdapter": T2IAdapterBaseline,
    "UniControlNetAdapter": UniControlNetAdapter,
    "StablePoseAdapter": StablePoseAdapter,
    "HumanSDUNet": HumanSDUNet,
}
# Weight files of a diffusers folder, in the order they are looked for. diffusers-format releases on the Hub often
# only have the pickle; read_checkpoint opens it with torch's weights-only unpickler before diffusers touches it.
FOLDER_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")

# safetensors metadata written by prepare_weights.py: the model config the file was made for.
META_MODEL_CONFIG = "grpose_model_config"
META_SOURCE = "grpose_source"

# Adapter config fields that are run-time settings, not architecture: they never make two adapters differ.
_RUNTIME_FIELDS = frozenset({"knn_chunk_mb", "_use_default_values", "_class_name", "_diffusers_version",
                             "_name_or_path"})


# ------------------------------------------------------------------------------------------- model configs
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
        raise ConfigError(f"invalid model config: {first_line(err)}") from None
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


def adapter_architecture(adapter: nn.Module) -> dict[str, Any]:
    """The adapter's class and config fields that decide its tensors (what two files must share to be the same
    architecture)."""
    config = dict(getattr(adapter, "config", {}) or {})
    fields = {k: _plain(v) for k, v in config.items() if k not in _RUNTIME_FIELDS}
    return {"class": type(adapter).__name__, **fields}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k not in _RUNTIME_FIELDS}
    return value


def architecture_difference(found: dict[str, Any], expected: dict[str, Any]) -> list[str]:
    """'field: file X vs config Y' for each differing architecture field (nested UNet fields flattened)."""
    diffs = []
    for key in sorted(set(found) | set(expected)):
        have, want = found.get(key), expected.get(key)
        if isinstance(have, dict) and isinstance(want, dict):
            diffs += [f"{key}.{d}" for d in architecture_difference(have, want)]
        elif have != want:
            diffs.append(f"{key}: file {have!r} vs config {want!r}")
    return diffs


def check_architecture(adapter: nn.Module, expected: DictConfig, source: str) -> None:
    """Raise a one-line WeightsError when `adapter` (read from `source`) is not the architecture `expected`."""
    with torch.device("meta"):
        reference = build_adapter_from_config(expected)
    diffs = architecture_difference(adapter_architecture(adapter), adapter_architecture(reference))
    if diffs:
        raise WeightsError(f"{source} holds another adapter architecture than the config: {'; '.join(diffs[:8])}"
                           f"{' ...' if len(diffs) > 8 else ''}. Use the config the weights were trained with, or "
                           f"drop the conflicting model.* overrides")


# ------------------------------------------------------------------------------------------- state dicts
def check_state_dict(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor], source: str,
                     names: Optional[dict[str, str]] = None) -> None:
    """Raise a one-line WeightsError listing missing, unexpected and wrongly shaped keys. `names` maps a given key
    to the name it had in the file, when that differs."""
    mismatch = state_dict_mismatch(expected, given, names)
    if mismatch:
        raise WeightsError(f"{source} does not fit the configured adapter ({mismatch}). Check that the config "
                           "(model.base, model.adapter, model.pgi_levels, model.graphs, model.pose_*_channels) is "
                           "the one the weights were made with")


def adapter_with_weights(model_cfg: DictConfig, state_dict: dict[str, torch.Tensor], source: str,
                         names: Optional[dict[str, str]] = None) -> nn.Module:
    """The configured adapter holding exactly `state_dict` (strict: every key, no extra, same shapes), float32, eval.

    Built on the meta device and filled by assignment, so a full-size adapter costs no random init.
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


# ------------------------------------------------------------------------------------------------ loading
def load_adapter(path: str | Path, expected: Optional[DictConfig] = None, trust_pickle: bool = False) -> nn.Module:
    """Load a trained or prepared adapter (float32, eval mode) from any file grpose writes (see the module doc).

    `expected`: the `model` section the caller is configured with; the file must hold that architecture.
    """
    path = Path(path).expanduser()
    if path.is_dir():
        adapter = _load_pretrained_folder(path)
    elif not path.is_file():
        raise MissingFileError(f"no adapter at {path}: expected a train.py checkpoint (.ckpt), an exported adapter "
                               "folder (experiments/<name>/adapter) or a .safetensors written by grpose")
    elif path.suffix.lower() == ".safetensors" and (path.parent / "config.json").is_file():
        adapter = _load_pretrained_folder(path.parent)
    elif path.suffix.lower() == ".safetensors":
        adapter = _load_adapter_safetensors(path)
    else:
        adapter = _load_lightning_checkpoint(path, trust_pickle)
    if expected is not None:
        check_architecture(adapter, expected, str(path))
    return adapter


def _load_pretrained_folder(folder: Path) -> nn.Module:
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise MissingFileError(f"{folder} has no config.json: not an adapter folder written by save_pretrained")
    try:
        class_name = json.loads(config_path.read_text(encoding="utf-8")).get("_class_name")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise WeightsError(f"cannot read {config_path} ({first_line(err)})") from None
    cls = ADAPTER_CLASSES.get(class_name)
    if cls is None:
        raise WeightsError(f"{config_path} names class {class_name!r}; grpose loads {', '.join(ADAPTER_CLASSES)}")
    weights = next((folder / name for name in FOLDER_WEIGHTS if (folder / name).is_file()), None)
    if weights is None:
        raise MissingFileError(f"{folder} has no diffusion_pytorch_model.safetensors (or .bin); export the adapter "
                               "again (python scripts/export_adapter.py CKPT OUT_DIR)")
    # A damaged file (or a pickle holding more than tensors) fails here with our one-line error, not inside diffusers.
    read_checkpoint(weights, can_trust=False)
    # Without accelerate, diffusers falls back to a normal load anyway, after a warning; ask for that directly.
    low_mem = importlib.util.find_spec("accelerate") is not None
    try:
        return cls.from_pretrained(str(folder), low_cpu_mem_usage=low_mem).eval()
    except (OSError, ValueError, RuntimeError, TypeError) as err:
        raise WeightsError(f"cannot load the adapter in {folder} ({first_line(err)})") from None


def _load_adapter_safetensors(path: Path) -> nn.Module:
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get(META_MODEL_CONFIG)
    except (SafetensorError, OSError) as err:
        raise WeightsError(f"cannot read {path} as safetensors ({first_line(err)}): the file is damaged or not a "
                           "safetensors file") from None
    if stored is None:
        raise WeightsError(f"{path} carries no model config in its metadata (not written by prepare_weights.py or "
                           "export_adapter.py); use the folder it came from, or write it again with those tools")
    return adapter_with_weights(model_config(json.loads(stored)), read_checkpoint(path), str(path))


def _load_lightning_checkpoint(path: Path, trust_pickle: bool) -> nn.Module:
    checkpoint = read_checkpoint(path, trust_pickle)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise WeightsError(f"{path} is not a train.py checkpoint (no top-level 'state_dict')")
    state = checkpoint["state_dict"]
    if any(k.startswith("control_model.") for k in state):
        raise WeightsError(f"{path} is a checkpoint of the authors' release (control_model.* keys): convert it with "
                           "`python scripts/convert_release_ckpt.py CKPT OUT_DIR` first")
    adapter_state = {k[len(ADAPTER_PREFIX):]: v for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
    foreign = [k for k in state if not k.startswith(ADAPTER_PREFIX)]
    if not adapter_state or foreign:
        raise WeightsError(f"{path}: expected only '{ADAPTER_PREFIX}*' keys in its state_dict, found "
                           f"{len(adapter_state)} of those and {len(foreign)} others ({few(foreign, 5)})")
    stored = stored_model_config(checkpoint)
    if stored is None:
        raise WeightsError(f"{path} does not store its model config (hyper_parameters.model): not written by "
                           "train.py")
    return adapter_with_weights(model_config(stored), adapter_state, str(path))


def stored_model_config(checkpoint: dict) -> Optional[dict]:
    """The `model` section a train.py checkpoint stores (`hyper_parameters.model`; older files kept the whole
    experiment config under `hyper_parameters.config`)."""
    hyper = checkpoint.get("hyper_parameters") or {}
    if isinstance(hyper.get("model"), dict):
        return hyper["model"]
    config = hyper.get("config")
    return config.get("model") if isinstance(config, dict) else None


# ------------------------------------------------------------------------------------------------ writing
def refuse_overwrite(target: Path, overwrite: bool) -> None:
    exists = (target / "config.json").exists() if target.is_dir() or not target.suffix else target.exists()
    if exists and not overwrite:
        raise OutputExistsError(f"{target} already exists; pass --force to overwrite it")


def save_adapter_weights(adapter: nn.Module, path: str | Path, model_cfg: DictConfig, source: str = "",
                         overwrite: bool = False) -> Path:
    """Write the adapter's own state dict as safetensors (what `model.adapter_weights` loads), with the model config
    in the metadata. Refuses to replace an existing file unless `overwrite`."""
    path = Path(path)
    refuse_overwrite(path, overwrite)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().cpu() for k, v in adapter.state_dict().items()}
    metadata = {
        "format": "pt",
        META_MODEL_CONFIG: json.dumps(OmegaConf.to_container(model_cfg, resolve=True)),
        META_SOURCE: str(source),
    }
    save_file(tensors, str(path), metadata=metadata)
    return path


def export_adapter(source: str | Path, out_dir: str | Path, expected: Optional[DictConfig] = None,
                   overwrite: bool = False, trust_pickle: bool = False) -> nn.Module:
    """Any adapter file (usually a train.py `.ckpt`) -> diffusers folder (`config.json` + safetensors)."""
    out_dir = Path(out_dir)
    refuse_overwrite(out_dir, overwrite)
    adapter = load_adapter(source, expected=expected, trust_pickle=trust_pickle)
    adapter.save_pretrained(str(out_dir), safe_serialization=True)
    return adapter
