"""Graph convolution over a feature map whose spatial positions are graph nodes (paper eq. 4-7, and the release's EdgeConv)."""

from __future__ import annotations

import torch
from torch import nn

from .knn_graph import grid_positional_encoding, knn_graph


def gather_neighbours(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values B x C x N, index B x N x K -> B x C x N x K with out[b, :, i, k] = values[b, :, index[b, i, k]]."""
    batch, channels, num_nodes = values.shape
    flat = index.reshape(batch, 1, -1).expand(-1, channels, -1)
    return values.gather(2, flat).reshape(batch, channels, num_nodes, index.shape[-1])


class GraphConv(nn.Module):
    """One graph convolution on a B x C x H x W map with a dynamic KNN graph (every pixel a node).

    `kind="edgeconv"` is what the authors' released code runs (Vision-GNN style, docs/release_differences.md):
        u = BN(conv1x1(z)); e_ij = [u_i, u_j - u_i]; out_i = max_j ReLU(W_g e_ij) + z
    with W_g a 1x1 convolution with `groups` groups. Because W_g is linear and ReLU is monotone, the max over
    neighbours is taken after projecting the nodes once (max_j ReLU(P u_j - P u_i + b) = ReLU(max_j P u_j - P u_i
    + b)), which gathers C/2 instead of 2C channels per edge; the result equals the naive edge tensor computation.

    `kind="gcn"` is the paper's formulation (eq. 4-7):
        F_agg,i = sum_{j in N(i) u {i}} A_hat_ij v_j,  A_hat = D_out^-1/2 (A + I) D_in^-1/2     (eq. 4, 6)
        X'_i = theta * v_i + (1 - theta) * F_agg,i                                               (eq. 5)
        out = ReLU(W X') + z                                                                     (eq. 7)
    The KNN graph is directed, so the symmetric normalisation uses out-degrees for rows (always K) and in-degrees
    for columns: nodes chosen as a neighbour by many others ("hubs") are down-weighted, as D^-1/2 does on an
    undirected graph. theta is a per-channel gate sigmoid(theta_raw) in (0, 1), starting at 0.5.

    Positional encoding (paper eq. 2-3, off in the release) adds a fixed sinusoidal p_i to every node before the
    neighbour search and aggregation.
    """

    def __init__(self, channels: int, k: int = 9, kind: str = "edgeconv", groups: int = 4,
                 positional_encoding: bool = False, chunk_mb: float = 256.0):
        super().__init__()
        if kind not in ("edgeconv", "gcn"):
            raise ValueError(f"GraphConv kind must be 'edgeconv' or 'gcn', got {kind!r}")
        self.kind, self.k, self.chunk_mb = kind, k, chunk_mb
        self.positional_encoding = positional_encoding
        if kind == "edgeconv":
            if groups % 2 or (2 * channels) % groups or channels % groups:
                raise ValueError(f"edgeconv needs an even number of groups dividing {channels} channels, got {groups}")
            self.groups = groups
            # no bias: BatchNorm right after removes any per-channel constant (the release's bias is folded
            # into the BN running mean when its checkpoints are converted, grpose/weights.py)
            self.node_proj = nn.Conv2d(channels, channels, 1, bias=False)
            # running stats update once per step, also under gradient checkpointing (models/checkpointing.py)
            self.node_norm = nn.BatchNorm2d(channels)
            self.edge_conv = nn.Conv2d(2 * channels, channels, 1, groups=groups)
            nn.init.kaiming_normal_(self.edge_conv.weight)
            nn.init.zeros_(self.edge_conv.bias)
        else:
            self.theta = nn.Parameter(torch.zeros(channels))
            self.weight = nn.Conv2d(channels, channels, 1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = z.shape
        nodes = self.node_norm(self.node_proj(z)) if self.kind == "edgeconv" else z
        nodes = nodes.reshape(batch, channels, height * width)
        if self.positional_encoding:
            nodes = nodes + grid_positional_encoding(channels, height, width, nodes.device, nodes.dtype)
        index = knn_graph(nodes, self.k, self.chunk_mb)
        out = self._edgeconv(nodes, index) if self.kind == "edgeconv" else self._gcn(nodes, index)
        return out.reshape(batch, channels, height, width) + z

    def _edgeconv(self, nodes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        # Input channel groups [0, g/2) read u_i, groups [g/2, g) read u_j - u_i; so output channels [0, C/2)
        # depend on u_i only and the rest on the neighbour differences.
        half = nodes.shape[1] // 2
        weight = self.edge_conv.weight[:, :, 0, 0]  # C x (2C/g)
        bias = self.edge_conv.bias
        per_group_in = weight.shape[1]
        centre_w = self._block_diagonal(weight[:half], per_group_in)  # C/2 x C
        diff_w = self._block_diagonal(weight[half:], per_group_in)  # C/2 x C
        centre = torch.relu(torch.einsum("oc,bcn->bon", centre_w, nodes) + bias[:half, None])
        projected = torch.einsum("oc,bcn->bon", diff_w, nodes)  # P u, B x C/2 x N
        neighbour_max = gather_neighbours(projected, index).amax(dim=-1)
        diff = torch.relu(neighbour_max - projected + bias[half:, None])
        return torch.cat([centre, diff], dim=1)

    def _block_diagonal(self, weight: torch.Tensor, per_group_in: int) -> torch.Tensor:
        """Expand the grouped weights of half the groups (C/2 x 2C/g) into a dense C/2 x C matrix."""
        groups = self.groups // 2
        out_per_group = weight.shape[0] // groups
        blocks = [weight[g * out_per_group:(g + 1) * out_per_group] for g in range(groups)]
        return torch.block_diag(*blocks).reshape(weight.shape[0], groups * per_group_in)

    def _gcn(self, nodes: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        batch, channels, num_nodes = nodes.shape
        self_index = torch.arange(num_nodes, device=nodes.device).view(1, num_nodes, 1).expand(batch, -1, 1)
        # A + I: the KNN set normally contains the node itself; drop that entry and add the identity once.
        is_self = index == self_index
        neighbours = torch.cat([index, self_index], dim=-1)
        edge_on = torch.cat([~is_self, torch.ones_like(is_self[..., :1])], dim=-1).to(nodes.dtype)
        out_degree = edge_on.sum(-1)  # B x N
        in_degree = torch.zeros(batch, num_nodes, device=nodes.device, dtype=nodes.dtype)
        in_degree.scatter_add_(1, neighbours.reshape(batch, -1), edge_on.reshape(batch, -1))
        norm = edge_on * out_degree.rsqrt()[..., None] * in_degree.gather(
            1, neighbours.reshape(batch, -1)).reshape_as(edge_on).rsqrt()
        aggregated = (gather_neighbours(nodes, neighbours) * norm[:, None]).sum(-1)  # B x C x N
        theta = torch.sigmoid(self.theta)[None, :, None]
        updated = theta * nodes + (1 - theta) * aggregated
        return torch.relu(self.weight(updated.unsqueeze(-1)).squeeze(-1))
