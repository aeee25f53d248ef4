"""Newton–Schulz of a list of update matrices, one batched call per shape.

Muon orthogonalizes many matrices per step, often of a few shapes only (a GPT's qkv, proj, mlp-in and
mlp-out). :func:`orthogonalize_updates` transposes tall matrices to the wide orientation (so 2048×512
and 512×2048 share a batch), stacks same-shaped matrices and calls
:func:`optimizers.newton_schulz.newton_schulz` once per stack. It works on plain local tensors; the
sharded and replicated cases (FSDP2, DDP) are :mod:`optimizers.distributed`, which calls this function
on the whole matrices each rank owns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from .newton_schulz import default_ns_dtype, newton_schulz

__all__ = ["Orthogonalize", "coefficients_key", "orthogonalize_updates", "resolve_method"]

Orthogonalize = Callable[[list[Tensor]], list[Tensor]]
"""Maps a list of whole (plain, local) ``[..., m, n]`` matrices to their orthogonalized matrices."""


def orthogonalize_updates(
    updates: Sequence[Tensor],
    *,
    steps: int,
    coefficients: str | Sequence[Sequence[float]],
    dtype: torch.dtype | None,
    method: Literal["standard", "gram", "auto"] = "standard",
) -> list[Tensor]:
    """Newton–Schulz of every update, batching same-shaped matrices into one call.

    Each update is a plain matrix ``[m, n]`` or a batch ``[k, m, n]``; updates are read, never modified.
    Results are in the compute dtype (``dtype``, or bf16 on CUDA / fp32 elsewhere), one per update, in
    order. ``method`` picks the Newton–Schulz variant (see :func:`optimizers.newton_schulz`); ``"auto"``
    uses ``"gram"`` where :func:`resolve_method` says so. Sharded (DTensor) updates go through
    :func:`optimizers.distributed.orthogonalize_dtensors`.
    """
    wide: list[Tensor] = []
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for i, u in enumerate(updates):
        if _is_dtensor(u):
            raise TypeError(
                f"updates[{i}] is a DTensor; orthogonalize sharded updates with "
                "optimizers.distributed.orthogonalize_dtensors"
            )
        if u.ndim not in (2, 3):
            raise ValueError(f"updates[{i}] must be [m, n] or [k, m, n], got shape {tuple(u.shape)}")
        w = u.mT if u.shape[-2] > u.shape[-1] else u
        wide.append(w)
        buckets.setdefault((tuple(w.shape[-2:]), u.device, u.dtype), []).append(i)

    out: list[Tensor | None] = [None] * len(updates)
    for (mn, _, _), idx in buckets.items():
        pieces3d = [wide[i].reshape(-1, *mn) for i in idx]
        batch = pieces3d[0] if len(idx) == 1 else torch.cat(pieces3d)
        # A fresh stack is ours, so NS may normalize it in place; a lone update is read only.
        result = newton_schulz(
            batch, steps=steps, coefficients=coefficients, dtype=dtype,
            method=resolve_method(method, mn, batch.device, dtype), _overwrite_input=len(idx) > 1,  # type: ignore[arg-type]
        )
        pieces = [result] if len(idx) == 1 else list(result.split([p.shape[0] for p in pieces3d]))
        for i, piece in zip(idx, pieces):
            piece = piece.reshape(wide[i].shape)
            out[i] = piece.mT if updates[i].shape[-2] > updates[i].shape[-1] else piece
    return out  # type: ignore[return-value]


def resolve_method(method: str, mn: tuple[int, ...], device: torch.device, dtype: torch.dtype | None) -> str:
    """``"auto"`` → ``"gram"`` for a wide m×n (m ≤ n) with n ≥ 2·m computed in fp32/fp64, else ``"standard"``.

    Other methods are returned unchanged. The Gram variant rounds more (see
    :func:`optimizers.newton_schulz`), so it is never chosen for a low-precision compute dtype.
    """
    if method != "auto":
        return method
    compute = default_ns_dtype(device) if dtype is None else dtype
    m, n = mn
    return "gram" if compute in (torch.float32, torch.float64) and n >= 2 * m else "standard"


def coefficients_key(coefficients: str | Sequence[Sequence[float]]) -> str | tuple[tuple[float, ...], ...]:
    """A hashable form of a ``coefficients`` value, so updates with equal schedules share one call."""
    if isinstance(coefficients, str):
        return coefficients
    return tuple(tuple(float(v) for v in abc) for abc in coefficients)


def _is_dtensor(t: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
