"""Tests of the pose perception loss (paper eq. 9-10) and its "gradual constraint" schedule: values and gradients
against independent computations, weighting, the release's detached variant, and the config builder."""

import importlib.util

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from grpose.config import PosePerceptionConfig
from grpose.losses.pose_perception import PoseLossSchedule, PosePerceptionLoss, build_pose_perception_loss

requires_mmpose = pytest.mark.skipif(importlib.util.find_spec("mmpose") is None,
                                     reason="mmpose 0.x is not installed (run `bash scripts/install_mmpose.sh`)")
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TinyBackbone(nn.Module):
    """Two feature maps of different sizes, like a multi-stage pose backbone; counts the images it sees."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 5, 3, stride=2, padding=1)
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += images.shape[0]
        a = torch.tanh(self.conv1(images))
        return [a, torch.tanh(self.conv2(a))]


def oracle(backbone, pred, target, alpha):
    """alpha * L_p written out directly: the mean over features of the per-sample mean squared difference."""
    per_feature = []
    for p, t in zip(backbone(pred), backbone(target)):
        per_feature.append(((p - t) ** 2).mean(dim=(1, 2, 3)))
    return alpha * (per_feature[0] + per_feature[1]) / 2


@pytest.fixture
def setup():
    torch.manual_seed(0)
    backbone = TinyBackbone()
    pred = torch.rand(3, 3, 16, 16) * 2 - 1
    target = torch.rand(3, 3, 16, 16) * 2 - 1
    alphas_cumprod = torch.cumprod(1 - torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000) ** 2, dim=0)
    return backbone, pred, target, alphas_cumprod


def test_zero_when_prediction_equals_target(setup):
    backbone, pred, _, acp = setup
    x = pred.clone().requires_grad_(True)
    loss = PosePerceptionLoss(backbone, alpha=0.5)(x, pred.clone(), torch.tensor([0, 10, 999]), acp)
    assert loss.shape == (3,) and torch.equal(loss, torch.zeros(3))
    loss.sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_value_and_gradient_match_an_independent_computation(setup):
    backbone, pred, target, acp = setup
    x = pred.clone().requires_grad_(True)
    loss = PosePerceptionLoss(backbone, alpha=0.01)(x, target, torch.tensor([5, 500, 900]), acp)

    y = pred.clone().requires_grad_(True)
    expected = oracle(backbone, y, target, alpha=0.01)
    torch.testing.assert_close(loss, expected, rtol=1e-6, atol=0)
    assert loss.min() > 0

    weights = torch.tensor([1.0, -2.0, 0.5])  # distinct per-sample weights separate the samples' gradients
    (loss * weights).sum().backward()
    (expected * weights).sum().backward()
    torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-9)
    assert x.grad.abs().sum() > 0
    assert all(p.grad is None for p in backbone.parameters())


def test_gradient_matches_finite_differences(setup):
    backbone, pred, target, acp = setup
    backbone = backbone.double()
    pred, target = pred.double(), target.double()
    loss_fn = PosePerceptionLoss(backbone, alpha=0.01)
    t = torch.tensor([1, 2, 3])
    x = pred.clone().requires_grad_(True)
    loss_fn(x, target, t, acp).sum().backward()

    direction = torch.randn_like(pred, generator=torch.Generator().manual_seed(1))
    eps = 1e-5
    with torch.no_grad():
        plus = loss_fn(pred + eps * direction, target, t, acp).sum()
        minus = loss_fn(pred - eps * direction, target, t, acp).sum()
    numeric = (plus - minus) / (2 * eps)
    analytic = (x.grad * direction).sum()
    torch.testing.assert_close(analytic, numeric, rtol=1e-5, atol=1e-12)


def test_alpha_bar_weighting_and_max_timestep(setup):
    backbone, pred, target, acp = setup
    t = torch.tensor([10, 400, 950])
    plain = PosePerceptionLoss(backbone, alpha=0.05)(pred, target, t, acp)
    weighted = PosePerceptionLoss(backbone, alpha=0.05, alpha_bar_weight=True)(pred, target, t, acp)
    torch.testing.assert_close(weighted, plain * acp[t])
    assert weighted[2] < 0.01 * plain[2]  # alpha_bar_t is near 0 at high noise

    backbone.images_seen = 0
    capped = PosePerceptionLoss(backbone, alpha=0.05, max_timestep=400)(pred, target, t, acp)
    assert capped[1] == 0 and capped[2] == 0
    torch.testing.assert_close(capped[0], plain[0])
    assert backbone.images_seen == 2  # only the active sample ran through the network (prediction + target)

    x = pred.clone().requires_grad_(True)
    PosePerceptionLoss(backbone, alpha=0.05, max_timestep=400)(x, target, t, acp).sum().backward()
    assert x.grad[0].abs().sum() > 0 and torch.equal(x.grad[1:], torch.zeros_like(x.grad[1:]))

    backbone.images_seen = 0
    none_active = PosePerceptionLoss(backbone, alpha=0.05, max_timestep=5)(pred, target, t, acp)
    assert torch.equal(none_active, torch.zeros(3)) and backbone.images_seen == 0


def test_faithful_release_has_the_same_value_but_no_gradient(setup):
    backbone, pred, target, acp = setup
    t = torch.tensor([3, 30, 300])
    x = pred.clone().requires_grad_(True)
    ours = PosePerceptionLoss(backbone, alpha=0.5, alpha_bar_weight=True)(x, target, t, acp)
    release = PosePerceptionLoss(backbone, alpha=0.5, alpha_bar_weight=True, faithful_release=True)(x, target, t, acp)
    torch.testing.assert_close(release, ours)
    assert ours.requires_grad and not release.requires_grad and release.min() > 0


def test_target_and_backbone_get_no_gradient(setup):
    backbone, pred, target, acp = setup
    x = pred.clone().requires_grad_(True)
    y = target.clone().requires_grad_(True)
    loss_fn = PosePerceptionLoss(backbone, alpha=1.0)
    assert not any(p.requires_grad for p in backbone.parameters())
    loss_fn(x, y, torch.tensor([0, 1, 2]), acp).sum().backward()
    assert y.grad is None and x.grad is not None
    loss_fn.train()
    assert loss_fn.training and not backbone.training


def test_input_checks(setup):
    backbone, pred, target, acp = setup
    loss_fn = PosePerceptionLoss(backbone)
    with pytest.raises(ValueError, match="differ in shape"):
        loss_fn(pred, target[:2], torch.tensor([0, 1, 2]), acp)
    with pytest.raises(ValueError, match="one timestep per image"):
        loss_fn(pred, target, torch.tensor([0, 1]), acp)
    with pytest.raises(ValueError, match="alpha"):
        PosePerceptionLoss(backbone, alpha=-1.0)


# ----------------------------------------------------------------------------------------------- schedule
def test_schedule_by_epoch():
    schedule = PoseLossSchedule(start_epoch=15)  # the paper: last 5 of 20 epochs (0-based epochs 15..19)
    assert not schedule.is_active(epoch=0, global_step=0)
    assert not schedule.is_active(epoch=14, global_step=10 ** 9)
    assert schedule.is_active(epoch=15, global_step=0)
    assert schedule.is_active(epoch=19, global_step=123)


def test_schedule_by_step():
    schedule = PoseLossSchedule(start_step=100)
    assert not schedule.is_active(epoch=50, global_step=99)
    assert schedule.is_active(epoch=0, global_step=100)
    assert schedule.is_active(epoch=0, global_step=101)


def test_schedule_default_and_errors():
    assert PoseLossSchedule().is_active(epoch=0, global_step=0)
    cfg = OmegaConf.structured(PosePerceptionConfig(start_epoch=3))
    assert PoseLossSchedule.from_config(cfg).start_epoch == 3
    with pytest.raises(ValueError, match="not both"):
        PoseLossSchedule(start_epoch=1, start_step=1)
    with pytest.raises(ValueError, match="start_step"):
        PoseLossSchedule(start_step=-1)


# ------------------------------------------------------------------------------- builder (real MMPose net)
def _config(**overrides):
    values = dict(alpha=0.01, network_checkpoint=None)
    values.update(overrides)
    return OmegaConf.structured(PosePerceptionConfig(**values))


def test_alpha_zero_is_not_built():
    with pytest.raises(ValueError, match="disables L_p"):
        build_pose_perception_loss(_config(alpha=0.0))


@pytest.mark.mmpose
@requires_mmpose
def test_builder_gives_a_differentiable_loss_on_the_real_network():
    from grpose.eval.pose_estimator import PoseBackbone

    torch.manual_seed(0)
    loss_fn = build_pose_perception_loss(_config(alpha=0.01, alpha_bar_weight=True, max_timestep=900,
                                                 input_size=128))
    assert isinstance(loss_fn.backbone, PoseBackbone) and loss_fn.alpha == 0.01
    assert loss_fn.state_dict() == {} and list(loss_fn.parameters()) == []

    acp = torch.linspace(0.99, 0.01, 1000)
    pred = (torch.rand(2, 3, 128, 128) * 2 - 1).requires_grad_(True)
    target = torch.rand(2, 3, 128, 128) * 2 - 1
    t = torch.tensor([100, 950])
    loss = loss_fn(pred, target, t, acp)
    loss.sum().backward()

    # independent: the mmpose backbone on hand-normalised ImageNet inputs (the MobileNetV2 config's values)
    net = loss_fn.backbone.net
    y = pred.detach().clone().requires_grad_(True)
    features = [net(((img + 1) / 2 - IMAGENET_MEAN) / IMAGENET_STD) for img in (y, target)]
    expected = 0.01 * acp[100] * ((features[0][0] - features[1][0]) ** 2).mean()
    expected.backward()
    torch.testing.assert_close(loss[0], expected.detach(), rtol=1e-5, atol=0)
    assert loss[1] == 0
    torch.testing.assert_close(pred.grad, y.grad, rtol=1e-4, atol=1e-10)
    assert pred.grad[0].abs().sum() > 0


@pytest.mark.mmpose
@requires_mmpose
def test_builder_loads_the_checkpoint_and_reports_a_missing_one(tmp_path):
    from grpose.eval.pose_estimator import build_pose_model

    torch.manual_seed(5)
    model = build_pose_model("associative_embedding/coco/mobilenetv2_coco_512x512.py")
    path = tmp_path / "mobilenet.pth"
    torch.save({"state_dict": model.state_dict(), "meta": {"epoch": 1}}, path)
    torch.manual_seed(6)
    loss_fn = build_pose_perception_loss(_config(network_checkpoint=str(path), input_size=64))
    loaded = loss_fn.backbone.net.state_dict()
    assert all(torch.equal(v, model.state_dict()["backbone." + k]) for k, v in loaded.items())

    with pytest.raises(FileNotFoundError) as info:
        build_pose_perception_loss(_config(network_checkpoint=str(tmp_path / "models" / "absent.pth")))
    message = str(info.value)
    assert "loss.pose_perception.network_checkpoint" in message and "absent.pth" in message
    assert "mobilenetv2_coco_512x512-4d96e309_20200816.pth" in message

    with pytest.raises(FileNotFoundError, match="not_a_config.py"):
        build_pose_perception_loss(_config(network_config="not_a_config.py"))
