"""Evaluation settings, resolved in one place: the experiment's `eval` section (defaults <- YAML <- `eval.key=value`
overrides) <- eval_pose.py's flags, then the values that follow from others (KID scale, drop_last, run name)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from ..config import EVAL_METRICS, EVAL_PROTOCOLS, POSE_EVALUATORS
from ..errors import ConfigError


def validate_eval_config(eval_cfg: DictConfig) -> None:
    if eval_cfg.protocol not in EVAL_PROTOCOLS:
        raise ConfigError(f"eval.protocol={eval_cfg.protocol!r} is not one of {', '.join(EVAL_PROTOCOLS)}")
    unknown = [m for m in eval_cfg.metrics if m not in EVAL_METRICS]
    if unknown:
        raise ConfigError(f"eval.metrics: unknown metric(s) {unknown}; choose from {', '.join(EVAL_METRICS)}")
    for key in ("batch_size", "paper_batch_size", "min_scenario_images"):
        if eval_cfg[key] < 1:
            raise ConfigError(f"eval.{key} must be >= 1, got {eval_cfg[key]}")
    if eval_cfg.pose_evaluator not in POSE_EVALUATORS:
        raise ConfigError(f"eval.pose_evaluator={eval_cfg.pose_evaluator!r} is not one of {', '.join(POSE_EVALUATORS)}")
    if not 0.0 < eval_cfg.confidence < 1.0:
        raise ConfigError(f"eval.confidence must be in (0, 1), got {eval_cfg.confidence}")
    for key in ("bootstrap_resamples", "bootstrap_quality_resamples"):
        if eval_cfg[key] < 10:
            raise ConfigError(f"eval.{key} must be >= 10 for a percentile interval, got {eval_cfg[key]}")
    if eval_cfg.num_samples is not None and eval_cfg.num_samples < 1:
        raise ConfigError(f"eval.num_samples (--limit) must be >= 1, got {eval_cfg.num_samples}")


def resolve_eval_settings(cfg: DictConfig, images: Optional[str] = None, **flags: Any) -> DictConfig:
    """The `eval` section with eval_pose.py's flags (keyword arguments; None = not given) merged in and every
    derived default filled: `kid_scale` (1000 for LAION-Human, else 100), `drop_last` (on for the `paper`
    protocol), `run_name` (the scored folder's name with --images, else the experiment's name)."""
    eval_cfg = cfg.eval.copy()
    given = {k: v for k, v in flags.items() if v is not None}
    if given:
        try:
            eval_cfg = OmegaConf.merge(eval_cfg, given)
        except OmegaConfBaseException as err:
            raise ConfigError(f"command-line flags: invalid value for 'eval.{getattr(err, 'full_key', '?')}': "
                              f"{str(err.msg).splitlines()[0]}") from None
    if eval_cfg.kid_scale is None:
        eval_cfg.kid_scale = 1000.0 if cfg.data.dataset == "laion_human" else 100.0
    if eval_cfg.drop_last is None:
        eval_cfg.drop_last = eval_cfg.protocol == "paper"
    if eval_cfg.run_name is None:
        eval_cfg.run_name = Path(images).name if images else cfg.name
    validate_eval_config(eval_cfg)
    return eval_cfg


def evaluated_count(dataset_size: int, eval_cfg: DictConfig) -> int:
    """How many test samples are generated and scored, always the first ones: the whole split, less its last
    N mod `paper_batch_size` samples when `drop_last` is on (what the release's test loader leaves out), then at
    most `num_samples`."""
    count = dataset_size
    if eval_cfg.drop_last:
        count -= dataset_size % int(eval_cfg.paper_batch_size)
    if eval_cfg.num_samples is not None:
        count = min(count, int(eval_cfg.num_samples))
    if count < 1:
        raise ConfigError(f"eval.drop_last leaves no sample of {dataset_size} to evaluate (batches of "
                          f"eval.paper_batch_size={eval_cfg.paper_batch_size}); set eval.drop_last=false")
    return count
