"""ViTPose for MMPose 0.x: the plain ViT backbone (ViTPose, Xu et al., NeurIPS 2022) registered as `ViT` in
mmpose's BACKBONES registry, and the top-down configs of SP-Ctrl's evaluator (ViTPose-H, 256x192, UDP).

mmpose 0.29 ships no ViT backbone; ViTPose's own repository adds one to its mmpose 0.x fork. This module builds
the same architecture with the same parameter names, so ViTPose checkpoints in their published key layout
(`backbone.patch_embed.proj.*`, `backbone.pos_embed`, `backbone.blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,
mlp.fc2}.*`, `backbone.last_norm.*`, `keypoint_head.deconv_layers.*`, `keypoint_head.final_layer.*`) load strictly.
Only `grpose.eval.pose_estimator` imports this module, and only when a ViT config is built.
"""

from __future__ import annotations

from functools import partial
from typing import Any, Optional

import torch
from torch import nn

from ..errors import ConfigError

#: ViTPose variants: (embed_dim, depth, num_heads). ViTPose-H is what SP-Ctrl evaluates with.
VITPOSE_ARCHS = {
    "vitpose_small": (384, 12, 12),
    "vitpose_base": (768, 12, 12),
    "vitpose_large": (1024, 24, 16),
    "vitpose_huge": (1280, 32, 16),
}
_LAYER_NORM = partial(nn.LayerNorm, eps=1e-6)  # ViTPose's norm layer


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class _Block(nn.Module):
    """Pre-norm transformer block with timm's parameter names (used when timm is not installed)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = _LAYER_NORM(dim)
        self.attn = _Attention(dim, num_heads, qkv_bias)
        self.norm2 = _LAYER_NORM(dim)
        self.mlp = _Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


def _block(dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool) -> nn.Module:
    try:
        from timm.models.vision_transformer import Block
    except ImportError:
        return _Block(dim, num_heads, mlp_ratio, qkv_bias)
    # timm's Block has exactly these parameters (norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2) when
    # layer scale and q/k norms are off, which are its defaults.
    return Block(dim, num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias, norm_layer=_LAYER_NORM)


class _PatchEmbed(nn.Module):
    def __init__(self, img_size: tuple[int, int], patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.num_patches = (img_size[0] // patch_size) * (img_size[1] // patch_size)
        # ViTPose pads the 16x16/16 patch convolution by 2 (`4 + 2 * (ratio // 2 - 1)` with ratio 1)
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, padding=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x)
        return x.flatten(2).transpose(1, 2), (x.shape[2], x.shape[3])


class ViTPoseBackbone(nn.Module):
    """Plain ViT of ViTPose: patch embedding, absolute position embedding (with a slot for the MAE class token,
    added to every patch, as ViTPose does), `depth` pre-norm blocks, a final LayerNorm; returns the B x C x H/16 x
    W/16 feature map for the heatmap head. `img_size` is (height, width)."""

    def __init__(self, img_size: Any = (256, 192), patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 ratio: int = 1, last_norm: bool = True, **unused: Any):
        super().__init__()
        if ratio != 1:
            raise ValueError(f"ViT backbone: only ratio=1 (non-overlapping patches, as every ViTPose model) is "
                             f"supported, got ratio={ratio}")
        # training-only options of ViTPose's config (drop_path_rate, use_checkpoint, frozen_stages, ...) do not
        # change the eval-mode network
        img_size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        self.patch_embed = _PatchEmbed(img_size, patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.patch_embed.num_patches + 1, embed_dim))
        self.blocks = nn.ModuleList(_block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.last_norm = _LAYER_NORM(embed_dim) if last_norm else nn.Identity()

    def init_weights(self, pretrained: Optional[str] = None) -> None:
        """Random init (truncated normal, std 0.02); checkpoints are loaded by grpose's strict loader."""
        if pretrained is not None:
            raise ValueError("ViT backbone: load ViTPose weights as a pose checkpoint, not as `pretrained`")
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        x, (hp, wp) = self.patch_embed(x)
        pos = self.pos_embed[:, 1:] + self.pos_embed[:, :1]
        if pos.shape[1] != x.shape[1]:
            raise ValueError(f"ViT backbone: the input gives {hp}x{wp} patches but the position embedding has "
                             f"{pos.shape[1]}; feed images of the configured img_size")
        x = x + pos
        for block in self.blocks:
            x = block(x)
        x = self.last_norm(x)
        return x.transpose(1, 2).reshape(b, -1, hp, wp).contiguous()


def register_vit_backbone() -> None:
    """Register `ViTPoseBackbone` as `ViT` in mmpose 0.x's BACKBONES (idempotent; ViTPose configs name it so)."""
    from mmpose.models.builder import BACKBONES

    existing = BACKBONES.get("ViT")
    if existing is None:
        BACKBONES.register_module(name="ViT", module=ViTPoseBackbone)
    elif existing is not ViTPoseBackbone:
        raise RuntimeError(f"mmpose's BACKBONES already holds another 'ViT' ({existing.__module__}); grpose registers "
                           f"its own ViTPose backbone under that name")


def vitpose_config(name: str = "vitpose_huge", image_size: tuple[int, int] = (192, 256),
                   embed_dim: Optional[int] = None, depth: Optional[int] = None, num_heads: Optional[int] = None
                   ) -> dict[str, Any]:
    """The mmpose 0.x top-down config of a ViTPose variant as SP-Ctrl evaluates (its ViTPose-H config for
    Human-Art: 256x192 input, 48x64 UDP heatmaps, flip test without heatmap shift, ImageNet normalisation).
    `image_size` is (width, height) as in mmpose's data_cfg; `embed_dim`/`depth`/`num_heads` override the variant
    (tests build a tiny one)."""
    if name not in VITPOSE_ARCHS:
        raise ConfigError(f"unknown ViTPose variant {name!r}; choose one of {', '.join(VITPOSE_ARCHS)} or give an "
                         f"mmpose 0.x config file")
    dim, layers, heads = VITPOSE_ARCHS[name]
    dim, layers, heads = embed_dim or dim, depth or layers, num_heads or heads
    width, height = image_size
    heatmap = [width // 4, height // 4]
    channel_cfg = dict(num_output_channels=17, dataset_joints=17, dataset_channel=[list(range(17))],
                       inference_channel=list(range(17)))
    return dict(
        model=dict(
            type="TopDown",
            pretrained=None,
            backbone=dict(type="ViT", img_size=(height, width), patch_size=16, embed_dim=dim, depth=layers,
                          num_heads=heads, ratio=1, mlp_ratio=4, qkv_bias=True),
            keypoint_head=dict(type="TopdownHeatmapSimpleHead", in_channels=dim, num_deconv_layers=2,
                               num_deconv_filters=(256, 256), num_deconv_kernels=(4, 4),
                               extra=dict(final_conv_kernel=1), out_channels=17,
                               loss_keypoint=dict(type="JointsMSELoss", use_target_weight=True)),
            train_cfg=dict(),
            test_cfg=dict(flip_test=True, post_process="default", shift_heatmap=False,
                          target_type="GaussianHeatmap", modulate_kernel=11, use_udp=True),
        ),
        channel_cfg=channel_cfg,
        data_cfg=dict(image_size=[width, height], heatmap_size=heatmap, num_output_channels=17, num_joints=17,
                      dataset_channel=channel_cfg["dataset_channel"],
                      inference_channel=channel_cfg["inference_channel"],
                      soft_nms=False, nms_thr=1.0, oks_thr=0.9, vis_thr=0.2, use_gt_bbox=True, det_bbox_thr=0.0,
                      bbox_file=""),
        test_pipeline=[
            dict(type="LoadImageFromFile"),
            dict(type="TopDownGetBboxCenterScale", padding=1.25),
            dict(type="TopDownAffine", use_udp=True),
            dict(type="ToTensor"),
            dict(type="NormalizeTensor", mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
            dict(type="Collect", keys=["img"],
                 meta_keys=["image_file", "center", "scale", "rotation", "bbox_score", "flip_pairs"]),
        ],
    )


def published_key_layout(embed_dim: int, depth: int, image_size: tuple[int, int] = (192, 256), patch_size: int = 16,
                         deconv_filters: int = 256, num_joints: int = 17) -> dict[str, tuple[int, ...]]:
    """Parameter and buffer names with shapes of a ViTPose checkpoint in ViTPose's mmpose 0.x layout (its
    `mmpose/models/backbones/vit.py` and mmpose's TopdownHeatmapSimpleHead), written out independently of the
    modules above so a test can check them against each other."""
    width, height = image_size
    num_patches = (height // patch_size) * (width // patch_size)
    d = embed_dim
    keys: dict[str, tuple[int, ...]] = {
        "backbone.pos_embed": (1, num_patches + 1, d),
        "backbone.patch_embed.proj.weight": (d, 3, patch_size, patch_size),
        "backbone.patch_embed.proj.bias": (d,),
    }
    for i in range(depth):
        p = f"backbone.blocks.{i}."
        keys.update({p + "norm1.weight": (d,), p + "norm1.bias": (d,),
                     p + "attn.qkv.weight": (3 * d, d), p + "attn.qkv.bias": (3 * d,),
                     p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                     p + "norm2.weight": (d,), p + "norm2.bias": (d,),
                     p + "mlp.fc1.weight": (4 * d, d), p + "mlp.fc1.bias": (4 * d,),
                     p + "mlp.fc2.weight": (d, 4 * d), p + "mlp.fc2.bias": (d,)})
    keys.update({"backbone.last_norm.weight": (d,), "backbone.last_norm.bias": (d,)})
    in_ch = d
    for layer in (0, 3):  # ConvTranspose2d, BatchNorm2d, ReLU per deconv stage
        keys[f"keypoint_head.deconv_layers.{layer}.weight"] = (in_ch, deconv_filters, 4, 4)
        bn = f"keypoint_head.deconv_layers.{layer + 1}."
        keys.update({bn + "weight": (deconv_filters,), bn + "bias": (deconv_filters,),
                     bn + "running_mean": (deconv_filters,), bn + "running_var": (deconv_filters,),
                     bn + "num_batches_tracked": ()})
        in_ch = deconv_filters
    keys["keypoint_head.final_layer.weight"] = (num_joints, deconv_filters, 1, 1)
    keys["keypoint_head.final_layer.bias"] = (num_joints,)
    return keys



# mmpose 1.x / mmpretrain names -> ViTPose (mmpose 0.x) names. mmpose 1.x released the Human-Art ViTPose models
# (e.g. td-hm_ViTPose-huge_8xb64-210e_humanart-256x192-603bb573_20230612.pth, the checkpoint SP-Ctrl's Human-Art
# config uses) with mmpretrain's VisionTransformer (`layers.N.ln1`, `ffn.layers.0.0`, final norm `ln1`) and a
# `head.` prefix; the tensors are the same, except that there is no class-token slot in the position embedding.
_MMPOSE1_RENAMES = (
    ("backbone.patch_embed.projection.", "backbone.patch_embed.proj."),
    ("backbone.ln1.", "backbone.last_norm."),
    ("head.deconv_layers.", "keypoint_head.deconv_layers."),
    ("head.final_layer.", "keypoint_head.final_layer."),
)
_MMPOSE1_BLOCK = (("ln1.", "norm1."), ("ln2.", "norm2."), ("attn.qkv.", "attn.qkv."), ("attn.proj.", "attn.proj."),
                  ("ffn.layers.0.0.", "mlp.fc1."), ("ffn.layers.1.", "mlp.fc2."))


def is_mmpose1_vitpose(state: dict[str, Any]) -> bool:
    return any(k.startswith("backbone.layers.") for k in state) and not any(k.startswith("backbone.blocks.")
                                                                          for k in state)


def from_mmpose1_layout(state: dict[str, Any], num_positions: int) -> tuple[dict[str, Any], list[str]]:
    """A ViTPose state dict in mmpose 1.x / mmpretrain names renamed to ViTPose's mmpose 0.x names; returns it and
    the keys that have no counterpart (empty for a plain ViTPose top-down checkpoint). `num_positions`: the
    length of the target model's position embedding (patches + the class-token slot)."""
    out: dict[str, Any] = {}
    unmapped: list[str] = []
    for key, value in state.items():
        new = None
        if key == "backbone.pos_embed":
            new = key
            if value.shape[1] == num_positions - 1:  # trained without a class token (`with_cls_token=False`)
                # ViTPose adds the slot's embedding to every patch; a zero slot leaves the patches unchanged
                value = torch.cat([value.new_zeros(value.shape[0], 1, value.shape[2]), value], dim=1)
        elif key.startswith("backbone.layers."):
            index, rest = key[len("backbone.layers."):].split(".", 1)
            for old, replacement in _MMPOSE1_BLOCK:
                if rest.startswith(old):
                    new = f"backbone.blocks.{index}.{replacement}{rest[len(old):]}"
                    break
        else:
            for old, replacement in _MMPOSE1_RENAMES:
                if key.startswith(old):
                    new = replacement + key[len(old):]
                    break
        if new is None:
            unmapped.append(key)
        else:
            out[new] = value
    return out, unmapped
