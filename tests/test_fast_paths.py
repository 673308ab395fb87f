"""The speed switches of `model.*` / `trainer.*` / `optim.fused` change speed, not results: each fast path against
its reference on the tiny model, within the tolerance stated in each test (BENCHMARKS.md lists the switches)."""

import lightning.pytorch as pl
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0
from torch.utils.data import DataLoader

from grpose.data.synthetic import SyntheticPoseDataset
from grpose.lit_module import GRPoseLitModule
from grpose.models.knn_graph import knn_graph
from grpose.sd15 import encode_prompts

FROZEN = ("unet", "vae", "text_encoder")


def make_model(tiny_cfg, *overrides, source=None) -> GRPoseLitModule:
    """A tiny lit module; with `source`, every weight (frozen and adapter) is copied from it."""
    torch.manual_seed(0)
    model = GRPoseLitModule.from_config(tiny_cfg(*overrides))
    if source is not None:
        for name in (*FROZEN, "adapter"):
            getattr(model, name).load_state_dict(getattr(source, name).state_dict())
    return model


def reference_model(tiny_cfg, *overrides) -> GRPoseLitModule:
    """The zero-initialised convs make the adapter's residuals exactly zero, which would hide any difference;
    perturbing every adapter weight makes every residual and graph convolution matter."""
    model = make_model(tiny_cfg, *overrides)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.adapter.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def adapter_inputs(model: GRPoseLitModule, batch: dict):
    generator = torch.Generator().manual_seed(2)
    latents = torch.randn(batch["image"].shape[0], 4, 8, 8, generator=generator)
    timesteps = torch.tensor([10, 700])[: latents.shape[0]]
    return latents, timesteps, encode_prompts(model.sd, batch["prompt"]), batch["hint"]


def loss_of(model: GRPoseLitModule, batch: dict) -> torch.Tensor:
    return model.compute_loss(batch, generator=torch.Generator(model.device).manual_seed(3))["loss"]


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.float() - want.float()).norm() / want.float().norm()).item()


def assert_residuals_close(got, want, max_relative_error: float):
    """Relative L2 error of each of the 12 + 1 residuals. An element-wise tolerance would be dominated by the mid
    block: at 64 px its map is 1 x 1, so GroupNorm normalises 2 numbers and amplifies round-off ~100x."""
    (got_down, got_mid), (want_down, want_mid) = got, want
    assert len(got_down) == len(want_down) == 12
    for i, (g, w) in enumerate(zip([*got_down, got_mid], [*want_down, want_mid])):
        assert g.shape == w.shape
        error = relative_error(g, w)
        assert error <= max_relative_error, f"residual {i}: relative error {error:.2e} > {max_relative_error:.0e}"


def test_channels_last_matches_contiguous(tiny_cfg, synthetic_batch):
    ref = reference_model(tiny_cfg)
    fast = make_model(tiny_cfg, "model.channels_last=true", source=ref)
    assert fast.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert fast.adapter.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    batch = synthetic_batch(2)
    x, t, text, hint = adapter_inputs(ref, batch)
    want = ref.adapter(x, t, text, hint)
    got = fast.adapter(x.to(memory_format=torch.channels_last), t, text, hint.to(memory_format=torch.channels_last))
    assert got[1].abs().max() > 1e-3  # the residuals are not trivially zero
    # fp32 with another convolution kernel order: round-off only (measured <= 1.1e-4, the mid block; others ~3e-6).
    assert_residuals_close(got, want, max_relative_error=1e-3)
    torch.testing.assert_close(loss_of(fast, batch), loss_of(ref, batch), rtol=1e-5, atol=1e-6)


def _set_attention(module: torch.nn.Module, processor) -> int:
    attentions = [m for m in module.modules() if isinstance(m, Attention)]
    for attention in attentions:
        attention.set_processor(processor)
    return len(attentions)


def test_sdpa_attention_matches_math_attention(tiny_cfg, synthetic_batch):
    model = reference_model(tiny_cfg)
    batch = synthetic_batch(2)
    x, t, text, hint = adapter_inputs(model, batch)

    def run():
        down, mid = model.adapter(x, t, text, hint)
        eps = model.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        return (down, mid), eps

    assert _set_attention(model.unet, AttnProcessor()) > 0 and _set_attention(model.adapter, AttnProcessor()) > 0
    math_residuals, math_eps = run()
    _set_attention(model.unet, AttnProcessor2_0())
    _set_attention(model.adapter, AttnProcessor2_0())
    sdpa_residuals, sdpa_eps = run()
    # Same softmax(QK^T / sqrt(d)) V in fp32, fused vs explicit: round-off only (measured <= 1.4e-5).
    assert_residuals_close(sdpa_residuals, math_residuals, max_relative_error=1e-3)
    assert relative_error(sdpa_eps, math_eps) <= 1e-4


def test_bf16_autocast_is_close_to_fp32(tiny_cfg, synthetic_batch):
    model = reference_model(tiny_cfg)
    model.eval()  # BatchNorm running statistics, so both passes normalise identically
    batch = synthetic_batch(2)
    x, t, text, hint = adapter_inputs(model, batch)

    def run():
        down, mid = model.adapter(x, t, text, hint)
        eps = model.unet(x, t, encoder_hidden_states=text, down_block_additional_residuals=down,
                         mid_block_additional_residual=mid).sample
        return (down, mid), eps, loss_of(model, batch)

    with torch.no_grad():
        want_residuals, want_eps, want_loss = run()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got_residuals, got_eps, got_loss = run()
    assert got_residuals[1].dtype == torch.bfloat16
    # Loose by nature: bf16 keeps 8 mantissa bits, and the KNN graphs are discrete, so bf16 node features change
    # some neighbour sets. Measured on this model: residuals 4-14 % relative L2 (mid block 29 %;
    # without graph convolutions <= 1.2 %), noise prediction 3.3 %, loss 0.05 %.
    assert_residuals_close(got_residuals, want_residuals, max_relative_error=0.5)
    assert relative_error(got_eps, want_eps) <= 0.1
    assert abs(got_loss.item() - want_loss.item()) <= 0.01 * want_loss.item()


def test_knn_search_stays_float32_under_autocast():
    nodes = torch.randn(2, 32, 1024, generator=torch.Generator().manual_seed(0))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = knn_graph(nodes, 9)
    assert torch.equal(got.sort(-1).values, knn_graph(nodes, 9).sort(-1).values)


def test_knn_chunked_equals_unchunked():
    nodes = torch.randn(2, 32, 1024, generator=torch.Generator().manual_seed(0))
    whole = knn_graph(nodes, 9, chunk_mb=1024.0)  # one chunk of 2 x 1024 x 1024 floats (8 MiB)
    chunked = knn_graph(nodes, 9, chunk_mb=0.05)  # 6 query rows per chunk, 171 chunks
    # Exact: the same neighbour set for every node (only the order of tied entries could differ).
    assert torch.equal(chunked.sort(-1).values, whole.sort(-1).values)


def test_knn_chunk_budget_leaves_the_adapter_bit_identical(tiny_cfg, synthetic_batch):
    ref = reference_model(tiny_cfg)
    chunked = make_model(tiny_cfg, "model.knn_chunk_mb=0.0001", source=ref)  # one query row per chunk
    batch = synthetic_batch(2)
    x, t, text, hint = adapter_inputs(ref, batch)
    # edgeconv takes a max over neighbours, so equal neighbour sets give bit-identical residuals (tolerance 0).
    got, want = chunked.adapter(x, t, text, hint), ref.adapter(x, t, text, hint)
    for g, w in zip([*got[0], got[1]], [*want[0], want[1]]):
        assert torch.equal(g, w)


def test_gradient_checkpointing_gives_the_same_gradients(tiny_cfg, synthetic_batch):
    ref = reference_model(tiny_cfg)
    ckpt = make_model(tiny_cfg, "model.gradient_checkpointing=true", source=ref)
    assert ckpt.adapter.gradient_checkpointing and ckpt.unet.is_gradient_checkpointing
    batch = synthetic_batch(2)
    grads = []
    for model in (ref, ckpt):
        model.train()
        loss_of(model, batch).backward()
        grads.append({n: p.grad for n, p in model.adapter.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) > 100
    # Recomputation replays the same fp32 ops: round-off only (BatchNorm statistics are recomputed on the same
    # batch, so they agree too).
    for name, want in grads[0].items():
        torch.testing.assert_close(grads[1][name], want, rtol=1e-4, atol=1e-6, msg=name)


def test_frozen_bf16_weights_train_a_step_with_bf16_mixed(tiny_cfg):
    cfg = tiny_cfg("model.frozen_dtype=bf16", "trainer.precision=bf16-mixed")
    torch.manual_seed(0)
    model = GRPoseLitModule.from_config(cfg)
    assert all(p.dtype == torch.bfloat16 for name in FROZEN for p in getattr(model, name).parameters())
    frozen_before = {n: p.clone() for n, p in model.unet.named_parameters()}
    adapter_before = {n: p.clone() for n, p in model.adapter.named_parameters()}

    data = SyntheticPoseDataset(2, resolution=64, skeleton_width=3)
    loader = DataLoader(data, batch_size=2, collate_fn=lambda s: {k: [x[k] for x in s] if k == "prompt" else
                                                                  torch.stack([x[k] for x in s])
                                                                  for k in ("image", "hint", "prompt")})
    trainer = pl.Trainer(accelerator="cpu", devices=1, precision="bf16-mixed", max_steps=1, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(model, loader)

    assert trainer.global_step == 1
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    # The adapter trained in fp32 (master weights) and changed; the bf16 frozen base did not.
    assert all(p.dtype == torch.float32 for p in model.adapter.parameters())
    assert any(not torch.equal(p, adapter_before[n]) for n, p in model.adapter.named_parameters())
    assert all(torch.equal(p, frozen_before[n]) and p.dtype == torch.bfloat16
               for n, p in model.unet.named_parameters())


def test_frozen_bf16_model_samples_outside_autocast(tiny_cfg, synthetic_batch):
    model = make_model(tiny_cfg, "model.frozen_dtype=bf16", "trainer.precision=bf16-mixed")
    batch = synthetic_batch(2)
    images = model.sample(batch["prompt"], batch["hint"], seeds=[0, 1])
    assert images.shape == batch["hint"].shape and torch.isfinite(images).all()


@pytest.mark.slow
def test_torch_compile_matches_eager(tiny_cfg, synthetic_batch):
    ref = reference_model(tiny_cfg)
    compiled = make_model(tiny_cfg, "model.compile=true", source=ref)
    batch = synthetic_batch(2)
    for model in (ref, compiled):
        model.eval()
    x, t, text, hint = adapter_inputs(ref, batch)
    with torch.no_grad():
        want, got = ref.adapter(x, t, text, hint), compiled.adapter(x, t, text, hint)
        want_loss, got_loss = loss_of(ref, batch), loss_of(compiled, batch)
    # Inductor fuses and reorders fp32 reductions: round-off only.
    assert_residuals_close(got, want, max_relative_error=1e-3)
    torch.testing.assert_close(got_loss, want_loss, rtol=1e-4, atol=1e-6)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused AdamW is a CUDA kernel")
def test_fused_adamw_matches_the_loop_implementation(tiny_cfg, synthetic_batch):
    ref = reference_model(tiny_cfg, "optim.fused=false").cuda()
    fused = make_model(tiny_cfg, "optim.fused=true", source=ref).cuda()
    batch = synthetic_batch(2)
    ref.train()
    loss_of(ref, batch).backward()
    # The same gradients for both optimizers: CUDA backward kernels need not be bitwise deterministic, and AdamW's
    # first step (~lr * sign(g)) would amplify that for near-zero gradients.
    for got, want in zip(fused.adapter.parameters(), ref.adapter.parameters()):
        got.grad = want.grad.clone()
    optimizers = [ref.configure_optimizers(), fused.configure_optimizers()]
    for optimizer in optimizers:
        optimizer.step()
    assert optimizers[1].defaults["fused"] and not optimizers[0].defaults["fused"]
    # The same AdamW update in one fused kernel: fp32 round-off only.
    for (name, want), got in zip(ref.adapter.named_parameters(), fused.adapter.parameters()):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7, msg=name)
