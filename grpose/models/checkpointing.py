"""Activation checkpointing that leaves BatchNorm running statistics exactly as one plain forward would.

`torch.utils.checkpoint` runs a segment's forward a second time during backward. A training-mode BatchNorm inside
the segment then updates `running_mean`, `running_var` and `num_batches_tracked` twice per step (the authors'
release, which checkpoints its GraphConv blocks, does the same), so the statistics used at inference depend on
whether checkpointing was on.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator

from torch import nn
from torch.utils.checkpoint import checkpoint

# Public BatchNorm classes (1d/2d/3d, Sync, Lazy) all derive from this one; there is no public common base.
_BATCHNORM = nn.modules.batchnorm._BatchNorm


_STAT_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@contextlib.contextmanager
def frozen_batchnorm_stats(module: nn.Module) -> Iterator[None]:
    """Within the block, training-mode BatchNorms in `module` update throw-away copies of their statistics.

    Each such BatchNorm's `running_mean`, `running_var` and `num_batches_tracked` are swapped for clones and the
    original tensors are put back on exit, untouched. The BatchNorm still runs the same op on tensors of the same
    shapes, so a recomputation under this context saves the same tensors as the first forward (non-reentrant
    checkpointing checks that) and gives the same output (training mode normalises with batch statistics).
    Modules in eval mode, or without running statistics, are left alone.
    """
    swapped = []
    for m in module.modules():
        if isinstance(m, _BATCHNORM) and m.training and m.track_running_stats:
            originals = {name: getattr(m, name) for name in _STAT_BUFFERS if getattr(m, name) is not None}
            for name, tensor in originals.items():
                setattr(m, name, tensor.clone())
            swapped.append((m, originals))
    try:
        yield
    finally:
        for m, originals in swapped:
            for name, tensor in originals.items():
                setattr(m, name, tensor)


def _contexts(module: nn.Module) -> tuple[contextlib.AbstractContextManager, contextlib.AbstractContextManager]:
    # (first forward, recomputation in backward): only the first forward may touch the running statistics.
    return contextlib.nullcontext(), frozen_batchnorm_stats(module)


def checkpoint_module(module: nn.Module, *args, **kwargs):
    """`module(*args, **kwargs)` under non-reentrant activation checkpointing, with BatchNorm stats updated once.

    Why the recomputation updates copies: the first forward's update is then the only one, so running stats,
    `num_batches_tracked` and gradients equal the uncheckpointed step's for any momentum (a momentum correction
    could not undo `momentum=None`, the cumulative average). Switching `track_running_stats` off instead would
    change which tensors BatchNorm saves for backward, which non-reentrant checkpointing rejects; copying the old
    values back into the buffers would be an in-place write on tensors autograd may hold. The real buffer
    objects are never replaced for longer than the recomputation, so references to them (DDP's buffer list, an
    EMA) stay valid.
    """
    return checkpoint(module, *args, use_reentrant=False, context_fn=functools.partial(_contexts, module), **kwargs)
