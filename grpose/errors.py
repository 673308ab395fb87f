"""The one family of user-facing errors: every mistake a user can fix (a config key, a file, a flag) raises a
subclass of `GRPoseError` with a one-line message that names the key or file and says what to do.

Entry points catch `GRPoseError` alone (`grpose.cli.run`) and print `error: <message>`; anything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class GRPoseError(Exception):
    """Base of every error a user can act on."""


class ConfigError(GRPoseError, ValueError):
    """A configuration file, override or command-line flag the user must fix."""


class WeightsError(GRPoseError, ValueError):
    """A weights file that cannot be read or does not fit the model it is meant for."""


class DataError(GRPoseError, RuntimeError):
    """A dataset file (mapping, image, pose file) that cannot be used as it is."""


class EvalInputError(GRPoseError, ValueError):
    """A checkpoint, run folder or images folder given to eval_pose.py that cannot be used as it is."""


class PoseInputError(GRPoseError, ValueError):
    """A pose given to inference (file, array, image) that cannot be turned into a condition."""


class MissingFileError(GRPoseError, FileNotFoundError):
    """A file or folder the user named (or a default path) does not exist."""


class OutputExistsError(GRPoseError, FileExistsError):
    """Writing would replace earlier results; the message says how to continue or where else to write."""


class MissingExtraError(GRPoseError, ImportError):
    """An optional dependency (MMPose, open_clip) is not installed; the message gives the install command."""
