"""The pose perception loss trains the adapter (paper eq. 9-10): gradient identities on the tiny model."""

import csv

import pytest
import torch

import train
from grpose.lit_module import GRPoseLitModule
from tests.conftest import TINY_OVERRIDES

pytest.importorskip("mmpose", reason="needs mmpose (bash scripts/install_mmpose.sh)")
pytestmark = pytest.mark.mmpose

POSE = ["loss.pose_perception.network_checkpoint=null", "loss.pose_perception.input_size=64"]


def modules(tiny_cfg, *pose_overrides):
    """A module without L_p and one with it, sharing frozen parts and identical (non-zero) adapter weights."""
    torch.manual_seed(0)
    plain = GRPoseLitModule.from_config(tiny_cfg())
    with torch.no_grad():  # open the zero convs so that gradients reach the whole adapter
        for p in plain.adapter.parameters():
            p.add_(1e-2 * torch.randn_like(p))
    with_pose = GRPoseLitModule.from_config(tiny_cfg(*POSE, *pose_overrides), parts=plain.sd)
    with_pose.adapter.load_state_dict(plain.adapter.state_dict())
    # mmpose's random init makes MobileNetV2 features vanish (~1e-9 at 64 px), and with them L_p's gradient;
    # a Kaiming init stands in for trained weights with O(1) features.
    for layer in with_pose.pose_loss.backbone.net.modules():
        if isinstance(layer, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    return plain, with_pose


def adapter_grads(module, batch):
    module.adapter.zero_grad()
    losses = module.compute_loss(batch, generator=torch.Generator().manual_seed(7))
    losses["loss"].backward()
    return {n: p.grad.clone() for n, p in module.adapter.named_parameters()}, losses


def independent_pose_loss_grads(module, batch, alpha):
    """alpha * L_p rebuilt by hand: x0_hat from the same noise estimate, VAE decode, pose net features, MSE."""
    module.adapter.zero_grad()
    gen = torch.Generator().manual_seed(7)
    images = batch["image"]
    with torch.no_grad():
        latents = module.vae.encode(images).latent_dist.sample(gen) * module.sd.vae_scale_factor
        from grpose.sd15 import encode_prompts
        text = encode_prompts(module.sd, batch["prompt"])
    noise = torch.randn(latents.shape, generator=gen)
    t = torch.randint(0, 1000, (latents.shape[0],), generator=gen)
    acp = module.noise_scheduler.alphas_cumprod[t][:, None, None, None]
    noisy = acp.sqrt() * latents + (1 - acp).sqrt() * noise
    down, mid = module.adapter(noisy, t, text, batch["hint"])
    eps = module.unet(noisy, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    x0 = (noisy - (1 - acp).sqrt() * eps) / acp.sqrt()
    decoded = module.vae.decode(x0 / module.sd.vae_scale_factor).sample
    backbone = module.pose_loss.backbone
    pred_feat = backbone(decoded)[-1]
    with torch.no_grad():
        true_feat = backbone(images)[-1]
    lp = ((pred_feat - true_feat) ** 2).mean(dim=(1, 2, 3))
    (alpha * lp).mean().backward()
    return {n: p.grad.clone() for n, p in module.adapter.named_parameters()}


def test_pose_loss_gradient_is_exactly_alpha_times_grad_lp(tiny_cfg, synthetic_batch):
    batch = synthetic_batch(2)
    plain, with_pose = modules(tiny_cfg, "loss.pose_perception.alpha=0.5")
    g0, l0 = adapter_grads(plain, batch)
    g1, l1 = adapter_grads(with_pose, batch)
    assert "loss_pose" in l1 and l1["loss_pose"] > 0
    torch.testing.assert_close(l1["loss_diffusion"], l0["loss_diffusion"])
    gp = independent_pose_loss_grads(with_pose, batch, alpha=0.5)
    changed = 0
    # float32 sums in different orders: an absolute tolerance relative to the largest gradient. Tensors whose true
    # gradient is zero (biases right before a normalisation) only carry round-off of that size.
    scale = max(max(g.abs().max().item() for g in gp.values()), max(g.abs().max().item() for g in g1.values()))
    for name in g0:
        torch.testing.assert_close(g1[name] - g0[name], gp[name], rtol=1e-3, atol=1e-5 * scale, msg=name)
        changed += bool((g1[name] != g0[name]).any())
    assert changed > 0.9 * len(g0)  # L_p reaches (almost) every adapter tensor
    assert sum(v.abs().sum() for v in gp.values()) > 0


def test_faithful_release_gives_the_alpha_zero_gradients(tiny_cfg, synthetic_batch):
    batch = synthetic_batch(2)
    plain, faithful = modules(tiny_cfg, "loss.pose_perception.alpha=0.5",
                              "loss.pose_perception.faithful_release=true")
    g0, _ = adapter_grads(plain, batch)
    g1, losses = adapter_grads(faithful, batch)
    assert losses["loss_pose"] > 0  # the value is logged ...
    for name in g0:  # ... but nothing trains on it, as in the released code
        torch.testing.assert_close(g1[name], g0[name], rtol=1e-5, atol=1e-8, msg=name)


def test_gradual_constraint_switches_on_at_the_configured_step(tmp_path):
    argv = ["--config", "configs/demo.yaml", *TINY_OVERRIDES, *POSE, f"output_dir={tmp_path}", "name=sched",
            "data.batch_size=2", "data.synthetic_train_size=16", "trainer.max_steps=4",
            "trainer.log_every_n_steps=1", "trainer.sample_every_n_steps=0", "trainer.logger=csv",
            "loss.pose_perception.alpha=0.1", "loss.pose_perception.start_step=2"]
    train.main(argv)
    rows = list(csv.DictReader(open(next((tmp_path / "sched" / "logs").rglob("metrics.csv")))))
    pose_steps = sorted(int(r["step"]) for r in rows if r.get("train/loss_pose"))
    diffusion_steps = sorted(int(r["step"]) for r in rows if r.get("train/loss_diffusion"))
    assert diffusion_steps == [0, 1, 2, 3]
    assert pose_steps == [2, 3]
