"""Training behaviour on the tiny model: what learns, that it learns, that checkpoints hold only the adapter."""

import pytest
import torch

from grpose.lit_module import GRPoseLitModule
from grpose.losses.diffusion import diffusion_loss, pose_region_mask


def test_gradients_reach_exactly_the_adapter(tiny_cfg, synthetic_batch):
    # 128 px: the tiny UNet's middle block then sees 2x2 latent cells. At 64 px it sees one, and self-attention over
    # a single token gives its query and key projections an exactly zero gradient.
    module = GRPoseLitModule.from_config(tiny_cfg("optim.lr=1e-3", "data.resolution=128"))
    loss = module.compute_loss(synthetic_batch(2, resolution=128))["loss"]
    loss.backward()
    adapter_params = {id(p) for p in module.adapter.parameters()}
    for name, p in module.named_parameters():
        if id(p) in adapter_params:
            assert p.requires_grad, name
        else:
            assert not p.requires_grad and p.grad is None, name
    # Every adapter parameter that should learn gets a gradient. At init the zero convs block the signal to the
    # layers behind them, a PGI's zero output conv sits behind the residual zero convs and the pose encoder's
    # zero convs behind that: a few optimizer steps open the chain, after which everything must receive gradient.
    optimizer = module.configure_optimizers()
    for _ in range(4):
        optimizer.step()
        optimizer.zero_grad()
        module.compute_loss(synthetic_batch(2, resolution=128))["loss"].backward()
    missing = [n for n, p in module.adapter.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def test_state_dict_holds_only_the_adapter(tiny_cfg):
    module = GRPoseLitModule.from_config(tiny_cfg())
    keys = list(module.state_dict())
    assert keys and all(k.startswith("adapter.") for k in keys)
    assert len(keys) == len(module.adapter.state_dict())
    module.load_state_dict(module.state_dict())  # round trip, strict
    with pytest.raises(RuntimeError, match="non-adapter keys"):
        module.load_state_dict({"unet.conv_in.weight": torch.zeros(1)})


@pytest.mark.parametrize("overrides", [
    ["model.graph_type=edgeconv"],
    ["model.graph_type=gcn"],
    ["model.adapter=controlnet"],
], ids=["edgeconv", "gcn", "controlnet"])
def test_overfitting_a_fixed_batch_lowers_the_loss(tiny_cfg, synthetic_batch, overrides):
    torch.manual_seed(0)
    module = GRPoseLitModule.from_config(tiny_cfg("optim.lr=2e-3", *overrides))
    batch = synthetic_batch(4)
    optimizer = module.configure_optimizers()
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731  same noise and t every step: a fixed target
    with torch.no_grad():
        before = module.compute_loss(batch, generator=gen())["loss"].item()
    for _ in range(30):
        loss = module.compute_loss(batch, generator=gen())["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = module.compute_loss(batch, generator=gen())["loss"].item()
    assert after < 0.7 * before, (before, after)


def test_pose_region_mask_covers_the_skeleton_only():
    pose = -torch.ones(1, 3, 64, 64)
    pose[:, 0, 30:34, 10:50] = 0.8  # a horizontal limb
    mask = pose_region_mask(pose, (8, 8), kernel_size=13, sigma=3.0)
    assert mask.shape == (1, 1, 8, 8)
    assert mask[0, 0, 3:5, 1:7].all() and mask[0, 0, 0].sum() == 0 and mask[0, 0, 7].sum() == 0
    assert pose_region_mask(-torch.ones(1, 3, 64, 64), (8, 8)).sum() == 0  # blur of a black image stays black


def test_weighted_diffusion_loss_matches_formula():
    pred, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    mask = (torch.rand(2, 1, 8, 8) > 0.5).float()
    got = diffusion_loss(pred, noise, mask, 5.0)
    err = (pred - noise) ** 2
    want = (5.0 * mask * err + (1 - mask) * err).mean(dim=(1, 2, 3))
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(diffusion_loss(pred, noise, mask, 1.0), err.mean(dim=(1, 2, 3)))


def test_sampling_is_seeded_per_image(tiny_cfg, synthetic_batch):
    module = GRPoseLitModule.from_config(tiny_cfg())
    batch = synthetic_batch(3)
    all3 = module.sample(batch["prompt"], batch["hint"], seeds=[5, 6, 7])
    one = module.sample(batch["prompt"][1:2], batch["hint"][1:2], seeds=[6])
    assert all3.shape == (3, 3, 64, 64)
    torch.testing.assert_close(all3[1:2], one, atol=1e-5, rtol=1e-4)


def test_timestep_sampling_uniform_and_cubic():
    from grpose.losses.diffusion import sample_timesteps

    draw = lambda sampling: sample_timesteps(200_000, 1000, sampling, torch.Generator().manual_seed(0))  # noqa: E731
    uniform, cubic = draw("uniform"), draw("cubic")
    for t in (uniform, cubic):
        assert t.dtype == torch.int64 and int(t.min()) == 0 and int(t.max()) == 999
    assert float((uniform >= 500).float().mean()) == pytest.approx(0.5, abs=0.01)
    # t = (1 - u^3) T: P(t >= T/2) = P(u <= 0.5 ** (1/3)) = 0.794, P(t < 100) = 1 - 0.9 ** (1/3) = 0.035
    assert float((cubic >= 500).float().mean()) == pytest.approx(0.5 ** (1 / 3), abs=0.01)
    assert float((cubic < 100).float().mean()) == pytest.approx(1 - 0.9 ** (1 / 3), abs=0.005)
    assert torch.equal(cubic, draw("cubic"))  # the generator makes a training step reproducible


def test_training_step_uses_the_configured_timestep_sampling(tiny_cfg, synthetic_batch, monkeypatch):
    import grpose.lit_module as lit

    seen = []
    original = lit.sample_timesteps
    monkeypatch.setattr(lit, "sample_timesteps", lambda *a, **k: seen.append(a[2]) or original(*a, **k))
    module = GRPoseLitModule.from_config(tiny_cfg("loss.timesteps=cubic"))
    module.compute_loss(synthetic_batch(2))
    assert seen == ["cubic"]
