"""Dynamic K-nearest-neighbour graphs over the spatial positions of a feature map (paper eq. 2-3)."""

from __future__ import annotations

import contextlib

import math

import torch

# The profiler range every KNN search runs in (scripts/benchmark.py reports its share of the step); without a
# running profiler `record_function` is a no-op context.
KNN_PROFILER_RANGE = "grpose.knn_graph"


@torch.no_grad()
def knn_graph(nodes: torch.Tensor, k: int, chunk_mb: float = 256.0) -> torch.Tensor:
    """Indices of the `k` nearest neighbours of every node, the node itself included.

    `nodes` is B x C x N (channels first, N = H*W positions). Distances are L2 between L2-normalised node
    features, so the ranking equals cosine similarity (paper eq. 2, and the released ViG code). The B x N x N
    similarity matrix is built in query chunks of at most `chunk_mb` megabytes, so a 64x64 map (N = 4096) never
    holds the full matrix when the budget is smaller. No gradient flows through the search.

    Returns a LongTensor B x N x k (k is clamped to N).
    """
    batch, _, num_nodes = nodes.shape
    k = min(k, num_nodes)
    bytes_per_row = batch * num_nodes * 4
    rows = max(1, min(num_nodes, int(chunk_mb * 2**20 // bytes_per_row)))
    chunks = []
    # float32 search, also under autocast: bf16/fp16 similarities change the neighbour sets of many nodes.
    # (torch.autocast rejects the meta device, where benchmark.py --count-flops-only runs; it has no autocast anyway)
    no_autocast = (contextlib.nullcontext() if nodes.device.type == "meta"
                   else torch.autocast(nodes.device.type, enabled=False))
    with torch.profiler.record_function(KNN_PROFILER_RANGE), no_autocast:
        unit = torch.nn.functional.normalize(nodes.float(), dim=1)
        keys = unit.transpose(1, 2)  # B x N x C
        for start in range(0, num_nodes, rows):
            # For unit vectors ||a - b||^2 = 2 - 2 a.b: the largest inner products are the nearest nodes.
            similarity = torch.bmm(keys[:, start:start + rows], unit)  # B x rows x N
            chunks.append(similarity.topk(k, dim=-1).indices)
    return torch.cat(chunks, dim=1)


def grid_positional_encoding(channels: int, height: int, width: int, device=None,
                             dtype=torch.float32) -> torch.Tensor:
    """Fixed 2-D sinusoidal encoding p_i of every grid position (paper eq. 2-3: v_i <- v_i + p_i), C x H*W.

    Half of the channels encode the row, half the column, each with the transformer's sin/cos frequencies.
    Odd leftovers stay zero.
    """
    per_axis = channels // 2
    encoding = torch.zeros(channels, height, width, device=device, dtype=torch.float32)
    num_freq = per_axis // 2
    if num_freq > 0:
        freqs = torch.exp(-math.log(10000.0) * torch.arange(num_freq, device=device) / num_freq)
        rows = torch.arange(height, device=device, dtype=torch.float32)[:, None] * freqs  # H x F
        cols = torch.arange(width, device=device, dtype=torch.float32)[:, None] * freqs  # W x F
        encoding[0:num_freq] = rows.sin().T[:, :, None].expand(-1, -1, width)
        encoding[num_freq:2 * num_freq] = rows.cos().T[:, :, None].expand(-1, -1, width)
        encoding[per_axis:per_axis + num_freq] = cols.sin().T[:, None, :].expand(-1, height, -1)
        encoding[per_axis + num_freq:per_axis + 2 * num_freq] = cols.cos().T[:, None, :].expand(-1, height, -1)
    return encoding.reshape(channels, height * width).to(dtype)
