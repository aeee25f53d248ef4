"""Scenarios of the orthogonalization primitives (``optimizers.distributed``), run inside the spawned
gloo processes (see ``_harness.py``); each returns a dict.

Every scenario builds its inputs from a fixed seed, so all ranks hold the same full tensors and the
exact reference (an SVD polar factor) is computed on each rank. The orthogonalizer is replaced through
the documented ``orthogonalize=`` hook by one that records the shapes each rank computes.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from optimizers import distributed
from tests.distributed._harness import Context


def polar(x: torch.Tensor) -> torch.Tensor:
    """Exact orthogonal polar factor ``U Vᵀ`` of a (batch of) matrices (a stand-in for Newton–Schulz)."""
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return (u @ vh).to(x.dtype)


class Counting:
    """An orthogonalizer (list of whole matrices → list) that records the shapes it is given."""

    def __init__(self, fn=polar):
        self.fn, self.shapes = fn, []

    def __call__(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        self.shapes.extend(tuple(m.shape) for m in mats)
        return [self.fn(m) for m in mats]


# Shapes chosen for uneven shards over 2 and 3 ranks (7, 5, 2 rows), an empty shard (2 rows on 3
# ranks), a column-sharded matrix, a 3-D stack sharded on its batch dim, and a replicated matrix;
# 6 dim-sharded matrices, so the count is not divisible by 4 or 5 and uneven over 4.
PRIMITIVE_CASES = [
    ((7, 5), Shard(0)),
    ((5, 7), Shard(0)),
    ((7, 5), Shard(0)),
    ((2, 9), Shard(0)),
    ((6, 6), Shard(1)),
    ((7, 5), Shard(0)),
    ((3, 4, 6), Shard(0)),
    ((5, 3), Replicate()),
]


def orthogonalize_primitive(ctx: Context) -> dict:
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    gen = torch.Generator().manual_seed(0)
    fulls = [torch.randn(shape, generator=gen) for shape, _ in PRIMITIVE_CASES]
    dts = [distribute_tensor(f, mesh, [pl]) for f, (_, pl) in zip(fulls, PRIMITIVE_CASES)]
    counter = Counting()
    outs = distributed.orthogonalize_dtensors(dts, orthogonalize=counter)
    shapes_main = list(counter.shapes)
    errors, kept = [], []
    for f, o, d in zip(fulls, outs, dts):
        kept.append(isinstance(o, DTensor) and o.placements == d.placements and o.shape == d.shape
                    and o.to_local().shape == d.to_local().shape)
        errors.append((o.full_tensor() - polar(f)).abs().max().item())
    # What a naive implementation would get: the local shard orthogonalized alone.
    first = dts[0]
    shard_alone = polar(first.to_local())
    rows = torch.chunk(polar(fulls[0]), ctx.world_size, dim=0)[ctx.rank]
    # Other dtypes go through their own collectives; a 2-D mesh (HSDP-like) takes the full_tensor path.
    mesh2d = init_device_mesh("cpu", (1, ctx.world_size), mesh_dim_names=("replicate", "shard"))
    extra_fulls = [torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(5, 6, generator=gen)]
    extra = [
        distribute_tensor(extra_fulls[0], mesh, [Shard(0)]),
        distribute_tensor(extra_fulls[1], mesh2d, [Replicate(), Shard(0)]),
    ]
    extra_outs = distributed.orthogonalize_dtensors(extra, orthogonalize=counter)
    extra_errors = [(o.full_tensor() - polar(f)).abs().max().item() for f, o in zip(extra_fulls, extra_outs)]
    return {
        "errors": errors,
        "extra_errors": extra_errors,
        "extra_kept": [o.dtype == e.dtype and o.placements == e.placements for o, e in zip(extra_outs, extra)],
        "placements_kept": kept,
        "shapes_orthogonalized": shapes_main,
        "shard_alone_error": (shard_alone - rows).abs().max().item(),
    }


def orthogonalize_replicated(ctx: Context) -> dict:
    gen = torch.Generator().manual_seed(1)
    shapes = [(6, 4), (4, 6), (6, 4), (5, 5), (6, 4), (3, 2, 5)]
    fulls = [torch.randn(s, generator=gen) for s in shapes]
    counter = Counting()
    outs = distributed.orthogonalize_replicated(fulls, orthogonalize=counter)
    return {
        "errors": [(o - polar(f)).abs().max().item() for o, f in zip(outs, fulls)],
        "shapes_orthogonalized": counter.shapes,
        "n": len(shapes),
    }
