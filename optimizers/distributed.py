"""Whole-matrix orthogonalization of sharded (FSDP2 / DTensor) and replicated (DDP) updates.

Muon must orthogonalize the *whole* update matrix: Newton–Schulz on a row shard of ``G`` gives
``polar(G_shard)``, which is not the matching rows of ``polar(G)`` (the Gram matrix ``G Gᵀ`` couples
all rows). This module does the work once per matrix and spreads it over the ranks:

* **FSDP2 (DTensor ``Shard(d)`` on a 1-D mesh, ``d`` one of the two matrix dims).** Each matrix gets
  an owner rank (:func:`assign_owners`, balanced by Newton–Schulz cost). One ``all_to_all`` sends
  every shard to its matrix's owner, the owner orthogonalizes its whole matrices (same-shape ones
  stacked into one batched call), and a second ``all_to_all`` sends the pieces back. Shards are cut
  with ``torch.chunk`` semantics, so uneven and empty shards need no padding (the collectives take
  per-rank split sizes). Communication per rank ≈ 2·S/W, where S is the size of all updates.
* **``Shard(d)`` on a batch dim** (``d < ndim - 2``, e.g. stacked experts): every local slice is a
  whole matrix, so the local shard is orthogonalized in place, with no communication.
* **Replicated updates** (DDP, where gradients are already all-reduced, or a ``Replicate()``
  DTensor): each rank orthogonalizes the matrices it owns and one ``all_gather`` shares the results
  (padded to equal length per rank, which gloo requires). Communication ≈ S per rank.
* **Anything else** (2-D meshes such as HSDP, tensor-parallel layouts): ``full_tensor()`` on every
  rank, orthogonalize, keep the local part. Correct, but the Newton–Schulz work is repeated W times.

Every rank must call these functions with the same list (same order, shapes, dtypes, meshes),
because they issue collectives; the optimizer step guarantees that under DDP and FSDP2.
``optimizers.Muon`` calls :func:`orthogonalize_distributed` every step: DTensor updates go to
:func:`orthogonalize_dtensors`, plain ones to :func:`orthogonalize_replicated` when Muon is built with
``process_group=...`` (DDP), else to the local :func:`optimizers.orthogonalize.orthogonalize_updates`.
Tested with gloo on CPU (2 and 3 ranks, torch 2.11 and 2.13) and NCCL on one GPU.

Hook: every function takes ``orthogonalize=``, a callable that maps a list of whole plain matrices to
their orthogonalized matrices (:data:`optimizers.orthogonalize.Orthogonalize`). It replaces the local
Newton–Schulz (the default: :func:`~optimizers.orthogonalize.orthogonalize_updates` with the given
``steps``, ``coefficients``, ``dtype``, ``method``), e.g. to count the matrices a rank computes or to
use an exact SVD in tests; the communication stays the same.
"""

from __future__ import annotations

import functools
from collections.abc import Hashable, Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.distributed.tensor import DTensor, Replicate, Shard

from .newton_schulz import newton_schulz_flops
from .orthogonalize import Orthogonalize, orthogonalize_updates

__all__ = [
    "assign_owners",
    "chunk_sizes",
    "orthogonalize_distributed",
    "orthogonalize_dtensors",
    "orthogonalize_replicated",
]


# --------------------------------------------------------------------------------------------
# Pure helpers
# --------------------------------------------------------------------------------------------


def chunk_sizes(length: int, world_size: int) -> list[int]:
    """Sizes of the ``world_size`` pieces ``torch.chunk`` (and DTensor ``Shard``) cuts ``length`` into.

    Every piece has ``ceil(length / world_size)`` elements except the trailing ones, which hold the
    rest and may be empty: ``chunk_sizes(5, 3) == [2, 2, 1]``, ``chunk_sizes(2, 3) == [1, 1, 0]``.
    """
    if length < 0:
        raise ValueError(f"length must be >= 0, got {length}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    full = -(-length // world_size)  # ceil
    return [max(0, min(full, length - r * full)) for r in range(world_size)]


def _cost(shape: Sequence[int]) -> int:
    """Newton–Schulz FLOPs of a ``[..., m, n]`` update: batch × :func:`newton_schulz_flops` (m, n)."""
    *batch, m, n = shape
    return int(torch.Size(batch).numel()) * newton_schulz_flops(m, n)


def assign_owners(costs: Sequence[float], world_size: int) -> list[int]:
    """Give each item an owner rank so the per-rank total cost is balanced (greedy LPT).

    Items are taken in decreasing cost (ties: list order) and each goes to the rank with the least
    load so far (ties: fewer items, then lower rank). Equal costs therefore go round-robin, so each
    rank owns ``floor(N/W)`` or ``ceil(N/W)`` of them, and in general the most loaded rank carries at
    most ``sum(costs)/W + max(costs)``. Deterministic: every rank computes the same answer.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if any(c < 0 for c in costs):
        raise ValueError(f"costs must be >= 0, got {list(costs)}")
    load = [0.0] * world_size
    count = [0] * world_size
    owners = [0] * len(costs)
    for i in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        r = min(range(world_size), key=lambda r: (load[r], count[r], r))
        owners[i] = r
        load[r] += costs[i]
        count[r] += 1
    return owners


def _default_orthogonalize(
    steps: int, coefficients: str | Sequence[Sequence[float]], dtype: torch.dtype | None, method: str
) -> Orthogonalize:
    # Muon's own local path (same-shape batching, tall matrices transposed), so a sharded run does
    # exactly the single-process arithmetic on each whole matrix.
    return functools.partial(
        orthogonalize_updates, steps=steps, coefficients=coefficients, dtype=dtype, method=method  # type: ignore[arg-type]
    )


def orthogonalize_distributed(
    updates: Sequence[Tensor],
    *,
    process_group: dist.ProcessGroup | None = None,
    steps: int = 5,
    coefficients: str | Sequence[Sequence[float]] = "quintic",
    dtype: torch.dtype | None = None,
    method: str = "standard",
    orthogonalize: Orthogonalize | None = None,
) -> list[Tensor]:
    """The orthogonalization of one Muon step: picks the path for the kind of updates given.

    Any DTensor in ``updates`` → :func:`orthogonalize_dtensors` (the whole list); else with a
    ``process_group`` (DDP) → :func:`orthogonalize_replicated`; else the local Newton–Schulz
    (``orthogonalize`` or :func:`~optimizers.orthogonalize.orthogonalize_updates`).
    """
    kw = dict(steps=steps, coefficients=coefficients, dtype=dtype, method=method, orthogonalize=orthogonalize)
    if any(isinstance(u, DTensor) for u in updates):
        return orthogonalize_dtensors(updates, **kw)  # type: ignore[arg-type]
    if process_group is not None:
        return orthogonalize_replicated(updates, group=process_group, **kw)  # type: ignore[arg-type]
    orth = orthogonalize or _default_orthogonalize(steps, coefficients, dtype, method)
    return list(orth(list(updates)))


# --------------------------------------------------------------------------------------------
# FSDP2 / DTensor
# --------------------------------------------------------------------------------------------


def orthogonalize_dtensors(
    updates: Sequence[Tensor],
    *,
    steps: int = 5,
    coefficients: str | Sequence[Sequence[float]] = "quintic",
    dtype: torch.dtype | None = None,
    method: str = "standard",
    orthogonalize: Orthogonalize | None = None,
) -> list[Tensor]:
    """Orthogonalize each update as a whole matrix, with the work split across the ranks.

    Args:
        updates: ``[..., m, n]`` tensors; DTensors keep their mesh and placements in the result.
            Plain tensors are orthogonalized locally. The list must be the same on every rank.
        steps, coefficients, dtype, method: Newton–Schulz settings, passed to Muon's local path
            :func:`optimizers.orthogonalize.orthogonalize_updates` (unless ``orthogonalize`` is given).
        orthogonalize: the hook (see the module doc): replaces that local path; it maps a list of
            whole plain matrices to their orthogonalized matrices.

    Returns:
        One tensor per update, of the same kind, global shape, mesh and placements. Results of
        regrouped and replicated updates come back in the update's dtype (the collectives need one
        dtype known to every rank); the others in the orthogonalizer's output dtype.
    """
    orth = orthogonalize or _default_orthogonalize(steps, coefficients, dtype, method)
    out: list[Tensor | None] = [None] * len(updates)
    plain: list[int] = []
    regroup: dict[Hashable, list[int]] = {}  # mesh -> indices of dim-sharded matrices
    replicated: dict[Hashable, list[int]] = {}  # mesh -> indices of Replicate() DTensors
    batch_sharded: list[int] = []  # Shard(d) on a batch dim: orthogonalized locally
    fallback: list[int] = []
    for i, u in enumerate(updates):
        if not isinstance(u, DTensor):
            plain.append(i)
            continue
        if u.ndim < 2:
            raise ValueError(f"updates[{i}] must have at least 2 dims, got shape {tuple(u.shape)}")
        mesh, placements = u.device_mesh, u.placements
        if all(isinstance(p, Replicate) for p in placements):
            replicated.setdefault(mesh, []).append(i)
        elif mesh.ndim == 1 and isinstance(placements[0], Shard):
            dim = placements[0].dim % u.ndim
            if dim < u.ndim - 2:  # a batch dim: local slices are whole matrices
                batch_sharded.append(i)
            else:
                regroup.setdefault(mesh, []).append(i)
        else:
            fallback.append(i)

    for i, r in zip(plain, orth([updates[i] for i in plain]) if plain else []):
        out[i] = r
    nonempty = [i for i in batch_sharded if updates[i].to_local().numel() > 0]
    for i, r in zip(nonempty, orth([updates[i].to_local() for i in nonempty]) if nonempty else []):
        out[i] = r
    for i in batch_sharded:
        u = updates[i]
        local = out[i] if out[i] is not None else u.to_local().clone()
        out[i] = DTensor.from_local(local, u.device_mesh, u.placements, shape=u.shape, stride=u.stride())
    for mesh, idx in regroup.items():
        for i, r in zip(idx, _regroup_orthogonalize([updates[i] for i in idx], orth)):
            out[i] = r
    for mesh, idx in replicated.items():
        group = mesh.get_group() if mesh.ndim == 1 else None
        if group is None:
            fallback.extend(idx)
            continue
        locals_ = orthogonalize_replicated([updates[i].to_local() for i in idx], group=group, orthogonalize=orth)
        for i, r in zip(idx, locals_):
            u = updates[i]
            out[i] = DTensor.from_local(r, u.device_mesh, u.placements, shape=u.shape, stride=u.stride())
    for i in sorted(fallback):
        u = updates[i]
        full = orth([u.full_tensor()])[0]
        replicated_dt = DTensor.from_local(full, u.device_mesh, [Replicate()] * u.device_mesh.ndim)
        out[i] = replicated_dt.redistribute(u.device_mesh, u.placements)
    return out  # type: ignore[return-value]


def _regroup_orthogonalize(updates: Sequence[DTensor], orth: Orthogonalize) -> list[DTensor]:
    """All-to-all the shards of whole matrices to their owners, orthogonalize, all-to-all back.

    All ``updates`` live on the same 1-D mesh, each ``Shard(d)`` with ``d`` one of the last two
    dims. Split sizes per rank follow :func:`chunk_sizes`, so uneven and empty shards work.
    """
    mesh = updates[0].device_mesh
    group = mesh.get_group()
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    dims = [u.placements[0].dim % u.ndim for u in updates]  # type: ignore[union-attr]
    owners = assign_owners([_cost(u.shape) for u in updates], world)
    sizes = [chunk_sizes(u.shape[d], world) for u, d in zip(updates, dims)]
    locals_ = [u.to_local() for u in updates]
    for i, (loc, d) in enumerate(zip(locals_, dims)):
        if loc.shape[d] != sizes[i][rank]:
            raise ValueError(
                f"updates[{i}] has a local shard of {loc.shape[d]} along dim {d} on rank {rank}; expected "
                f"{sizes[i][rank]} (torch.chunk layout of {updates[i].shape[d]} over {world} ranks)"
            )

    # Piece sent by rank s for matrix i: its local shard; numel = shard elements.
    def piece_numel(i: int, s: int) -> int:
        shape = list(updates[i].shape)
        shape[dims[i]] = sizes[i][s]
        return int(torch.Size(shape).numel())

    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, u in enumerate(updates):
        by_dtype.setdefault(u.dtype, []).append(i)

    results: list[Tensor | None] = [None] * len(updates)
    for dtype_, idx in by_dtype.items():
        owned = [i for i in idx if owners[i] == rank]
        # Forward: to each owner, my shards of the matrices it owns (in list order).
        send = [locals_[i].reshape(-1) for j in range(world) for i in idx if owners[i] == j]
        send_splits = [sum(piece_numel(i, rank) for i in idx if owners[i] == j) for j in range(world)]
        recv_splits = [sum(piece_numel(i, s) for i in owned) for s in range(world)]
        recv = _all_to_all(send, send_splits, recv_splits, dtype_, locals_[0].device, group)

        # Reassemble my whole matrices: recv is [source 0: owned pieces..., source 1: ...].
        pieces: dict[int, list[Tensor]] = {i: [] for i in owned}
        offset = 0
        for s in range(world):
            for i in owned:
                n = piece_numel(i, s)
                shape = list(updates[i].shape)
                shape[dims[i]] = sizes[i][s]
                pieces[i].append(recv[offset : offset + n].view(shape))
                offset += n
        whole = [torch.cat(pieces[i], dim=dims[i]) for i in owned]
        orthed = dict(zip(owned, (o.to(dtype_) for o in orth(whole)) if whole else []))

        # Backward: to each rank s, its rows/cols of every matrix I own (in list order).
        back = [
            orthed[i].narrow(dims[i], sum(sizes[i][:s]), sizes[i][s]).reshape(-1)
            for s in range(world)
            for i in owned
        ]
        recv_back = _all_to_all(back, recv_splits, send_splits, dtype_, locals_[0].device, group)
        offset = 0
        for j in range(world):
            for i in idx:
                if owners[i] != j:
                    continue
                n = piece_numel(i, rank)
                results[i] = recv_back[offset : offset + n].view(locals_[i].shape)
                offset += n

    return [
        DTensor.from_local(r, u.device_mesh, u.placements, shape=u.shape, stride=u.stride())
        for r, u in zip(results, updates)
    ]


def _all_to_all(
    chunks: list[Tensor],
    send_splits: list[int],
    recv_splits: list[int],
    dtype: torch.dtype,
    device: torch.device,
    group: dist.ProcessGroup,
) -> Tensor:
    """``all_to_all_single`` with per-rank split sizes (supported by gloo and NCCL)."""
    send = torch.cat(chunks) if chunks else torch.empty(0, dtype=dtype, device=device)
    recv = torch.empty(sum(recv_splits), dtype=dtype, device=device)
    dist.all_to_all_single(recv, send.contiguous(), recv_splits, send_splits, group=group)
    return recv


# torch >= 2.13 renames all_gather_into_tensor to all_gather_single (the old name warns).
_all_gather_single = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


# --------------------------------------------------------------------------------------------
# DDP / replicated
# --------------------------------------------------------------------------------------------


def orthogonalize_replicated(
    updates: Sequence[Tensor],
    *,
    group: dist.ProcessGroup | None = None,
    steps: int = 5,
    coefficients: str | Sequence[Sequence[float]] = "quintic",
    dtype: torch.dtype | None = None,
    method: str = "standard",
    orthogonalize: Orthogonalize | None = None,
) -> list[Tensor]:
    """Orthogonalize updates that are identical on every rank (DDP), each rank doing ~1/W of them.

    Each matrix is orthogonalized by its owner (:func:`assign_owners`); one ``all_gather`` per dtype
    then gives every rank every result. Each rank's contribution is padded to the largest one because
    gloo's ``all_gather`` needs equal sizes.

    Args:
        updates: plain ``[..., m, n]`` tensors, the same values on every rank of ``group``.
        group: the process group (default: the world). With one rank this is a local call.
        steps, coefficients, dtype, method, orthogonalize: as in :func:`orthogonalize_dtensors`.
    """
    orth = orthogonalize or _default_orthogonalize(steps, coefficients, dtype, method)
    for i, u in enumerate(updates):
        if isinstance(u, DTensor):
            raise TypeError(f"updates[{i}] is a DTensor; use orthogonalize_dtensors for DTensors")
        if u.ndim < 2:
            raise ValueError(f"updates[{i}] must have at least 2 dims, got shape {tuple(u.shape)}")
    if not updates:
        return []
    world = dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1
    if world == 1:
        return list(orth(list(updates)))
    rank = dist.get_rank(group)
    owners = assign_owners([_cost(u.shape) for u in updates], world)
    results: list[Tensor | None] = [None] * len(updates)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, u in enumerate(updates):
        by_dtype.setdefault(u.dtype, []).append(i)
    for dtype_, idx in by_dtype.items():
        owned = [i for i in idx if owners[i] == rank]
        mine = orth([updates[i] for i in owned]) if owned else []
        totals = [sum(updates[i].numel() for i in idx if owners[i] == j) for j in range(world)]
        width = max(totals)
        device = updates[idx[0]].device
        send = torch.zeros(width, dtype=dtype_, device=device)
        if mine:
            send[: totals[rank]] = torch.cat([m.reshape(-1).to(dtype_) for m in mine])
        gathered = torch.empty(world * width, dtype=dtype_, device=device)
        _all_gather_single(gathered, send, group=group)
        for j in range(world):
            offset = j * width
            for i in idx:
                if owners[i] == j:
                    n = updates[i].numel()
                    results[i] = gathered[offset : offset + n].view(updates[i].shape)
                    offset += n
    return results  # type: ignore[return-value]
