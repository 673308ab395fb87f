"""Conversion of the authors' released GRPose checkpoint (LDM layout, `control_model.*`) into our GraphPoseAdapter.

The differences it bridges are listed in docs/release_differences.md.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Optional

import torch
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint
from omegaconf import DictConfig
from torch import nn

from ..errors import ConfigError, WeightsError
from ..files import few, read_checkpoint, state_dict_of
from ..sd15 import sd15_config
from .loader import adapter_with_weights

RELEASE_ADAPTER_PREFIX = "control_model."
# Frozen parts of their LatentDiffusion model that every checkpoint carries (docs/release_differences.md); we load
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
# the PoseEncoder and the PGI layers without an SD ResBlock counterpart. The
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


def split_state_dict(state: dict[str, torch.Tensor], adapter_prefix: str, dropped_prefixes: tuple[str, ...],
                     dropped_keys: frozenset[str] = RELEASE_DROPPED_KEYS
                     ) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """An LDM-layout checkpoint -> (adapter tensors with `adapter_prefix` removed, dropped keys of the known frozen
    parts, keys that belong to neither)."""
    adapter, dropped, unknown = {}, [], []
    for key, value in state.items():
        if key.startswith(adapter_prefix):
            adapter[key[len(adapter_prefix):]] = value
        elif key.startswith(dropped_prefixes) or key in dropped_keys:
            dropped.append(key)
        else:
            unknown.append(key)
    return adapter, dropped, unknown


def split_release_state_dict(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str], list[str]]:
    """-> (adapter tensors with `control_model.` removed, dropped keys, keys that belong to neither)."""
    return split_state_dict(state, RELEASE_ADAPTER_PREFIX, RELEASE_DROPPED_PREFIXES)


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
                        f"{few(sorted(unknown))}")
    if unmapped:
        problems.append(f"{len(unmapped)} adapter keys with no place in our layout: " +
                        few([RELEASE_ADAPTER_PREFIX + k for k in unmapped]))
    if problems:
        raise WeightsError(f"Cannot convert {source}: " + "; ".join(problems) +
                           ". The mapping is grpose.weights.release.RELEASE_KEY_TABLE (plus diffusers' ControlNet conversion "
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
    state = state_dict_of(read_checkpoint(path, trust_pickle), path)
    return convert_release_state_dict(state, model_cfg, str(path))


def format_dropped(keys: list[str]) -> list[str]:
    """Counts of dropped keys per frozen part."""
    counts: dict[str, int] = {}
    for key in keys:
        prefix = next((p for p in RELEASE_DROPPED_PREFIXES if key.startswith(p)), "LDM buffers (noise schedule)")
        counts[prefix] = counts.get(prefix, 0) + 1
    return [f"    {prefix:<34} {n:>4}" for prefix, n in counts.items()]
