"""Helpers shared by the per-method adapter tests: perturbed weights, residuals, bit-identical comparisons."""

import torch


def perturb(module, scale=0.05, seed=7):
    """Nudge every weight (zero convs included) so that residuals are not trivially zero."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn_like(p))
    return module.eval()


@torch.no_grad()
def residual_tensors(adapter, inputs):
    return adapter.eval().residuals(*inputs).tensors()


def assert_identical(a, b):
    assert len(a) == len(b) and len(a) > 0
    for x, y in zip(a, b):
        assert torch.equal(x, y)
