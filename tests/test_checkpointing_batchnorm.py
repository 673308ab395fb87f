"""Gradient checkpointing updates every BatchNorm's running statistics once per step, as a plain step does."""

import copy

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from grpose.models.checkpointing import checkpoint_module, frozen_batchnorm_stats
from grpose.models.gcn import GraphConv
from tests.test_models import tiny_adapter, tiny_unet


def batchnorm_state(module):
    return {name: buf.clone() for name, buf in module.named_buffers()
            if name.rsplit(".", 1)[-1] in ("running_mean", "running_var", "num_batches_tracked")}


def adapter_step(adapter, inputs):
    """One training step's forward + backward; returns the gradients by parameter name."""
    adapter.train()
    adapter.zero_grad()
    down, mid = adapter(*inputs)
    (sum(d.square().sum() for d in down) + mid.square().sum()).backward()
    return {n: p.grad.clone() for n, p in adapter.named_parameters() if p.grad is not None}


@pytest.fixture
def adapter_and_inputs():
    adapter = tiny_adapter(tiny_unet())
    with torch.no_grad():
        for p in adapter.parameters():
            p.add_(0.01 * torch.randn_like(p))
    inputs = (torch.randn(2, 4, 8, 8), torch.tensor([5, 9]), torch.randn(2, 7, 32), torch.randn(2, 3, 64, 64))
    return adapter, inputs


def test_plain_torch_checkpoint_updates_batchnorm_twice():
    """The behaviour being fixed (and the release's): recomputation in backward is a second BatchNorm update."""
    conv = GraphConv(8, k=4).train()
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    checkpoint(conv, x, use_reentrant=False).sum().backward()
    assert int(conv.node_norm.num_batches_tracked) == 2


def test_checkpointed_step_gives_the_plain_step_statistics_and_gradients(adapter_and_inputs):
    adapter, inputs = adapter_and_inputs
    ckpt = copy.deepcopy(adapter)
    ckpt.enable_gradient_checkpointing()
    before = batchnorm_state(adapter)
    buffer_objects = {name: id(buf) for name, buf in ckpt.named_buffers()}
    assert before and any(k.endswith("num_batches_tracked") for k in before)

    plain_grads = adapter_step(adapter, inputs)
    ckpt_grads = adapter_step(ckpt, inputs)

    plain_stats, ckpt_stats = batchnorm_state(adapter), batchnorm_state(ckpt)
    assert plain_stats.keys() == ckpt_stats.keys() == before.keys()
    for name in plain_stats:
        assert torch.equal(plain_stats[name], ckpt_stats[name]), name
        if name.endswith("num_batches_tracked"):
            assert int(ckpt_stats[name]) == int(before[name]) + 1, name
        else:
            assert not torch.equal(ckpt_stats[name], before[name]), name  # the one update did happen
    assert plain_grads.keys() == ckpt_grads.keys() and len(plain_grads) > 10
    for name in plain_grads:
        torch.testing.assert_close(ckpt_grads[name], plain_grads[name], rtol=1e-4, atol=1e-6, msg=name)
    # the BatchNorms hold their own buffer objects again after the backward pass
    assert {name: id(buf) for name, buf in ckpt.named_buffers()} == buffer_objects


def test_two_checkpointed_steps_advance_num_batches_tracked_by_two(adapter_and_inputs):
    adapter, inputs = adapter_and_inputs
    adapter.enable_gradient_checkpointing()
    adapter_step(adapter, inputs)
    adapter_step(adapter, inputs)
    counts = [int(v) for k, v in batchnorm_state(adapter).items() if k.endswith("num_batches_tracked")]
    assert counts and set(counts) == {2}


@pytest.mark.parametrize("momentum", [0.1, None])
def test_checkpoint_module_equals_plain_forward_for_any_momentum(momentum):
    torch.manual_seed(1)
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.BatchNorm2d(4, momentum=momentum)).train()
    ckpt = copy.deepcopy(plain)
    x = torch.randn(3, 3, 4, 4)
    for _ in range(2):
        plain(x).square().sum().backward()
        checkpoint_module(ckpt, x).square().sum().backward()
    assert batchnorm_state(plain).keys() == batchnorm_state(ckpt).keys()
    for name, value in batchnorm_state(plain).items():
        assert torch.equal(value, batchnorm_state(ckpt)[name]), name
    torch.testing.assert_close(ckpt[0].weight.grad, plain[0].weight.grad)


def test_frozen_batchnorm_stats_leaves_eval_modules_and_restores_on_error():
    bn_train, bn_eval = torch.nn.BatchNorm1d(2).train(), torch.nn.BatchNorm1d(2).eval()
    model = torch.nn.ModuleList([bn_train, bn_eval])
    original, eval_buffer = bn_train.running_mean, bn_eval.running_mean
    with pytest.raises(RuntimeError, match="boom"):
        with frozen_batchnorm_stats(model):
            assert bn_train.running_mean is not original and bn_eval.running_mean is eval_buffer
            bn_train(torch.randn(4, 2) + 5)
            raise RuntimeError("boom")
    assert bn_train.running_mean is original and bn_eval.running_mean is eval_buffer
    assert int(bn_train.num_batches_tracked) == 0 and torch.equal(bn_train.running_mean, torch.zeros(2))
    assert set(dict(bn_train.named_buffers())) == {"running_mean", "running_var", "num_batches_tracked"}
