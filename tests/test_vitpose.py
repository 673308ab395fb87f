"""The ViTPose top-down evaluator on the CPU: the ViT backbone registered into mmpose 0.x, checkpoints in ViTPose's
published key layout loading strictly (a tiny one, and the full ViTPose-H layout on the meta device), and top-down
prediction on boxes from the conditioning poses, with random weights."""

import importlib.util

import numpy as np
import pytest
import torch

from grpose.eval import pose_estimator as pe
from grpose.eval.vitpose import ViTPoseBackbone, _Block, published_key_layout, vitpose_config

requires_mmpose = pytest.mark.skipif(importlib.util.find_spec("mmpose") is None,
                                     reason="mmpose 0.x is not installed (run `bash scripts/install_mmpose.sh`)")
TINY = dict(image_size=(48, 64), embed_dim=64, depth=2, num_heads=4)  # (width, height) as mmpose's data_cfg


def mmpose1_key_layout(embed_dim, depth, image_size=(192, 256)):
    """Names and shapes of an mmpose 1.x ViTPose checkpoint (mmpretrain VisionTransformer with
    `with_cls_token=False`, mmcv FFN, HeatmapHead), written from those libraries' module definitions."""
    width, height = image_size
    d, patches = embed_dim, (height // 16) * (width // 16)
    keys = {"backbone.pos_embed": (1, patches, d), "backbone.patch_embed.projection.weight": (d, 3, 16, 16),
            "backbone.patch_embed.projection.bias": (d,), "backbone.ln1.weight": (d,), "backbone.ln1.bias": (d,)}
    for i in range(depth):
        p = f"backbone.layers.{i}."
        keys.update({p + "ln1.weight": (d,), p + "ln1.bias": (d,), p + "attn.qkv.weight": (3 * d, d),
                     p + "attn.qkv.bias": (3 * d,), p + "attn.proj.weight": (d, d), p + "attn.proj.bias": (d,),
                     p + "ln2.weight": (d,), p + "ln2.bias": (d,), p + "ffn.layers.0.0.weight": (4 * d, d),
                     p + "ffn.layers.0.0.bias": (4 * d,), p + "ffn.layers.1.weight": (d, 4 * d),
                     p + "ffn.layers.1.bias": (d,)})
    for key, shape in published_key_layout(d, depth, image_size).items():
        if key.startswith("keypoint_head."):
            keys["head." + key[len("keypoint_head."):]] = shape
    return keys


def tiny_config():
    import mmcv

    return mmcv.Config(vitpose_config("vitpose_huge", **TINY))


def test_backbone_gives_the_patch_grid_of_vitpose():
    torch.manual_seed(0)
    net = ViTPoseBackbone(img_size=(64, 48), embed_dim=64, depth=2, num_heads=4).eval()
    out = net(torch.randn(2, 3, 64, 48))
    assert out.shape == (2, 64, 4, 3)  # 16 px patches, padded conv: 64x48 -> 4x3
    full = ViTPoseBackbone(img_size=(256, 192), embed_dim=1280, depth=1, num_heads=16)
    assert full.pos_embed.shape == (1, 16 * 12 + 1, 1280)  # 192 patches + the class-token slot


def test_own_block_equals_timm_block():
    pytest.importorskip("timm")
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    ours = _Block(64, 4, 4.0, True).eval()
    theirs = Block(64, 4, mlp_ratio=4.0, qkv_bias=True, norm_layer=type(ours.norm1)).eval()
    theirs.norm1.eps = theirs.norm2.eps = 1e-6
    assert set(ours.state_dict()) == set(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(2, 12, 64)
    torch.testing.assert_close(ours(x), theirs(x), atol=1e-5, rtol=1e-5)


@pytest.mark.mmpose
@requires_mmpose
class TestViTPoseInMMPose:
    def test_tiny_checkpoint_in_the_published_layout_loads_strictly(self, tmp_path):
        layout = published_key_layout(64, 2, image_size=(48, 64))
        generator = torch.Generator().manual_seed(0)
        state = {k: (torch.randn(shape, generator=generator) if shape else torch.tensor(0))
                 for k, shape in layout.items()}
        torch.save({"state_dict": state, "meta": {"epoch": 210}}, tmp_path / "tiny_vitpose.pth")
        model = pe.build_pose_model(tiny_config(), tmp_path / "tiny_vitpose.pth")
        own = model.state_dict()
        assert set(own) == set(layout)  # no missing, no unexpected key
        for key, value in state.items():
            assert torch.equal(own[key], value), key

    def test_full_size_vitpose_h_layout_on_the_meta_device(self):
        import mmcv
        from mmpose.models import build_posenet

        from grpose.eval.vitpose import register_vit_backbone

        register_vit_backbone()
        cfg = mmcv.Config(vitpose_config("vitpose_huge"))
        with torch.device("meta"):
            model = build_posenet(cfg.model)
        own = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        want = published_key_layout(1280, 32)
        unmapped = set(own) ^ set(want)
        assert not unmapped and all(own[k] == want[k] for k in want)
        assert sum(int(np.prod(s)) for k, s in want.items() if k.startswith("backbone.")) == pytest.approx(
            632e6, rel=0.01)  # ViT-H/16: ~632 M parameters

    def test_mmpose1_humanart_checkpoint_layout_converts_and_loads(self, tmp_path):
        """mmpose 1.x released the Human-Art ViTPose models SP-Ctrl evaluates with; its key layout maps onto
        ViTPose's one to one (ViTPose-H: 0 unmapped keys), and a tiny such checkpoint loads strictly and computes
        the same heatmaps as the same weights saved in ViTPose's own layout."""
        from grpose.eval.vitpose import from_mmpose1_layout

        full = {k: torch.empty(s, device="meta") for k, s in mmpose1_key_layout(1280, 32).items()}
        converted, unmapped = from_mmpose1_layout(full, num_positions=193)
        want = published_key_layout(1280, 32)
        assert not unmapped and set(converted) == set(want)
        assert all(tuple(converted[k].shape) == want[k] for k in want)

        generator = torch.Generator().manual_seed(1)
        state = {k: (torch.rand(s, generator=generator) + 0.5 if s else torch.tensor(0))
                 for k, s in mmpose1_key_layout(64, 2, image_size=(48, 64)).items()}
        torch.save({"state_dict": state}, tmp_path / "mmpose1.pth")
        model = pe.build_pose_model(tiny_config(), tmp_path / "mmpose1.pth")
        ref, _ = from_mmpose1_layout(state, num_positions=13)
        torch.save({"state_dict": ref}, tmp_path / "vitpose.pth")
        same = pe.build_pose_model(tiny_config(), tmp_path / "vitpose.pth")
        x = torch.randn(1, 3, 64, 48)
        torch.testing.assert_close(model.backbone(x), same.backbone(x))
        assert torch.equal(model.state_dict()["backbone.pos_embed"][:, 0], torch.zeros(1, 64))
        # pos_embed without the class slot is the patch embedding itself
        torch.testing.assert_close(model.state_dict()["backbone.pos_embed"][:, 1:], state["backbone.pos_embed"])

    def test_registration_is_idempotent(self):
        from mmpose.models.builder import BACKBONES

        from grpose.eval.vitpose import register_vit_backbone

        register_vit_backbone()
        register_vit_backbone()
        assert BACKBONES.get("ViT") is ViTPoseBackbone

    def test_top_down_prediction_on_boxes_of_the_conditioning_poses(self):
        torch.manual_seed(0)
        estimator = pe.TopDownPoseEstimator(tiny_config(), None)
        rng = np.random.default_rng(0)
        image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
        persons = np.tile(np.array([-1.0, -1.0, 0.0]), (3, 17, 1))
        persons[0, :, :2] = rng.uniform(5, 30, (17, 2))
        persons[0, :, 2] = 1.0
        persons[1, 3] = [40.0, 50.0, 1.0]  # one keypoint: a degenerate box gets the minimum size
        boxes = estimator.boxes(persons, 64, 64)
        assert len(boxes) == 2 and boxes[1][2] - boxes[1][0] == pytest.approx(0.05 * 64)
        (found,) = estimator.predict([image], [persons])
        assert 1 <= len(found) <= 2  # one per box, minus OKS-NMS duplicates
        for keypoints, score in found:
            assert keypoints.shape == (17, 3) and 0.0 <= score <= 1.0
        assert estimator.predict([image], [np.zeros((0, 17, 3))]) == [[]]
        with pytest.raises(ValueError, match="uint8 H x W x 3"):
            estimator.predict([image.astype(np.float32)], [persons])

    def test_builtin_name_resolves(self):
        cfg = pe._load_config("vitpose_base")
        assert cfg.model.backbone.embed_dim == 768 and cfg.model.test_cfg.use_udp
        assert cfg.data_cfg.use_gt_bbox and cfg.data_cfg.image_size == [192, 256]
