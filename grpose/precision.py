"""The one precision policy, for training and for every inference path.

- The trainable adapter always keeps float32 weights (optimizer state and updates stay exact).
- The frozen base (UNet, VAE, text encoder) is stored in `model.frozen_dtype` (fp32, bf16 or fp16).
- Compute runs under autocast to the frozen dtype whenever that is a half type: in training Lightning's
  `bf16-mixed` / `16-mixed` plugin does it, in sampling `inference_autocast` does the same thing, so sample grids,
  `eval_pose.py` and `GRPosePipeline.from_pretrained(dtype=...)` give identical images for the same settings.
- `auto` resolves once, when the config is loaded: bf16 where the GPU supports it, fp16 with loss scaling on older
  GPUs, fp32 on the CPU. The resolved values are what the saved run config records.
"""

from __future__ import annotations

import contextlib
from typing import Union

import torch

from .errors import ConfigError

DTYPES: dict[str, torch.dtype] = {
    "fp32": torch.float32, "float32": torch.float32,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
}
TRAINER_PRECISIONS = ("32-true", "32", "bf16-mixed", "16-mixed", "bf16-true", "auto")
FROZEN_DTYPES = ("fp32", "bf16", "fp16", "auto")
# The frozen base's dtype that goes with each mixed trainer precision (`model.frozen_dtype: auto`).
_FROZEN_FOR_PRECISION = {"bf16-mixed": "bf16", "16-mixed": "fp16", "bf16-true": "bf16"}


def torch_dtype(dtype: Union[str, torch.dtype, None]) -> torch.dtype:
    """torch.float32 for None, else a torch dtype or one of the names in DTYPES ("fp16", "bf16", ...)."""
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    return DTYPES[key]


def resolve_precision(precision: str, frozen_dtype: str, accelerator: str = "auto") -> tuple[str, str]:
    """(trainer precision, frozen dtype) with every `auto` replaced by what this machine runs."""
    if precision == "auto":
        on_gpu = accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()
        precision = ("bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed") if on_gpu else "32-true"
    if frozen_dtype == "auto":
        frozen_dtype = _FROZEN_FOR_PRECISION.get(precision, "fp32")
    if frozen_dtype != "fp32" and "mixed" not in precision and precision != "bf16-true":
        raise ConfigError(f"model.frozen_dtype={frozen_dtype} needs a mixed trainer.precision (bf16-mixed or "
                          f"16-mixed), got trainer.precision={precision}")
    return precision, frozen_dtype


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a Lightning precision string, None for full precision."""
    return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)


def inference_autocast(device: torch.device, frozen: torch.dtype) -> contextlib.AbstractContextManager:
    """Autocast to the frozen base's dtype when it is a half type (the fp32 adapter meets the half base), else a
    no-op: exactly what training's mixed precision does around the same forward passes."""
    if frozen == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=frozen)


def cast_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Cast a frozen module's floating-point tensors (no-op when already there)."""
    if all(p.dtype == dtype for p in module.parameters()):
        return module
    if getattr(module, "_keep_in_fp32_modules", None):
        return module.to(dtype)
    # diffusers 0.39's ModelMixin.to warns on every dtype cast, even when no module must stay in float32.
    return torch.nn.Module.to(module, dtype=dtype)
