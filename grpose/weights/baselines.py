"""Conversion of the baselines' released checkpoints into grpose adapters (paper Table 1 from released weights).

- T2I-Adapter `t2iadapter_keypose_sd14v1.pth` / `t2iadapter_openpose_sd14v1.pth`: a bare state dict of the original
  `Adapter` (`conv_in`, `body.0..7`, optionally under `adapter.`), or a diffusers-layout state dict
  (`adapter.body.i.resnets.j.*`). A diffusers-format folder needs no conversion: `load_adapter` reads it.
- Uni-ControlNet `uni.ckpt`: the integrated model; only `local_adapter.*` is kept, its 21-channel condition input
  reduced to the openpose channels (exactly what feeding zeros to the other six conditions computes).
- ControlNet openpose: `control_sd15_openpose.pth` (1.0: the whole ControlLDM; only `control_model.*` is kept) and
  `control_v11p_sd15_openpose.pth` (1.1: `control_model.*` only), mapped by diffusers' single-file ControlNet
  conversion; a diffusers-layout state dict loads as it is. A diffusers folder needs no conversion: `load_adapter`
  reads it.
- Stable-Pose's Human-Art / LAION-Human checkpoints (`final.pth`, a bare state dict, or Lightning's `last.ckpt`):
  only `stable_pose_adapter.*` is kept.
- HumanSD `humansd-v1.ckpt`: an SD2.1-base LDM checkpoint whose UNet (`model.diffusion_model.*`, 8 input channels)
  is the trained part; its VAE and OpenCLIP text tower are converted and checked strictly against the base arch, then
  left out (they are SD2.1-base's frozen parts), and its pose network (`mmpose_model.*`) is dropped.

Every converter maps each key by a rule, reports what it dropped, fails with a one-line WeightsError naming any key
that has no place, and loads strictly (every tensor of ours filled, same shapes).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, convert_ldm_unet_checkpoint
from omegaconf import DictConfig
from torch import nn

from ..errors import ConfigError, WeightsError
from ..files import few, read_checkpoint, state_dict_of
from ..sd15 import sd15_config
from .loader import adapter_with_weights
from .release import RELEASE_DROPPED_KEYS, split_state_dict

BASELINE_KINDS = ("t2i_adapter", "uni_controlnet", "stable_pose", "controlnet", "humansd")

# ------------------------------------------------------------------------------------------------ T2I-Adapter
# The original Adapter keeps its 4 levels x num_res_blocks ResnetBlocks in one flat list `body`; diffusers' FullAdapter
# nests them as body[level].resnets[j]. The 1x1 channel change sits on the level's first block in both.
T2I_OPTIONAL_PREFIX = "adapter."
_T2I_CONV_IN = re.compile(r"^conv_in\.(weight|bias)$")
_T2I_BLOCK = re.compile(r"^body\.(\d+)\.(block1|block2)\.(weight|bias)$")
_T2I_IN_CONV = re.compile(r"^body\.(\d+)\.in_conv\.(weight|bias)$")
_T2I_DIFFUSERS = re.compile(r"^body\.\d+\.(resnets\.\d+\.(block1|block2)|in_conv)\.(weight|bias)$|^conv_in\.")


def _t2i_layout_is_diffusers(keys: list[str]) -> bool:
    return any(".resnets." in k for k in keys)


def map_t2i_adapter_keys(keys: list[str], num_res_blocks: int = 2) -> tuple[dict[str, str], list[str]]:
    """Keys of a released T2I-Adapter state dict -> ({our key: their key}, unmapped keys)."""
    diffusers_layout = _t2i_layout_is_diffusers(keys)
    mapping: dict[str, str] = {}
    unmapped = []
    for key in keys:
        bare = key[len(T2I_OPTIONAL_PREFIX):] if key.startswith(T2I_OPTIONAL_PREFIX) else key
        ours = None
        if diffusers_layout:
            ours = "adapter." + bare if _T2I_DIFFUSERS.match(bare) else None
        elif m := _T2I_CONV_IN.match(bare):
            ours = f"adapter.conv_in.{m[1]}"
        elif m := _T2I_BLOCK.match(bare):
            level, j = divmod(int(m[1]), num_res_blocks)
            ours = f"adapter.body.{level}.resnets.{j}.{m[2]}.{m[3]}"
        elif (m := _T2I_IN_CONV.match(bare)) and int(m[1]) % num_res_blocks == 0:
            ours = f"adapter.body.{int(m[1]) // num_res_blocks}.in_conv.{m[2]}"
        if ours is None or ours in mapping:
            unmapped.append(key)
        else:
            mapping[ours] = key
    return mapping, sorted(unmapped)


def prepare_t2i_adapter_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (our state dict, report) without building the adapter; raises WeightsError on unmapped keys."""
    _require_kind(model_cfg, "t2i_adapter")
    mapping, unmapped = map_t2i_adapter_keys(list(state))
    if unmapped:
        raise WeightsError(f"Cannot convert {source}: {len(unmapped)} keys with no place in T2I-Adapter's layout: "
                           f"{few(unmapped)}. The rules are grpose.weights.baselines.map_t2i_adapter_keys (the "
                           "original `conv_in` / `body.N.block1|block2|in_conv`, or diffusers' `adapter.body.*`)")
    converted = {ours: state[theirs] for ours, theirs in mapping.items()}
    layout = "diffusers" if _t2i_layout_is_diffusers(list(state)) else "original"
    return converted, {"mapped": mapping, "dropped": [], "unmapped": [], "layout": layout}


def convert_t2i_adapter_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                                   ) -> tuple[nn.Module, dict[str, Any]]:
    """A released T2I-Adapter state dict -> our T2IAdapterBaseline, strictly. Returns (adapter, report)."""
    return convert_baseline_state_dict("t2i_adapter", state, model_cfg, source)


# --------------------------------------------------------------------------------------------- Uni-ControlNet
UNI_ADAPTER_PREFIX = "local_adapter."
# The rest of the integrated uni.ckpt: the global (content) adapter, which a pose-only comparison does not use, and
# the frozen SD1.5 parts and LDM noise-schedule buffers, which grpose loads from SD1.5's own file or recomputes.
UNI_DROPPED_PREFIXES = (
    "global_adapter.",
    "model.diffusion_model.",
    "model_ema.",
    "first_stage_model.",
    "cond_stage_model.",
)
# The released local adapter stacks 7 conditions of 3 channels, [canny, mlsd, hed, sketch, openpose, midas, seg]:
# openpose is channels 12..14. Pose-only use feeds zeros to the others, so keeping only these input channels of the
# first conv computes the same function.
UNI_CONDITIONS = ("canny", "mlsd", "hed", "sketch", "openpose", "midas", "seg")
UNI_OPENPOSE_CHANNELS = (12, 15)
_UNI_FIRST_CONV = "feature_extractor.stem.0.weight"
# Their FeatureExtractor names -> ours (grpose.models.pose_encoder.PoseEncoder, same structure). Everything else is
# the UNet-mirroring trunk in LDM names (time_embed, input_blocks, zero_convs, middle_block, middle_block_out),
# placed by diffusers' own LDM ControlNet conversion; its FDN sub-modules (norm_in / norm_out .conv_gamma /
# .conv_beta) keep their names there, as ours do.
UNI_KEY_TABLE: dict[str, str] = {
    r"^feature_extractor\.pre_extractor\.(\d+)\.": r"feature_extractor.stem.\1.",
    r"^feature_extractor\.extractors\.(\d+)\.0\.": r"feature_extractor.stages.\1.0.",
    r"^feature_extractor\.zero_convs\.(\d+)\.": r"feature_extractor.zero_convs.\1.",
}
_UNI_PATTERNS = [(re.compile(p), r) for p, r in UNI_KEY_TABLE.items()]


def map_conditioned_trunk_keys(keys: list[str], unet_config: dict) -> tuple[dict[str, str], list[str]]:
    """Keys of a ControlNet-style adapter in LDM names with a Uni-ControlNet-style `feature_extractor` (Uni-ControlNet's
    local adapter, Stable-Pose's adapter; prefix removed) -> ({our key: their key}, unmapped keys).

    The feature extractor goes by UNI_KEY_TABLE; the trunk by diffusers' LDM ControlNet conversion, which renames a
    ResBlock's LDM parts (in_layers.2 -> conv1, ...) and keeps any other sub-module name (FDN's norm_in, Stable-Pose's
    attn_layer / cond_conv), as ours are named.
    """
    mapping: dict[str, str] = {}
    trunk = []
    for key in keys:
        for pattern, replacement in _UNI_PATTERNS:
            if pattern.match(key):
                mapping[pattern.sub(replacement, key, count=1)] = key
                break
        else:
            if not key.startswith("feature_extractor."):
                trunk.append(key)
    # diffusers' converter only moves values around, so run it on the names: each value says where a key went.
    placed = convert_controlnet_checkpoint({k: k for k in trunk}, unet_config) if trunk else {}
    mapping.update({ours: theirs for ours, theirs in placed.items() if theirs is not None})
    used = set(mapping.values())
    return mapping, sorted(k for k in keys if k not in used)


def prepare_conditioned_trunk(state: dict[str, torch.Tensor], prefix: str, dropped_prefixes: tuple[str, ...],
                              model_cfg: DictConfig, source: str, what: str
                              ) -> tuple[dict[str, torch.Tensor], dict[str, str], list[str]]:
    """The shared conversion of a ControlNet-style adapter stored under `prefix` with a Uni-ControlNet-style feature
    extractor (Uni-ControlNet's local adapter, Stable-Pose's adapter) -> (our tensors, {our key: their full key},
    dropped keys); raises WeightsError naming the keys that belong to no known part or find no place in ours."""
    adapter, dropped, unknown = split_state_dict(state, prefix, dropped_prefixes)
    if not adapter:
        raise WeightsError(f"{source} has no '{prefix}*' keys: not a {what} checkpoint")
    mapping, unmapped = map_conditioned_trunk_keys(list(adapter), sd15_config(model_cfg.base, "unet"))
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys outside '{prefix}' that are no known part: {few(sorted(unknown))}")
    if unmapped:
        problems.append(f"{len(unmapped)} adapter keys with no place in our layout: "
                        f"{few([prefix + k for k in unmapped])}")
    if problems:
        raise WeightsError(f"Cannot convert {source}: " + "; ".join(problems) + ". The mapping is "
                           "grpose.weights.baselines.UNI_KEY_TABLE plus diffusers' ControlNet conversion for the trunk")
    converted = {ours: adapter[theirs] for ours, theirs in mapping.items()}
    return converted, {ours: prefix + theirs for ours, theirs in mapping.items()}, dropped


def prepare_uni_controlnet_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig,
                                      source: str = "checkpoint") -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (our state dict, report) without building the adapter; raises WeightsError on unmapped keys.

    report: {"mapped": {ours: theirs}, "dropped": [...], "unmapped": [], "condition_channels": N, "sliced": bool}.
    """
    _require_kind(model_cfg, "uni_controlnet")
    converted, names, dropped = prepare_conditioned_trunk(state, UNI_ADAPTER_PREFIX, UNI_DROPPED_PREFIXES, model_cfg,
                                                          source, "Uni-ControlNet")
    channels = converted[_UNI_FIRST_CONV].shape[1] if _UNI_FIRST_CONV in converted else 3
    sliced = channels == 3 * len(UNI_CONDITIONS)
    if sliced:
        start, stop = UNI_OPENPOSE_CHANNELS
        converted[_UNI_FIRST_CONV] = converted[_UNI_FIRST_CONV][:, start:stop]
    elif channels != 3:
        raise WeightsError(f"{source}: {names[_UNI_FIRST_CONV]} takes {channels} condition channels; expected 3 (a "
                           f"pose-only adapter) or {3 * len(UNI_CONDITIONS)} (the released 7-condition one)")
    return converted, {"mapped": names, "dropped": dropped, "unmapped": [], "condition_channels": channels,
                       "sliced": sliced}


def convert_uni_controlnet_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig,
                                      source: str = "checkpoint") -> tuple[nn.Module, dict[str, Any]]:
    """Uni-ControlNet's (integrated) state dict -> our UniControlNetAdapter, strictly. Returns (adapter, report)."""
    return convert_baseline_state_dict("uni_controlnet", state, model_cfg, source)


# ------------------------------------------------------------------------------------------------ Stable-Pose
SP_ADAPTER_PREFIX = "stable_pose_adapter."
# The rest of Stable-Pose's checkpoints (`final.pth` = the whole model's state dict, or Lightning's `last.ckpt`): the
# frozen SD1.5 parts and the LDM noise-schedule buffers, which grpose loads from SD1.5's own file or recomputes.
SP_DROPPED_PREFIXES = (
    "model.diffusion_model.",
    "model_ema.",
    "first_stage_model.",
    "cond_stage_model.",
)


def prepare_stable_pose_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                                   ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (our state dict, report) without building the adapter; raises WeightsError on unmapped keys.

    Stable-Pose's adapter has the same trunk and feature extractor names as Uni-ControlNet's local adapter; its
    AttnResBlock at `input_blocks.1.0` keeps `attn_layer.*` (the PMSA-ViT, whose sub-module names ours follow) and
    `cond_conv.*`, and renames in_layers.2 / emb_layers.1 / out_layers.3 like any ResBlock.
    """
    _require_kind(model_cfg, "stable_pose")
    converted, names, dropped = prepare_conditioned_trunk(state, SP_ADAPTER_PREFIX, SP_DROPPED_PREFIXES, model_cfg,
                                                          source, "Stable-Pose")
    return converted, {"mapped": names, "dropped": dropped, "unmapped": []}


# ---------------------------------------------------------------------------------------------------- ControlNet
CONTROLNET_PREFIX = "control_model."
# ControlNet 1.0's `control_sd15_*.pth` are the whole ControlLDM: the control model plus SD1.5 and the LDM schedule
# buffers (dropped: grpose loads SD1.5 from its own file). ControlNet 1.1's `control_v11p_sd15_*.pth` hold only
# `control_model.*`; some third-party files hold the control model with no prefix at all.
CONTROLNET_DROPPED_PREFIXES = (
    "model.diffusion_model.",
    "model_ema.",
    "first_stage_model.",
    "cond_stage_model.",
)


def _controlnet_layout(keys: list[str]) -> str:
    if any(k.startswith(CONTROLNET_PREFIX) for k in keys):
        return "ldm"
    if "time_embed.0.weight" in keys:
        return "ldm (no prefix)"
    if "time_embedding.linear_1.weight" in keys:
        return "diffusers"
    return "unknown"


def prepare_controlnet_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                                  ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """A released ControlNet (LDM layout `control_model.*` / bare, or a diffusers-layout state dict) -> (our state
    dict, report) for ControlNetBaseline (= diffusers' ControlNetModel); raises WeightsError on unmapped keys.

    The LDM names are placed by diffusers' own single-file ControlNet conversion
    (`diffusers.loaders.single_file_utils.convert_controlnet_checkpoint`, which `ControlNetModel.from_single_file`
    runs), applied to the key names so every key's destination, and every key left over, is known.
    """
    _require_kind(model_cfg, "controlnet")
    layout = _controlnet_layout(list(state))
    if layout == "unknown":
        raise WeightsError(f"{source} has neither '{CONTROLNET_PREFIX}*' keys nor a ControlNet's time embedding "
                           "(time_embed.0.weight / time_embedding.linear_1.weight): not a ControlNet checkpoint")
    dropped: list[str] = []
    unknown: list[str] = []
    prefix = CONTROLNET_PREFIX if layout == "ldm" else ""
    if layout == "ldm":
        control, dropped, unknown = split_state_dict(state, CONTROLNET_PREFIX, CONTROLNET_DROPPED_PREFIXES)
    else:
        control = dict(state)
    if layout == "diffusers":
        mapping = {k: k for k in control}  # already our names; the strict load checks them
    else:
        placed = convert_controlnet_checkpoint({k: k for k in control}, sd15_config(model_cfg.base, "unet"))
        mapping = {ours: theirs for ours, theirs in placed.items() if theirs is not None}
    used = set(mapping.values())
    unmapped = sorted(k for k in control if k not in used)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys outside '{CONTROLNET_PREFIX}' that are no known part: "
                        f"{few(sorted(unknown))}")
    if unmapped:
        problems.append(f"{len(unmapped)} control model keys with no place in diffusers' ControlNetModel: "
                        f"{few([prefix + k for k in unmapped])}")
    if problems:
        raise WeightsError(f"Cannot convert {source}: " + "; ".join(problems) + ". The mapping is diffusers' "
                           "single-file ControlNet conversion (convert_controlnet_checkpoint)")
    converted = {ours: control[theirs] for ours, theirs in mapping.items()}
    names = {ours: prefix + theirs for ours, theirs in mapping.items()}
    return converted, {"mapped": names, "dropped": dropped, "unmapped": [], "layout": layout}


# ---------------------------------------------------------------------------------------------------- HumanSD
HUMANSD_UNET_PREFIX = "model.diffusion_model."
# The frozen SD2.1-base parts (converted and checked, not kept), the HigherHRNet of the training loss, and a possible
# EMA copy of the UNet (HumanSD trains with use_ema False; a file that has one still converts its live weights).
HUMANSD_BASE_PREFIXES = ("first_stage_model.", "cond_stage_model.")
HUMANSD_DROPPED_PREFIXES = (*HUMANSD_BASE_PREFIXES, "mmpose_model.", "model_ema.")


def map_humansd_unet_keys(keys: list[str], unet_config: dict) -> tuple[dict[str, str], list[str]]:
    """LDM UNet keys (with `model.diffusion_model.`) -> ({our HumanSDUNet key: their key}, unmapped keys).

    diffusers' own LDM UNet conversion places them (it only moves values, so it runs on the names); a key it leaves
    behind has no place in a diffusers UNet of `unet_config` (8 input channels, SD2's linear proj_in / proj_out).
    """
    placed = convert_ldm_unet_checkpoint({k: k for k in keys}, unet_config)
    mapping = {ours: theirs for ours, theirs in placed.items() if isinstance(theirs, str)}
    used = set(mapping.values())
    return mapping, sorted(k for k in keys if k not in used)


def prepare_humansd_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                               ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """-> (our HumanSDUNet state dict, report) without building the UNet; raises WeightsError on unmapped keys or on
    base parts that do not fit `model.base` (strict: every VAE / text-encoder tensor of the arch filled).

    report: {"mapped": {ours: theirs}, "dropped": [...], "unmapped": [], "base": {"vae": n, "text_encoder": n,
    "unused": n}, "dropped_prefixes": HUMANSD_DROPPED_PREFIXES}.
    """
    _require_kind(model_cfg, "humansd")
    unet_keys = [k for k in state if k.startswith(HUMANSD_UNET_PREFIX)]
    if not unet_keys:
        raise WeightsError(f"{source} has no '{HUMANSD_UNET_PREFIX}*' keys: not a HumanSD (LDM-layout) checkpoint")
    dropped = [k for k in state if k.startswith(HUMANSD_DROPPED_PREFIXES) or k in RELEASE_DROPPED_KEYS]
    unknown = sorted(k for k in state if not k.startswith(HUMANSD_UNET_PREFIX) and k not in set(dropped))
    unet_config = {**sd15_config(model_cfg.base, "unet")}
    unet_config["in_channels"] = 2 * unet_config["in_channels"]
    mapping, unmapped = map_humansd_unet_keys(unet_keys, unet_config)
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} keys that are no known part: {few(unknown)}")
    if unmapped:
        problems.append(f"{len(unmapped)} UNet keys with no place in a diffusers UNet: {few(unmapped)}")
    if problems:
        raise WeightsError(f"Cannot convert {source}: " + "; ".join(problems) + ". The UNet goes through diffusers' "
                           "LDM UNet conversion; the other known parts are " + ", ".join(HUMANSD_DROPPED_PREFIXES))
    base = _check_humansd_base(state, model_cfg.base, source)
    converted = {ours: state[theirs] for ours, theirs in mapping.items()}
    return converted, {"mapped": mapping, "dropped": sorted(dropped), "unmapped": [], "base": base,
                       "dropped_prefixes": HUMANSD_DROPPED_PREFIXES}


def _check_humansd_base(state: dict[str, torch.Tensor], arch: str, source: str) -> dict[str, int]:
    """Convert the VAE and text tower strictly against `arch` (on their own tensors, so meta tensors work too);
    -> tensor counts. A file without them (a UNet-only export) passes with zero counts."""
    from ..sd15.single_file import LDM_OPEN_CLIP_PREFIX, frozen_parts_from_ldm_state_dict, split_open_clip_state_dict

    base = {k: v for k, v in state.items() if k.startswith(HUMANSD_BASE_PREFIXES)}
    if not base:
        return {"vae": 0, "text_encoder": 0, "unused": 0}
    vae, text_encoder = frozen_parts_from_ldm_state_dict(base, arch, Path(source))
    layers = text_encoder.config.num_hidden_layers
    _, unused = split_open_clip_state_dict(base, layers)
    text_keys = sum(k.startswith(LDM_OPEN_CLIP_PREFIX) for k in base)
    return {"vae": sum(k.startswith("first_stage_model.") for k in base), "text_encoder": text_keys - len(unused),
            "unused": len(unused)}


def convert_humansd_state_dict(state: dict[str, torch.Tensor], model_cfg: DictConfig, source: str = "checkpoint"
                               ) -> tuple[nn.Module, dict[str, Any]]:
    """HumanSD's LDM-layout state dict -> our HumanSDUNet, strictly. Returns (UNet, report)."""
    return convert_baseline_state_dict("humansd", state, model_cfg, source)


# ------------------------------------------------------------------------------------------------------ common
PREPARERS = {"t2i_adapter": prepare_t2i_adapter_state_dict, "uni_controlnet": prepare_uni_controlnet_state_dict,
             "stable_pose": prepare_stable_pose_state_dict, "controlnet": prepare_controlnet_state_dict,
             "humansd": prepare_humansd_state_dict}


def _require_kind(model_cfg: DictConfig, kind: str) -> None:
    if model_cfg.adapter != kind:
        raise ConfigError(f"converting a {kind} checkpoint needs model.adapter={kind} (got {model_cfg.adapter!r})")


def convert_baseline_state_dict(kind: str, state: dict[str, torch.Tensor], model_cfg: DictConfig,
                                source: str = "checkpoint") -> tuple[nn.Module, dict[str, Any]]:
    """Dispatch on `kind` (one of BASELINE_KINDS): -> (adapter, report)."""
    if kind not in PREPARERS:
        raise ConfigError(f"unknown baseline kind {kind!r}; expected one of {', '.join(BASELINE_KINDS)}")
    converted, report = PREPARERS[kind](state, model_cfg, source)
    return adapter_with_weights(model_cfg, converted, source, report["mapped"]), report


def convert_baseline_checkpoint(kind: str, path: str | Path, model_cfg: DictConfig, trust_pickle: bool = False
                                ) -> tuple[nn.Module, dict[str, Any]]:
    """Read a released checkpoint file (.pth / .ckpt / .bin / .safetensors; a Lightning `state_dict` is unwrapped)
    and convert it; see `convert_baseline_state_dict`."""
    path = Path(path)
    state = state_dict_of(read_checkpoint(path, trust_pickle), path)
    return convert_baseline_state_dict(kind, state, model_cfg, str(path))


def count_by_prefix(keys: list[str], prefixes: tuple[str, ...] = (*UNI_DROPPED_PREFIXES, "mmpose_model."),
                    other: str = "LDM buffers (noise schedule)") -> list[str]:
    """'    prefix  count' lines for a key report of dropped keys."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = next((p for p in prefixes if key.startswith(p)), other)
        counts[prefix] = counts.get(prefix, 0) + 1
    return [f"    {prefix:<34} {n:>4}" for prefix, n in counts.items()]


def describe(kind: str, report: dict[str, Any]) -> Optional[str]:
    """A one-line note on what the conversion changed beyond renaming, or None."""
    if kind == "uni_controlnet" and report.get("sliced"):
        start, stop = UNI_OPENPOSE_CHANNELS
        return (f"condition input: kept channels {start}..{stop - 1} (openpose) of {report['condition_channels']}; "
                "the other conditions' channels are zero in pose-only use, so the function is unchanged")
    if kind in ("t2i_adapter", "controlnet"):
        return f"key layout: {report['layout']}"
    if kind == "humansd" and report.get("base"):
        base = report["base"]
        return (f"base parts checked against the arch and not written (SD2.1-base's frozen parts): VAE "
                f"{base['vae']} tensors, text encoder {base['text_encoder']} (+{base['unused']} open_clip tensors "
                "SD2 never runs)")
    return None
