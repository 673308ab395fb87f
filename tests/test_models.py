"""Graph ops, PGI and adapter: brute-force oracles, equivariance, zero-init behaviour."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from grpose.models.adapter import ControlNetBaseline, GraphPoseAdapter
from grpose.models.gcn import GraphConv
from grpose.models.knn_graph import grid_positional_encoding, knn_graph
from grpose.models.pgi import ProgressiveGraphIntegrator
from grpose.models.pose_encoder import PoseEncoder


def brute_force_knn(nodes: torch.Tensor, k: int) -> torch.Tensor:
    """Explicit L2 distances between L2-normalised nodes, sorted."""
    unit = nodes / nodes.norm(dim=1, keepdim=True)
    pts = unit.transpose(1, 2)
    dist = ((pts[:, :, None, :] - pts[:, None, :, :]) ** 2).sum(-1)
    return dist.argsort(dim=-1)[..., :k]


@pytest.mark.parametrize("chunk_mb", [1e-4, 256.0])
def test_knn_equals_brute_force(chunk_mb):
    torch.manual_seed(0)
    nodes = torch.randn(2, 8, 50, dtype=torch.float64)
    got = knn_graph(nodes, 9, chunk_mb=chunk_mb)
    want = brute_force_knn(nodes, 9)
    assert got.shape == (2, 50, 9)
    assert torch.equal(got.sort(-1).values, want.sort(-1).values)
    # the node itself is always among its neighbours
    assert (got == torch.arange(50)[None, :, None]).any(-1).all()


def test_knn_chunking_bounds_memory_and_clamps_k():
    nodes = torch.randn(1, 4, 6)
    assert knn_graph(nodes, 9).shape == (1, 6, 6)  # k clamped to N
    # a budget of ~one row per chunk still gives the full result
    assert torch.equal(knn_graph(nodes, 3, chunk_mb=1e-9).sort(-1).values, knn_graph(nodes, 3).sort(-1).values)


def test_knn_has_no_gradient():
    nodes = torch.randn(1, 4, 10, requires_grad=True)
    assert not knn_graph(nodes, 3).requires_grad


def naive_edgeconv(layer: GraphConv, z: torch.Tensor) -> torch.Tensor:
    """The release's formulation: the full B x 2C x N x K edge tensor through a grouped conv, ReLU, max."""
    b, c, h, w = z.shape
    u = layer.node_norm(layer.node_proj(z)).reshape(b, c, h * w)
    if layer.positional_encoding:
        u = u + grid_positional_encoding(c, h, w, dtype=u.dtype)
    idx = brute_force_knn(u, layer.k)
    neighbours = torch.stack([u[i][:, idx[i]] for i in range(b)])  # B x C x N x K
    centre = u[..., None].expand_as(neighbours)
    edge = torch.cat([centre, neighbours - centre], dim=1)
    out = F.relu(layer.edge_conv(edge)).amax(-1)
    return out.reshape(b, c, h, w) + z


@pytest.mark.parametrize("pos", [False, True])
def test_edgeconv_fast_path_equals_naive(pos):
    torch.manual_seed(0)
    layer = GraphConv(16, k=5, kind="edgeconv", groups=4, positional_encoding=pos).double().eval()
    torch.nn.init.normal_(layer.edge_conv.bias)
    z = torch.randn(2, 16, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(layer(z), naive_edgeconv(layer, z))


def naive_gcn(layer: GraphConv, z: torch.Tensor) -> torch.Tensor:
    """Dense A_hat = D_out^-1/2 (A + I) D_in^-1/2 over the KNN graph (paper eq. 4-7)."""
    b, c, h, w = z.shape
    x = z.reshape(b, c, h * w)
    n = h * w
    outs = []
    for i in range(b):
        idx = brute_force_knn(x[i:i + 1], layer.k)[0]
        adj = torch.zeros(n, n, dtype=z.dtype)
        adj[torch.arange(n)[:, None].expand_as(idx), idx] = 1.0
        adj.fill_diagonal_(0)
        a_tilde = adj + torch.eye(n, dtype=z.dtype)
        d_out = a_tilde.sum(1)
        d_in = a_tilde.sum(0)
        a_hat = d_out.rsqrt()[:, None] * a_tilde * d_in.rsqrt()[None, :]
        agg = x[i] @ a_hat.T  # C x N: sum_j A_hat_ij x_j
        theta = torch.sigmoid(layer.theta)[:, None]
        upd = theta * x[i] + (1 - theta) * agg
        outs.append(F.relu(layer.weight.weight[:, :, 0, 0] @ upd + layer.weight.bias[:, None]))
    return torch.stack(outs).reshape(b, c, h, w) + z


def test_gcn_equals_dense_adjacency_formula():
    torch.manual_seed(1)
    layer = GraphConv(8, k=4, kind="gcn").double()
    torch.nn.init.normal_(layer.theta)
    z = torch.randn(2, 8, 4, 5, dtype=torch.float64)
    torch.testing.assert_close(layer(z), naive_gcn(layer, z))


@pytest.mark.parametrize("kind", ["edgeconv", "gcn"])
def test_graph_conv_is_permutation_equivariant(kind):
    torch.manual_seed(2)
    layer = GraphConv(8, k=5, kind=kind).double().eval()
    z = torch.randn(2, 8, 1, 30, dtype=torch.float64)  # a 1 x N map: the nodes can be permuted freely
    perm = torch.randperm(30)
    out_perm = layer(z[..., perm])
    torch.testing.assert_close(out_perm, layer(z)[..., perm])


def test_pose_encoder_shapes_and_zero_init():
    enc = PoseEncoder(3, (8, 16, 16), (16, 24, 32, 40))
    feats = enc(torch.randn(2, 3, 128, 128))
    assert [tuple(f.shape) for f in feats] == [(2, 16, 16, 16), (2, 24, 8, 8), (2, 32, 4, 4), (2, 40, 2, 2)]
    assert all((f == 0).all() for f in feats)


@pytest.mark.parametrize("kind", ["edgeconv", "gcn"])
@pytest.mark.parametrize("graphs", [(), ("latent",), ("latent", "pose", "fuse")])
def test_pgi_at_init_returns_its_shortcut(kind, graphs):
    torch.manual_seed(3)
    pgi = ProgressiveGraphIntegrator(16, 32, 64, 8, graphs=graphs, norm_groups=8, graph_kind=kind, k=4)
    x = torch.randn(2, 16, 6, 6)
    out = pgi(x, torch.randn(2, 64), torch.randn(2, 8, 6, 6))
    assert torch.equal(out, pgi.conv_shortcut(x))
    n_graphs = sum(isinstance(m, GraphConv) for m in pgi.modules())
    assert n_graphs == len(graphs)


def tiny_unet() -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, block_out_channels=(32, 32, 64, 64), layers_per_block=2,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        cross_attention_dim=32, attention_head_dim=8, norm_num_groups=32)


def tiny_adapter(unet, **kw) -> GraphPoseAdapter:
    return GraphPoseAdapter.from_unet(unet, pose_stem_channels=(8, 16, 16), pose_level_channels=(16, 16, 32, 32),
                                      knn_k=4, **kw)


def test_adapter_copies_unet_weights_and_places_pgis():
    unet = tiny_unet()
    adapter = tiny_adapter(unet, pgi_levels=[0, 2])
    pgis = [i for i, b in enumerate(adapter.down_blocks) if isinstance(b.resnets[0], ProgressiveGraphIntegrator)]
    assert pgis == [0, 2]
    unet_state = unet.state_dict()
    for key, value in adapter.state_dict().items():
        if key in unet_state and unet_state[key].shape == value.shape:
            assert torch.equal(value, unet_state[key]), key
    # PGI pieces that mirror the ResNet block are copied, its output conv is not
    pgi = adapter.down_blocks[2].resnets[0]
    assert torch.equal(pgi.conv1.weight, unet.down_blocks[2].resnets[0].conv1.weight)
    assert torch.equal(pgi.conv_shortcut.weight, unet.down_blocks[2].resnets[0].conv_shortcut.weight)
    assert (pgi.conv_out.weight == 0).all()


@pytest.mark.parametrize("make", ["grpose", "controlnet"])
def test_adapter_at_init_leaves_unet_output_unchanged(make):
    unet = tiny_unet().eval()
    adapter = tiny_adapter(unet) if make == "grpose" else ControlNetBaseline.from_unet(unet)
    x, t, text = torch.randn(2, 4, 8, 8), torch.tensor([3, 700]), torch.randn(2, 7, 32)
    pose = torch.rand(2, 3, 64, 64) * 2 - 1
    down, mid = adapter(x, t, text, pose)
    assert len(down) == 12
    assert all((d == 0).all() for d in down) and (mid == 0).all()
    with torch.no_grad():
        plain = unet(x, t, text).sample
        combined = unet(x, t, text, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
    assert torch.equal(plain, combined)


def test_conditioning_scale_scales_residuals():
    unet = tiny_unet()
    adapter = tiny_adapter(unet)
    for p in adapter.controlnet_down_blocks.parameters():
        torch.nn.init.normal_(p)
    x, t, text, pose = torch.randn(1, 4, 8, 8), torch.tensor([5]), torch.randn(1, 7, 32), torch.zeros(1, 3, 64, 64)
    adapter.eval()
    d1, _ = adapter(x, t, text, pose, conditioning_scale=1.0)
    d05, _ = adapter(x, t, text, pose, conditioning_scale=0.5)
    torch.testing.assert_close(d05[3], 0.5 * d1[3])


def test_adapter_gradient_checkpointing_matches():
    unet = tiny_unet()
    adapter = tiny_adapter(unet)
    for p in adapter.parameters():
        p.data.add_(0.01 * torch.randn_like(p))
    adapter.train()
    x, t, text, pose = torch.randn(2, 4, 8, 8), torch.tensor([5, 9]), torch.randn(2, 7, 32), torch.randn(2, 3, 64, 64)

    def grads():
        adapter.zero_grad()
        down, mid = adapter(x, t, text, pose)
        (sum(d.square().sum() for d in down) + mid.square().sum()).backward()
        return [p.grad.clone() for p in adapter.parameters() if p.grad is not None]

    plain = grads()
    adapter.enable_gradient_checkpointing()
    ckpt = grads()
    # gradients agree (BatchNorm statistics too: tests/test_checkpointing_batchnorm.py)
    for a, b in zip(plain, ckpt):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_full_size_adapters_instantiate_from_shipped_configs():
    """Full SD1.5 size on the meta device (no memory, no download); counts quoted in the README."""
    from grpose.models.adapter import encoder_config
    from grpose.sd15 import sd15_config

    unet_cfg = encoder_config(sd15_config("sd15", "unet"))
    with torch.device("meta"):
        grpose = GraphPoseAdapter(unet_config=unet_cfg)
        controlnet = ControlNetBaseline(**unet_cfg)
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(grpose) == 412_986_688
    assert count(controlnet) == 361_279_120
    pgis = [m for m in grpose.modules() if isinstance(m, ProgressiveGraphIntegrator)]
    assert len(pgis) == 4 and sum(isinstance(m, GraphConv) for m in grpose.modules()) == 12
    assert [p.conv1.out_channels for p in pgis] == [320, 640, 1280, 1280]


def test_precomputed_pose_features_give_the_same_residuals():
    """The sampler encodes the pose once per call; that must equal encoding it at every step."""
    unet = tiny_unet()
    adapter = tiny_adapter(unet).eval()
    for p in adapter.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x, text, pose = torch.randn(2, 4, 8, 8), torch.randn(2, 7, 32), torch.rand(2, 3, 64, 64) * 2 - 1
    features = adapter.encode_pose(pose)
    for t in (torch.tensor([10, 10]), torch.tensor([900, 900])):
        direct, cached = adapter(x, t, text, pose), adapter(x, t, text, features)
        for a, b in zip(direct[0] + [direct[1]], cached[0] + [cached[1]]):
            assert torch.equal(a, b)
