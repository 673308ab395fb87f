"""Experiment configuration: structured defaults in code, YAML deltas, `key=value` overrides, validation.

Every preset in `configs/` only lists what differs from these defaults. Unknown keys are errors.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from .errors import ConfigError
from .losses.diffusion import TIMESTEP_SAMPLINGS
from .precision import FROZEN_DTYPES, TRAINER_PRECISIONS, resolve_precision
from .sd15.configs import ARCHS, size_multiple, vae_downsampling


@dataclass
class DataConfig:
    dataset: str = "humanart"  # synthetic | humanart | laion_human
    root: str = "data/Human-Art"
    train_mapping: str = "mapping_file_training.json"
    val_mapping: str = "mapping_file_validation.json"
    scenarios: Optional[list[str]] = None  # restrict evaluation to these Human-Art scenarios
    resolution: int = 512
    max_persons: int = 10
    score_threshold: float = 0.02
    skeleton_width: int = 10  # limb line width in pixels at `resolution` (joint dot radius = width // 2)
    prompt_dropout: float = 0.5  # training only
    skip_bad_samples: bool = False
    batch_size: int = 6
    val_batch_size: int = 4
    num_workers: int = 4
    synthetic_train_size: int = 2000
    synthetic_val_size: int = 8


@dataclass
class ModelConfig:
    # architecture of the frozen base: sd15 | sd21base (HumanSD) | tiny | tiny_sd2 | mini (grpose/sd15_configs/)
    base: str = "sd15"
    pretrained: Optional[str] = "models/v1-5-pruned.safetensors"  # diffusers folder or single file; null = random
    # grpose | controlnet | t2i_adapter | uni_controlnet | stable_pose | humansd (paper Table 1 baselines,
    # docs/baselines.md) | none (the frozen base alone: sampling and evaluation only)
    adapter: str = "grpose"
    adapter_weights: Optional[str] = None  # initial adapter weights from prepare_weights.py (safetensors)
    pgi_levels: list[int] = field(default_factory=lambda: [0, 1, 2, 3])
    graphs: list[str] = field(default_factory=lambda: ["latent", "pose", "fuse"])  # #Graph ablation
    graph_type: str = "edgeconv"  # edgeconv (released code) | gcn (paper eq. 4-7)
    knn_k: int = 9
    positional_encoding: bool = False
    edgeconv_groups: int = 4
    knn_chunk_mb: float = 256.0  # memory budget of one chunk of the pairwise-distance matrix
    # PoseEncoder sizes; uni_controlnet's feature extractor has the same structure and uses them too, stable_pose
    # the stem and the first level's width
    pose_stem_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    pose_level_channels: list[int] = field(default_factory=lambda: [192, 256, 384, 512])
    conditioning_scale: float = 1.0
    gradient_checkpointing: bool = False
    # Speed switches (none changes results beyond numerical tolerance; see BENCHMARKS.md)
    frozen_dtype: str = "fp32"  # dtype of the frozen UNet/VAE/text encoder: fp32 | bf16 | fp16 | auto (follows precision)
    channels_last: bool = False
    compile: bool = False  # torch.compile the adapter and the frozen UNet


@dataclass
class PosePerceptionConfig:
    alpha: float = 0.0  # 0 disables L_p (and never imports mmpose)
    network_config: str = "associative_embedding/coco/mobilenetv2_coco_512x512.py"
    network_checkpoint: Optional[str] = "models/mobilenetv2_coco_512x512-4d96e309_20200816.pth"
    feature_indices: list[int] = field(default_factory=lambda: [-1])  # which backbone outputs to compare
    input_size: int = 512  # the pose network's input resolution (images are resized to it)
    alpha_bar_weight: bool = False  # multiply per-sample L_p by alpha_bar_t (the release does)
    max_timestep: Optional[int] = None  # only apply L_p when t < max_timestep
    start_epoch: Optional[int] = None  # gradual constraint: L_p on from this epoch ...
    start_step: Optional[int] = None  # ... or from this global step
    faithful_release: bool = False  # reproduce the release: L_p computed but detached (no gradient)
    decode_checkpointing: bool = True  # checkpoint the differentiable VAE decode to save memory


@dataclass
class HumanSDHeatmapConfig:
    """HumanSD's heatmap-guided denoising loss (grpose/losses/humansd_heatmap.py, docs/baselines.md)."""

    variant: str = "none"  # none | code (HumanSD's released code) | paper (HumanSD paper eq. 6)
    weight: float = 0.1  # the weight enters as (1 + weight * W); HumanSD's pose_loss_weight
    threshold: float = 0.05  # code: a joint is "off" where its heatmap <= threshold (HumanSD's estimate_thresh)
    network_config: str = "associative_embedding/coco/higherhrnet_w48_coco_512x512_udp.py"
    network_checkpoint: Optional[str] = "models/higherhrnet_w48_humanart_512x512_udp.pth"


@dataclass
class LossConfig:
    # uniform: t ~ U{0..T-1} (SD, the paper); cubic: T2I-Adapter's t = (1 - u^3) T, most updates on noisy steps
    timesteps: str = "uniform"
    pose_mask_weight: float = 1.0  # weight of skeleton-covered latent cells (5.0 in the release; 1.0 = off)
    pose_mask_kernel: int = 13
    pose_mask_sigma: float = 3.0
    pose_perception: PosePerceptionConfig = field(default_factory=PosePerceptionConfig)
    humansd_heatmap: HumanSDHeatmapConfig = field(default_factory=HumanSDHeatmapConfig)


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scale_lr: bool = False  # lr *= world_size * batch_size * accumulate_grad_batches
    fused: Optional[bool] = None  # fused AdamW; null = automatic (CUDA only)
    # diffusers' schedule names, stepped every optimizer step over the run's steps (trainer.max_steps, or the
    # epochs' steps). The paper and ControlNet train at a constant lr.
    lr_scheduler: str = "constant"
    lr_warmup_steps: int = 0


@dataclass
class TrainerConfig:
    accelerator: str = "auto"
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"  # DDP is chosen by Lightning on >1 GPU
    precision: str = "32-true"  # bf16-mixed | 16-mixed | 32-true | auto (bf16 where the GPU has it, else fp16; CPU fp32)
    max_epochs: int = 20
    max_steps: int = -1
    accumulate_grad_batches: int = 1
    gradient_clip_val: Optional[float] = None
    seed: int = 23
    checkpoint_every_n_epochs: Optional[int] = 4
    checkpoint_every_n_steps: Optional[int] = None
    sample_every_n_steps: int = 300
    log_every_n_steps: int = 50
    logger: str = "tensorboard"  # tensorboard | csv
    limit_val_batches: float = 1.0
    num_sanity_val_steps: int = 0
    enable_progress_bar: bool = True
    tf32: bool = True  # TF32 matmuls/convolutions on Ampere+ GPUs


@dataclass
class SamplingConfig:
    num_inference_steps: int = 50
    guidance_scale: float = 9.0
    eta: float = 0.0
    negative_prompt: str = (
        "longbody, lowres, bad anatomy, bad hands, missing fingers, extra digit, fewer digits, cropped, "
        "worst quality, low quality"
    )
    num_images: int = 4  # images per sample grid
    seed: int = 42


EVAL_PROTOCOLS = ("paper", "standard")
EVAL_METRICS = ("pose", "quality", "clip")
POSE_EVALUATORS = ("higherhrnet_bottomup", "vitpose_topdown")
# Eval settings are resolved and validated in one place, grpose.eval.settings; load_config only calls it.


@dataclass
class EvalConfig:
    """Settings of `eval_pose.py` (the `eval.*` keys); everything else comes from the experiment config."""

    protocol: str = "paper"  # paper (reproduces paper Table 1) | standard (see docs/evaluation.md)
    metrics: list[str] = field(default_factory=lambda: list(EVAL_METRICS))  # any of pose, quality, clip
    output_dir: str = "outputs"
    run_name: Optional[str] = None  # null: the experiment's `name` (score-only: the images folder's name)
    num_samples: Optional[int] = None  # null: the whole test split; N: its first N samples
    batch_size: int = 4  # generation batch per device
    paper_batch_size: int = 4  # `paper` protocol: pose AP/SAP/PCE and CLIP-Score are averaged over batches of this many
    min_scenario_images: int = 2  # scenarios with fewer images are left out of the per-scenario metrics
    pose_estimator_config: str = "associative_embedding/coco/higherhrnet_w48_coco_512x512_udp.py"
    pose_estimator_checkpoint: Optional[str] = "models/higherhrnet_w48_humanart_512x512_udp.pth"
    flip_test: bool = True
    pose_nms_thr: float = 1.0  # the release's value: OKS-NMS effectively off
    inception_weights: Optional[str] = None  # null: $TORCH_HOME/hub/checkpoints (see docs/evaluation.md)
    # FID/KID on another feature network than Inception: an MMPose config + checkpoint whose backbone's pooled last
    # stage gives the features (the miniature world, which has no Inception weights). null: Inception.
    quality_feature_config: Optional[str] = None
    quality_feature_checkpoint: Optional[str] = None
    quality_feature_size: int = 256  # that network's input side
    clip_model: str = "models/clip-vit-base-patch16"
    kid_scale: Optional[float] = None  # null: 1000 for laion_human, else 100 (GRPose paper section 4.2)
    # Drop the last N mod paper_batch_size test samples, as the release's test loader (drop_last=True) does: they
    # are never generated nor scored. null: on for the `paper` protocol, off for `standard`.
    drop_last: Optional[bool] = None
    # 95% intervals (docs/evaluation.md, "Confidence intervals"): percentile bootstrap with a fixed seed
    intervals: bool = True
    bootstrap_resamples: int = 1000  # AP / SAP / PCE / CLIP-Score replicates
    bootstrap_quality_resamples: int = 200  # FID / KID replicates (each recomputes them from the features)
    bootstrap_seed: int = 0
    confidence: float = 0.95
    # which pose evaluator scores AP / SAP / PCE (docs/evaluation.md, "Pose evaluators"); never mixed in a table
    pose_evaluator: str = "higherhrnet_bottomup"  # higherhrnet_bottomup (HumanSD/GRPose) | vitpose_topdown (SP-Ctrl)
    vitpose_config: str = "vitpose_huge"  # built-in vitpose_{small,base,large,huge}, or an mmpose 0.x config file
    # mmpose 1.x's Human-Art ViTPose-H (SP-Ctrl's evaluator); ViTPose's own mmpose 0.x checkpoints load too
    vitpose_checkpoint: Optional[str] = (
        "models/td-hm_ViTPose-huge_8xb64-210e_humanart-256x192-603bb573_20230612.pth")
    alignment_report: bool = True  # outputs/<run>/alignment/index.html (needs 'pose' in metrics)
    alignment_max_images: Optional[int] = 300  # the worst N images get a row (null: every image)


@dataclass
class ExperimentConfig:
    name: str = "grpose"
    output_dir: str = "experiments"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


_CHOICES = {
    "data.dataset": ("synthetic", "humanart", "laion_human"),
    "model.base": ARCHS,
    "model.adapter": ("grpose", "controlnet", "t2i_adapter", "uni_controlnet", "stable_pose", "humansd", "none"),
    "model.graph_type": ("edgeconv", "gcn"),
    "trainer.precision": TRAINER_PRECISIONS,
    "trainer.logger": ("tensorboard", "csv"),
    "model.frozen_dtype": FROZEN_DTYPES,
    "loss.humansd_heatmap.variant": ("none", "code", "paper"),
    "loss.timesteps": TIMESTEP_SAMPLINGS,
    "optim.lr_scheduler": ("constant", "constant_with_warmup", "cosine", "linear"),
}
_GRAPH_NAMES = ("latent", "pose", "fuse")


def trainable_adapters() -> tuple[str, ...]:
    """Every `model.adapter` that trains (all choices but `none`), in the order of the choices: tools that run each
    method (scripts/benchmark.py) take them from here, so a method added to the choices needs no other list."""
    return tuple(a for a in _CHOICES["model.adapter"] if a != "none")


def _merge(base: DictConfig, delta: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(base, delta)
    except ConfigKeyError as err:
        raise ConfigError(f"{source}: unknown config key '{err.full_key}'. Check the spelling against "
                          f"grpose/config.py.") from None
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or "?"
        # OmegaConf's message is several lines of internals ("full_key: ... object_type=..."); keep the first.
        reason = str(getattr(err, "msg", err)).strip().splitlines()[0]
        raise ConfigError(f"{source}: invalid value for '{key}': {reason}") from None


def load_config(path: Optional[str | os.PathLike] = None, overrides: Optional[list[str]] = None) -> DictConfig:
    """Defaults <- YAML file (which may name a `defaults_from` parent preset) <- `key=value` overrides."""
    cfg = OmegaConf.structured(ExperimentConfig)
    if path is not None:
        for layer_path in _preset_chain(Path(path)):
            cfg = _merge(cfg, _read_yaml(layer_path), str(layer_path))
    if overrides:
        bad = [o for o in overrides if "=" not in o]
        if bad:
            raise ConfigError(f"override {bad[0]!r} is not of the form key=value")
        cfg = _merge(cfg, OmegaConf.from_dotlist(list(overrides)), "command line")
    validate(cfg)
    resolve_auto_precision(cfg)
    return cfg


def resolve_auto_precision(cfg: DictConfig) -> None:
    """Resolve `auto` precisions at load time (grpose.precision), so the saved run config records what ran."""
    cfg.trainer.precision, cfg.model.frozen_dtype = resolve_precision(
        cfg.trainer.precision, cfg.model.frozen_dtype, cfg.trainer.accelerator)


def _read_yaml(path: Path) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    loaded = OmegaConf.load(path)
    loaded.pop("defaults_from", None)
    return loaded


def _preset_chain(path: Path) -> list[Path]:
    """A preset may start with `defaults_from: <relative path>` to inherit another preset (ablation deltas)."""
    chain: list[Path] = []
    current: Optional[Path] = path
    while current is not None:
        if current in chain:
            raise ConfigError(f"{path}: circular `defaults_from` chain through {current}")
        if not current.is_file():
            raise ConfigError(f"config file {current} does not exist")
        chain.append(current)
        parent = OmegaConf.load(current).get("defaults_from")
        current = (current.parent / parent).resolve() if parent else None
    return list(reversed(chain))


def validate(cfg: DictConfig) -> None:
    if cfg.loss.humansd_heatmap.variant in ("False", "True"):  # YAML 1.1 reads off / no / on / yes as booleans
        raise ConfigError(f"loss.humansd_heatmap.variant={cfg.loss.humansd_heatmap.variant!r} is not one of none, "
                          "code, paper (YAML reads off/no/on/yes as booleans: write none to turn the loss off)")
    for key, choices in _CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in choices:
            raise ConfigError(f"{key}={value!r} is not one of {', '.join(choices)}")
    bad_levels = [lvl for lvl in cfg.model.pgi_levels if lvl not in (0, 1, 2, 3)]
    if bad_levels:
        raise ConfigError(f"model.pgi_levels may only contain 0..3, got {list(cfg.model.pgi_levels)}")
    bad_graphs = [g for g in cfg.model.graphs if g not in _GRAPH_NAMES]
    if bad_graphs:
        raise ConfigError(f"model.graphs entries must be among {_GRAPH_NAMES}, got {bad_graphs}")
    if cfg.optim.lr_warmup_steps < 0:
        raise ConfigError("optim.lr_warmup_steps must be >= 0")
    if cfg.model.knn_k < 1:
        raise ConfigError("model.knn_k must be >= 1")
    if len(cfg.model.pose_level_channels) != 4 or len(cfg.model.pose_stem_channels) != 3:
        raise ConfigError("model.pose_stem_channels needs 3 entries and model.pose_level_channels 4")
    if not 0.0 <= cfg.data.prompt_dropout <= 1.0:
        raise ConfigError("data.prompt_dropout must be in [0, 1]")
    multiple = size_multiple(cfg.model.base)
    suggestion = max(multiple, round(cfg.data.resolution / multiple) * multiple)
    if cfg.data.resolution < multiple or cfg.data.resolution % multiple:
        raise ConfigError(
            f"data.resolution={cfg.data.resolution} must be a positive multiple of {multiple} for "
            f"model.base={cfg.model.base} (the VAE downsamples by {vae_downsampling(cfg.model.base)} and the UNet by "
            f"{multiple // vae_downsampling(cfg.model.base)} more), e.g. data.resolution={suggestion}")
    from .eval.settings import validate_eval_config  # the eval section's own rules live with its resolution

    validate_eval_config(cfg.eval)
    if cfg.loss.pose_perception.alpha < 0:
        raise ConfigError("loss.pose_perception.alpha must be >= 0")
    heatmap = cfg.loss.humansd_heatmap
    if heatmap.variant != "none" and cfg.loss.pose_mask_weight != 1.0:
        raise ConfigError("loss.humansd_heatmap and loss.pose_mask_weight both reweight the diffusion loss; set "
                          "loss.pose_mask_weight=1.0 or loss.humansd_heatmap.variant=none")
    if heatmap.weight < 0:
        raise ConfigError("loss.humansd_heatmap.weight must be >= 0")


def save_config(cfg: DictConfig, path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    OmegaConf.save(cfg, path)
