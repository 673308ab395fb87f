"""Stable-Pose (Wang et al. 2024): a ControlNet-style encoder copy whose first ResNet block is an attention block with
a pose-masked vision transformer (PMSA-ViT), fed with coarse-to-fine masks dilated around the skeleton.

The trunk is the one GRPose and Uni-ControlNet share (`ConditionedTrunk`): conv_in, time embedding, down blocks and
middle block copied from the UNet, 12 + 1 zero 1x1 convs giving `down_block_additional_residuals` /
`mid_block_additional_residual`. Only level 0's first ResNet block (LDM `input_blocks[1][0]`, diffusers
`down_blocks[0].resnets[0]`) changes: it becomes an `AttnResBlock`. Sizes derive from the UNet config, so the same
code builds the SD1.5 adapter and the tiny / mini test ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .pose_encoder import PoseEncoder
from .residuals import PoseAdapterMixin
from .trunk import ConditionedTrunk

# A skeleton pixel is any pixel above the black (-1) background; the margin keeps float noise on the background out.
BACKGROUND_MARGIN = 1e-3
SOFT_MASK_SCOPES = ("sample", "batch")


# ------------------------------------------------------------------------------------------------------ masks
def dilated_pose_mask(pose_image: torch.Tensor, grid: tuple[int, int], kernel_size: int) -> torch.Tensor:
    """B x h x w bool: the grid cells whose image patch holds a skeleton pixel after a square dilation by
    (kernel_size - 1) / 2 pixels.

    Stable-Pose builds this mask as "Gaussian blur (k x k, sigma 3) of the [-1, 1] pose image, then > -1": with exact
    arithmetic every pixel within the k x k window of a skeleton pixel rises above -1, which is this dilation. Done
    with a blur in float32 the threshold breaks (a blurred constant -1 lands a hair above -1 for k = 23, so that mask
    is all ones); the dilation is computed here directly, as a max pool, in any dtype.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"mask kernel sizes must be odd and positive, got {kernel_size}")
    on = (pose_image.float() > -1 + BACKGROUND_MARGIN).any(dim=1, keepdim=True).float()
    dilated = F.max_pool2d(on, kernel_size, stride=1, padding=kernel_size // 2)
    return F.adaptive_max_pool2d(dilated, grid)[:, 0] > 0


def token_attention_mask(cell_mask: torch.Tensor, patch_size: int) -> torch.Tensor:
    """B x h x w cell mask -> B x N x N bool over the N = (h/p)(w/p) patch tokens: a token is a pose token when any
    of its cells is on, and the pair (query, key) may attend when either of them is a pose token."""
    tokens = F.max_pool2d(cell_mask[:, None].float(), patch_size)[:, 0].flatten(1) > 0
    return tokens[:, :, None] | tokens[:, None, :]


# -------------------------------------------------------------------------------------------------- PMSA-ViT
def sincos_position_embedding(rows: int, cols: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine embedding, rows*cols x dim, token order row-major: a quarter of the channels each for
    sin(x), cos(x), sin(y), cos(y) with frequencies 10000^(-i / (dim/4 - 1))."""
    if dim % 4 or dim < 8:
        raise ValueError(f"the sine-cosine position embedding needs a width divisible by 4 and >= 8, got {dim}")
    quarter = dim // 4
    freq = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float32) / (quarter - 1))
    y, x = torch.meshgrid(torch.arange(rows, dtype=torch.float32), torch.arange(cols, dtype=torch.float32),
                          indexing="ij")
    x = x.flatten()[:, None] * freq
    y = y.flatten()[:, None] * freq
    return torch.cat([x.sin(), x.cos(), y.sin(), y.cos()], dim=1)


class Patchify(nn.Module):
    """B x C x H x W -> B x (H/p * W/p) x (p * p * C): row-major tokens, each patch's pixels row-major then channels."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
        return x.reshape(b, (h // p) * (w // p), p * p * c)


class Unpatchify(nn.Module):
    """The inverse of `Patchify` for a known token grid."""

    def __init__(self, patch_size: int):
        super().__init__()
        self.patch_size = patch_size

    def forward(self, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        b, _, width = tokens.shape
        p, (rows, cols) = self.patch_size, grid
        c = width // (p * p)
        x = tokens.reshape(b, rows, cols, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(b, c, rows * p, cols * p)


class SoftMaskedAttention(nn.Module):
    """Pre-LN multi-head self-attention (LayerNorm, bias-free qkv and output projections) with Stable-Pose's soft
    mask: a disallowed logit is not -inf but the smallest logit (detached), so masked pairs keep a little weight.

    `soft_mask_scope`: where that minimum is taken. "sample" (default): over each sample's own logits, so a sample's
    output does not depend on the rest of its batch. "batch": over the whole batch x heads x N x N tensor, as
    Stable-Pose's code does.
    """

    def __init__(self, dim: int, heads: int, head_dim: int, soft_mask_scope: str = "sample"):
        super().__init__()
        if soft_mask_scope not in SOFT_MASK_SCOPES:
            raise ValueError(f"soft_mask_scope must be one of {SOFT_MASK_SCOPES}, got {soft_mask_scope!r}")
        self.heads, self.head_dim, self.soft_mask_scope = heads, head_dim, soft_mask_scope
        self.norm = nn.LayerNorm(dim)
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_out = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x: torch.Tensor, allowed: Optional[torch.Tensor] = None) -> torch.Tensor:
        """x: B x N x dim; allowed: B x N x N bool or None (no mask). Returns the attention output (no residual)."""
        b, n, _ = x.shape
        q, k, v = self.to_qkv(self.norm(x)).reshape(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        logits = q @ k.transpose(-1, -2) * self.head_dim ** -0.5  # B x heads x N x N
        if allowed is not None:
            if self.soft_mask_scope == "batch":
                floor = logits.detach().amin()
            else:
                floor = logits.detach().flatten(1).amin(dim=1)[:, None, None, None]
            logits = torch.where(allowed[:, None], logits, floor)
        out = logits.softmax(dim=-1) @ v
        return self.to_out(out.transpose(1, 2).reshape(b, n, self.heads * self.head_dim))


class FeedForward(nn.Module):
    """Pre-LN MLP: LayerNorm, Linear, GELU, Linear."""

    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden_dim), nn.GELU(), nn.Linear(hidden_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class MaskedTransformer(nn.Module):
    """`depth` pre-LN layers (x += attn(x, mask_i); x += ff(x)); layer i uses the i-th mask. No final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, head_dim: int, mlp_dim: int, soft_mask_scope: str):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([SoftMaskedAttention(dim, heads, head_dim, soft_mask_scope), FeedForward(dim, mlp_dim)])
            for _ in range(depth))

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        if masks is not None and len(masks) != len(self.layers):
            raise ValueError(f"the masked transformer has {len(self.layers)} layers but got {len(masks)} masks")
        for i, (attention, feed_forward) in enumerate(self.layers):
            x = x + attention(x, None if masks is None else masks[i])
            x = x + feed_forward(x)
        return x


class PMSAViT(nn.Module):
    """Stable-Pose's pose-masked self-attention ViT on a B x C x h x w feature map (Stable-Pose section 3.2).

    Patch embedding: 3x3 conv C -> c, p x p patches (p*p*c wide tokens), LayerNorm, Linear, LayerNorm; a fixed
    sine-cosine position embedding for the token grid (not a parameter: any grid size works); `depth` masked
    transformer layers, layer i masked with the i-th (coarse to fine) mask; tokens back to a c x h x w map and a 3x3
    conv to C. The token width is p*p*c (512 for SD1.5: c = 128, p = 2), so tokens unpatchify without a projection.
    """

    def __init__(self, channels: int, reduced_channels: int, patch_size: int = 2, depth: int = 2, heads: int = 8,
                 head_dim: Optional[int] = None, mlp_dim: Optional[int] = None, soft_mask_scope: str = "sample"):
        super().__init__()
        dim = patch_size * patch_size * reduced_channels
        self.patch_size, self.dim = patch_size, dim
        # Sequential indices (conv 0, patchify 1, LN 2, Linear 3, LN 4; unpatchify 0, conv 1) follow Stable-Pose's
        # module names, so its checkpoints map without renaming inside the ViT.
        self.to_patch_embedding = nn.Sequential(
            nn.Conv2d(channels, reduced_channels, 3, padding=1), Patchify(patch_size), nn.LayerNorm(dim),
            nn.Linear(dim, dim), nn.LayerNorm(dim))
        self.transformer = MaskedTransformer(dim, depth, heads, head_dim or channels // heads, mlp_dim or dim,
                                             soft_mask_scope)
        self.to_out = nn.ModuleList([Unpatchify(patch_size), nn.Conv2d(reduced_channels, channels, 3, padding=1)])

    def forward(self, x: torch.Tensor, masks: Optional[Sequence[torch.Tensor]] = None) -> torch.Tensor:
        """x: B x C x h x w (h, w multiples of the patch size); masks: one B x N x N bool per layer, or None."""
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise ValueError(f"PMSA-ViT input {h}x{w} is not divisible by its patch size {p}")
        grid = (h // p, w // p)
        tokens = self.to_patch_embedding(x)
        tokens = tokens + sincos_position_embedding(*grid, self.dim).to(tokens.device, tokens.dtype)
        tokens = self.transformer(tokens, masks)
        unpatchify, conv = self.to_out
        return conv(unpatchify(tokens, grid))


# ----------------------------------------------------------------------------------------------- the block
@dataclass(frozen=True)
class StablePoseCondition:
    """What `StablePoseAdapter.encode_pose` computes once per image: the level-0 pose feature and one token
    attention mask per PMSA layer (coarse to fine). `to(dtype)` casts the feature only; the masks stay bool."""

    feature: torch.Tensor
    masks: tuple[torch.Tensor, ...]

    def to(self, dtype: torch.dtype) -> "StablePoseCondition":
        return replace(self, feature=self.feature.to(dtype))


class AttnResBlock(nn.Module):
    """Stable-Pose's replacement of the first ResNet block (LDM `input_blocks[1][0]`):

        h = conv1(SiLU(x)) + time_emb_proj(SiLU(temb))      no GroupNorm before the SiLU
        h = PMSAViT(h, masks)                                replaces h (no residual around it)
        h = GroupNorm(h, affine=False) + cond_conv(pose feature)
        out = shortcut(x) + conv2(Dropout(SiLU(h)))

    conv1 / time_emb_proj / conv2 / conv_shortcut carry diffusers' ResnetBlock2D names and are initialised from the
    block they replace (conv2 gets SD's weights, as in Stable-Pose's weight preparation).
    """

    def __init__(self, in_channels: int, out_channels: int, temb_channels: int, pose_channels: int,
                 vit_channels: int, vit_heads: int, depth: int, patch_size: int = 2, groups: int = 32,
                 eps: float = 1e-5, dropout: float = 0.0, soft_mask_scope: str = "sample"):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_emb_proj = nn.Linear(temb_channels, out_channels)
        self.attn_layer = PMSAViT(out_channels, vit_channels, patch_size, depth, vit_heads,
                                  soft_mask_scope=soft_mask_scope)
        self.norm = nn.GroupNorm(groups, out_channels, eps=eps, affine=False)
        self.cond_conv = nn.Conv2d(pose_channels, out_channels, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, temb: torch.Tensor, condition: StablePoseCondition) -> torch.Tensor:
        if condition.feature.shape[-2:] != x.shape[-2:]:
            raise ValueError(f"Stable-Pose's pose feature is {tuple(condition.feature.shape[-2:])}, the latent "
                             f"feature {tuple(x.shape[-2:])}: the pose image must be the VAE's factor larger")
        h = self.conv1(F.silu(x)) + self.time_emb_proj(F.silu(temb))[:, :, None, None]
        h = self.attn_layer(h, condition.masks)
        h = self.norm(h) + self.cond_conv(condition.feature)
        h = self.conv2(self.dropout(F.silu(h)))
        return (x if self.conv_shortcut is None else self.conv_shortcut(x)) + h


def _level0_heads(unet_config: dict) -> int:
    heads = unet_config.get("num_attention_heads") or unet_config.get("attention_head_dim") or 8
    return int(heads[0] if isinstance(heads, (list, tuple)) else heads)


class StablePoseAdapter(PoseAdapterMixin, ConditionedTrunk, ModelMixin, ConfigMixin):
    """Stable-Pose's adapter: the ControlNet-style trunk, a pose feature extractor (the PoseEncoder stem and one
    stride-2 stage with its zero 3x3 conv: 192 @ 1/8 of the image for SD1.5), and an `AttnResBlock` at
    `down_blocks[0].resnets[0]`.

    Derived sizes (None): the ViT's reduced width is 2/5 of level 0's channels (128 for SD1.5's 320), its heads are
    the UNet's level-0 heads (8) with level-0 channels / heads per head (40). `mask_kernels`: the dilation window, in
    image pixels, of each PMSA layer's mask, coarse to fine (Stable-Pose: 23 then 13); their number is the depth.
    """

    _supports_gradient_checkpointing = True
    conditioned_block = AttnResBlock

    @register_to_config
    def __init__(self, unet_config: dict, stem_channels: Sequence[int] = (32, 64, 128), pose_channels: int = 192,
                 mask_kernels: Sequence[int] = (23, 13), patch_size: int = 2, vit_channels: Optional[int] = None,
                 vit_heads: Optional[int] = None, soft_mask_scope: str = "sample"):
        super().__init__()
        self._borrow_trunk(unet_config)  # its hint encoder into conv_in is not part of Stable-Pose
        if not mask_kernels:
            raise ValueError("mask_kernels needs at least one kernel size (one PMSA layer)")
        for k in mask_kernels:
            if k < 1 or k % 2 == 0:
                raise ValueError(f"mask_kernels entries must be odd and positive, got {list(mask_kernels)}")
        self.mask_kernels = tuple(int(k) for k in mask_kernels)
        self.patch_size = patch_size
        self.feature_extractor = PoseEncoder(3, stem_channels, [pose_channels])

        resnet = self.down_blocks[0].resnets[0]
        channels = resnet.conv1.out_channels
        heads = vit_heads or _level0_heads(unet_config)
        if channels % heads:
            raise ValueError(f"level 0 has {channels} channels, not divisible by {heads} PMSA-ViT heads")
        self.down_blocks[0].resnets[0] = AttnResBlock(
            resnet.conv1.in_channels, channels, self.time_embedding.linear_2.out_features, pose_channels,
            vit_channels=vit_channels or max(1, math.floor(channels * 2 / 5)), vit_heads=heads,
            depth=len(self.mask_kernels), patch_size=patch_size, groups=unet_config.get("norm_num_groups", 32),
            eps=unet_config.get("norm_eps", 1e-5), soft_mask_scope=soft_mask_scope)

    def pose_masks(self, pose_image: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, ...]:
        """One B x grid cell mask per PMSA layer (coarse to fine), from the [-1, 1] pose image."""
        return tuple(dilated_pose_mask(pose_image, grid, k) for k in self.mask_kernels)

    def encode_pose(self, pose_image: torch.Tensor) -> list[StablePoseCondition]:
        """The level-0 pose feature and the PMSA-ViT token masks; timestep-independent, so a sampler computes them
        once. Stable-Pose takes the [-1, 1] skeleton as it is. A list with one entry: level 0's condition."""
        feature = self._run(self.feature_extractor, pose_image)[0]
        with torch.no_grad():
            masks = tuple(token_attention_mask(m, self.patch_size)
                          for m in self.pose_masks(pose_image, tuple(feature.shape[-2:])))
        return [StablePoseCondition(feature, masks)]
