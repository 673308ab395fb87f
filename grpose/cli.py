"""What every command-line entry point shares: a user mistake prints `error: <one line>` and exits with status 1."""

from __future__ import annotations

import sys
from typing import Any, Callable, Optional, Sequence

from .errors import GRPoseError


def one_line(message: str) -> str:
    """Collapse a message to one line (a user error is read in a terminal next to a progress bar)."""
    return " ".join(part.strip() for part in str(message).splitlines() if part.strip())


def run(main: Callable[[Optional[Sequence[str]]], Any], argv: Optional[Sequence[str]] = None) -> int:
    """Call `main(argv)`; a `GRPoseError` becomes `error: <message>` on stderr and exit status 1, without a
    traceback. Returns the exit status for `sys.exit`: main's own when it returns an int, else 0."""
    try:
        result = main(argv)
    except GRPoseError as err:
        print(f"error: {one_line(str(err))}", file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
