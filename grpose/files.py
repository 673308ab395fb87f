"""Reading weight files safely: one reader for every .safetensors / .ckpt / .pt / .pth / .bin the project opens.

Torch pickles are read with `weights_only=True`, which refuses any file that would run code when loaded; the
only way around it is an explicit `trust_pickle=True` that a user passes for a file they vouch for.
"""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from .errors import MissingFileError, WeightsError
from .safe_pickle import unsafe_globals_in_torch_pickle

TORCH_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def read_checkpoint(path: str | Path, trust_pickle: bool = False, hint: str = "", can_trust: bool = True) -> Any:
    """Load a torch pickle or a .safetensors file on the CPU, without unwrapping anything.

    `hint` is appended to error messages (e.g. where to get the right file); `can_trust` says whether the caller
    offers the `--trust-pickle` opt-in (the refusal message then names it).
    """
    path = Path(path).expanduser()
    tail = f"; {hint}" if hint else ""
    if not path.is_file():
        raise MissingFileError(f"{path} does not exist (or is not a file){tail}")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as err:
            raise WeightsError(f"cannot read {path} as safetensors ({first_line(err)}): the file is damaged or "
                               f"not a safetensors file{tail}") from None
    if path.suffix.lower() not in TORCH_SUFFIXES:
        raise WeightsError(f"unsupported weights file {path}: expected .safetensors or one of "
                           f"{', '.join(TORCH_SUFFIXES)}{tail}")
    try:
        return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle,
                          mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        if not _refused_global(err):  # not a refusal: the bytes are no pickle at all
            raise WeightsError(f"cannot read {path} as a torch checkpoint ({_pickle_reason(err)}): the file is "
                               f"damaged or not a checkpoint{tail}") from None
        names = ", ".join(unsafe_globals_in_torch_pickle(path, err)) or _pickle_reason(err)
        remedy = ("If you trust the file, pass --trust-pickle (trust_pickle=True)" if can_trust else
                  "Use a .safetensors copy of the weights")
        raise WeightsError(f"{path} holds objects other than tensors ({names}); it was refused because loading it "
                           f"would run code. {remedy}{tail}") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:
        raise WeightsError(f"cannot read {path} as a torch checkpoint ({first_line(err)}){tail}") from None


def state_dict_of(checkpoint: Any, path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint, unwrapping (nested) top-level `state_dict` entries."""
    while isinstance(checkpoint, dict) and isinstance(checkpoint.get("state_dict"), dict):
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise WeightsError(f"{path} does not hold a state dict (found {type(checkpoint).__name__})")
    return {k: v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def compare_state_dicts(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor]
                        ) -> tuple[list[str], list[str], list[str]]:
    """(missing, unexpected, differently shaped) keys of `given` against `expected`, each sorted."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    wrong = sorted(k for k in set(expected) & set(given) if tuple(expected[k].shape) != tuple(given[k].shape))
    return missing, unexpected, wrong


def state_dict_mismatch(expected: dict[str, torch.Tensor], given: dict[str, torch.Tensor],
                        names: dict[str, str] | None = None, limit: int = 8) -> str:
    """'' when `given` fits `expected` exactly, else one line listing the missing, unexpected and differently shaped
    keys. `names` maps a given key to the name it had in the file, when that differs."""
    names = names or {}

    def named(key: str) -> str:
        return f"{names[key]} (-> {key})" if key in names and names[key] != key else key

    missing, unexpected, wrong = compare_state_dicts(expected, given)
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing: {few(missing, limit)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected: {few([named(k) for k in unexpected], limit)}")
    if wrong:
        parts.append(f"{len(wrong)} with another shape: " + few(
            [f"{named(k)} {tuple(given[k].shape)} in the file vs {tuple(expected[k].shape)}" for k in wrong], limit))
    return "; ".join(parts)


def few(items: list[str], limit: int = 20) -> str:
    """A readable excerpt of a long key list."""
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _refused_global(err: pickle.UnpicklingError) -> bool:
    """Whether torch's weights-only unpickler refused a callable or class (as opposed to unreadable bytes)."""
    text = str(err)
    return "GLOBAL" in text or "Unsupported global" in text


def _pickle_reason(err: pickle.UnpicklingError) -> str:
    """The informative line of torch's long weights-only message."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or line.startswith(("Unsupported", "Trying to load")):
            return line
    return lines[0] if lines else type(err).__name__
