"""Reading pickled data without running code: a restricted unpickler for `.npz` object arrays (HumanSD pose files)
and a weights-only check for torch pickles that a library would otherwise load unrestricted.

A pickle names the callables it needs ("globals") and the unpickler imports and calls them, so `np.load(...,
allow_pickle=True)` on a crafted file runs whatever it names (`os.system`, `builtins.exec`, ...). Here only the
globals numpy needs to rebuild arrays are resolved; lists, dicts, tuples, strings, bytes, numbers, None and bool
need no global at all.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import zipfile
from typing import Any, BinaryIO

import numpy as np
import torch

from .errors import GRPoseError

_multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
_numeric = np._core.numeric if hasattr(np, "_core") else np.core.numeric

# (module, name) as written in the pickle -> the object. numpy 2 writes `numpy._core.*`, numpy 1.x wrote
# `numpy.core.*`; both map to the objects directly, so numpy 2's deprecated `numpy.core` shim is never imported.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    **{(module, name): getattr(_multiarray, name)
       for module in ("numpy._core.multiarray", "numpy.core.multiarray") for name in ("_reconstruct", "scalar")},
    # protocol-5 pickles of numeric arrays
    **{(module, "_frombuffer"): _numeric._frombuffer for module in ("numpy._core.numeric", "numpy.core.numeric")},
    # protocol-2 pickles store bytes as _codecs.encode(str, "latin1")
    ("_codecs", "encode"): __import__("_codecs").encode,
}


class UnsafePickleError(GRPoseError, ValueError):
    """A pickled file asks for a global outside the allow-list; the message names the file and the global."""


class RestrictedUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` that resolves only `ALLOWED_GLOBALS` and refuses persistent ids."""

    def __init__(self, file: BinaryIO, source: str, what: str = "file"):
        super().__init__(file)
        self.source, self.what = source, what

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"{self.what} {self.source} was refused: its pickle asks for {module}.{name}, which loading it would "
                f"call, and only numpy arrays, lists, dicts, tuples, strings, numbers, None and bool are accepted; "
                f"do not use this file: get it again from a source you trust (pose files can be re-written from "
                f"their keypoints with grpose.data.humanart.save_pose_npz)") from None

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"{self.what} {self.source} was refused: its pickle holds a persistent id, which "
                                f"plain numpy data never does; do not use this file")


def restricted_loads(data: bytes, source: str, what: str = "file") -> Any:
    """`pickle.loads` with the restricted unpickler."""
    return RestrictedUnpickler(io.BytesIO(data), source, what).load()


def _read_npy(data: bytes, source: str, what: str) -> np.ndarray:
    """One `.npy` member: numeric arrays through numpy's own reader, object arrays through the restricted one."""
    fp = io.BytesIO(data)
    version = np.lib.format.read_magic(fp)
    if version == (1, 0):
        shape, _, dtype = np.lib.format.read_array_header_1_0(fp)
    elif version == (2, 0):
        shape, _, dtype = np.lib.format.read_array_header_2_0(fp)
    else:
        # numpy writes 3.0 only for structured dtypes with non-latin1 field names, never for object arrays
        fp.seek(0)
        return np.lib.format.read_array(fp, allow_pickle=False)
    if not dtype.hasobject:
        fp.seek(0)
        return np.lib.format.read_array(fp, allow_pickle=False)
    array = RestrictedUnpickler(fp, source, what).load()
    if not isinstance(array, np.ndarray) or array.shape != shape:
        raise ValueError(f"{what} {source}: the pickled member is a {type(array).__name__}, not the object array "
                         f"of shape {shape} its header announces")
    return array


def read_npz(path: str | os.PathLike, what: str = "file") -> dict[str, np.ndarray]:
    """Every array of an `.npz` by name (as `np.load(path).files` names them), without running any pickled code.

    Object arrays are unpickled with `RestrictedUnpickler`; a file that needs anything else raises
    `UnsafePickleError`. Other failures are numpy's / zipfile's own errors (ValueError, OSError, BadZipFile, ...).
    """
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            arrays[name] = _read_npy(archive.read(info), f"{os.fspath(path)} ({info.filename})", what)
    return arrays


def unsafe_globals_in_torch_pickle(path: str | os.PathLike, err: Exception) -> list[str]:
    """The globals `torch.load(weights_only=True)` refused in `path` (listed from a zip checkpoint, or read off
    the error of a legacy one); [] when they cannot be told."""
    if zipfile.is_zipfile(path):
        try:
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
        except (RuntimeError, pickle.UnpicklingError, ValueError, KeyError):
            pass
    # torch words it "Unsupported global: GLOBAL os.system ..." or "... unsupported GLOBAL posix.system whose ..."
    return list(dict.fromkeys(re.findall(r"GLOBAL ([\w.]+)", str(err))))


def require_weights_only(path: str | os.PathLike, what: str) -> None:
    """Refuse a torch pickle that `torch.load(weights_only=True)` would refuse, before a library that loads it
    with `weights_only=False` gets it (torch-fidelity's Inception weights). Raises `UnsafePickleError`."""
    try:
        torch.load(os.fspath(path), map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except pickle.UnpicklingError as err:
        names = ", ".join(unsafe_globals_in_torch_pickle(path, err)) or str(err).splitlines()[0]
        raise UnsafePickleError(f"{what} {path} was refused: it pickles objects other than tensors ({names}), "
                                f"which loading it would run; download the file again from its official source"
                                ) from err
