"""The effective-weight formula of learnable multipliers, as pure functions.

A matrix layer with learnable multipliers computes with

    W_eff = f · s · diag(r) · W · diag(c)

where ``s`` is a learnable scalar, ``r`` a learnable per-output-row vector, ``c`` a learnable
per-input-column vector and ``f`` a fixed (non-learnable) Python float such as the muP output
factor 1/m (Velikanov et al., "Learnable Multipliers", arXiv 2601.04890, eqs. 2-3). Any of
``s``, ``r``, ``c`` may be absent (``None``), which means 1.

The raw weight ``W`` may store its output and input dimensions on any axes (``nn.Linear``:
rows 0, columns 1; ``nn.ConvTranspose*`` and Hugging Face ``Conv1D``: rows 1, columns 0;
convolutions carry extra kernel axes that the multipliers broadcast over).

Two ways to compute the same layer output, with different costs per call:

* weight side: build ``W_eff`` (O(m·n) element-wise work), then the usual matmul;
* activation side (``nn.Linear`` only): ``y = f·s·r ⊙ (W (c ⊙ x)) + b``, O(tokens·(m+n)).

:func:`prefers_activation_side` picks the cheaper one from the shapes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "effective_weight",
    "linear_activation_side",
    "embedding_activation_side",
    "prefers_activation_side",
]


def _along(v: Tensor, dim: int, ndim: int, batch_dim: int | None = None) -> Tensor:
    """View ``v`` so that it broadcasts along axis ``dim`` of an ``ndim``-D tensor.

    ``v`` is 1-D, or 2-D ``[batch, size]`` when ``batch_dim`` is set (one vector per matrix).
    """
    shape = [1] * ndim
    if batch_dim is None:
        shape[dim] = v.shape[-1]
        return v.reshape(shape)
    shape[batch_dim] = v.shape[0]
    shape[dim] = v.shape[-1]
    if batch_dim > dim:
        v = v.mT
    return v.reshape(shape)


def effective_weight(
    weight: Tensor,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    row_dim: int = 0,
    col_dim: int = 1,
    batch_dim: int | None = None,
    fixed: float = 1.0,
) -> Tensor:
    """Return ``W_eff = fixed · s · diag(r) · W · diag(c)``.

    Args:
        weight: the raw weight ``W``; ``weight.shape[row_dim]`` is the number of output rows
            ``m`` and ``weight.shape[col_dim]`` the number of input columns ``n``.
        scalar: ``s``, shape ``(1,)`` or ``()``; ``None`` means 1.
        row: ``r``, shape ``(m,)``; ``None`` means all ones.
        col: ``c``, shape ``(n,)``; ``None`` means all ones.
        row_dim: axis of ``weight`` indexed by ``r`` (default 0, as ``nn.Linear``).
        col_dim: axis of ``weight`` indexed by ``c`` (default 1, as ``nn.Linear``).
        batch_dim: axis of independent matrices (stacked experts ``[E, m, n]``), or ``None``;
            when set, ``s`` is ``(E,)``, ``r`` ``(E, m)`` and ``c`` ``(E, n)``.
        fixed: a constant factor (e.g. the muP output multiplier 1/m); default 1.

    The scalar factors are folded into the smaller of the two vectors first, so at most two
    full-size element-wise products are made. With everything absent the raw ``weight`` itself
    is returned (no copy), which keeps an untouched layer bit-for-bit the plain layer.
    """
    ndim = weight.ndim
    bdim = None if batch_dim is None else batch_dim % ndim
    # Fold the scalar factors (s and the constant) into the smaller vector, never into W.
    if row is not None and (col is None or row.shape[-1] <= col.shape[-1]):
        row = _absorb(row, scalar, fixed)
    elif col is not None:
        col = _absorb(col, scalar, fixed)
    # Plain autograd: a custom autograd.Function with the eq. 4 backward was measured slower on
    # the reference GPT (its Python overhead per call outweighs the saved element-wise passes).
    out = weight
    if row is not None:
        out = out * _along(row, row_dim % ndim, ndim, bdim)
    if col is not None:
        out = out * _along(col, col_dim % ndim, ndim, bdim)
    if row is None and col is None:
        if scalar is not None:
            out = out * (scalar.reshape([1] * ndim) if bdim is None else _along(scalar, bdim, ndim))
        if fixed != 1.0:
            out = out * fixed
    return out


def _absorb(v: Tensor, scalar: Tensor | None, fixed: float) -> Tensor:
    """Return ``v · s · fixed`` (cheap: ``v`` is a vector, or one vector per batched matrix)."""
    if scalar is not None:
        v = v * (scalar.reshape(-1) if v.ndim == 1 else scalar.reshape(-1, 1))
    if fixed != 1.0:
        v = v * fixed
    return v


def linear_activation_side(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    fixed: float = 1.0,
) -> Tensor:
    """``nn.Linear`` with multipliers applied to activations: ``y = fixed·s·r ⊙ (W (c ⊙ x)) + b``.

    Equal to ``F.linear(x, effective_weight(weight, scalar, row, col, fixed=fixed), bias)`` up to
    rounding; costs O(tokens·(m+n)) element-wise work instead of O(m·n).
    """
    if col is not None:
        x = x * col
    y = F.linear(x, weight)
    out_scale: Tensor | None = row
    if scalar is not None:
        out_scale = out_scale * scalar if out_scale is not None else scalar
    if out_scale is not None:
        if fixed != 1.0:
            out_scale = out_scale * fixed
        y = y * out_scale
    elif fixed != 1.0:
        y = y * fixed
    if bias is not None:
        y = y + bias
    return y


def embedding_activation_side(
    y: Tensor,
    indices: Tensor,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    fixed: float = 1.0,
) -> Tensor:
    """Scale looked-up embedding rows ``y = W[indices]`` into ``W_eff[indices]``.

    ``W_eff[i] = fixed · s · r[i] · W[i] ⊙ c``: the row multiplier is gathered per token, so the
    cost is O(tokens·d) rather than the O(vocab·d) of building ``W_eff``.
    """
    if row is not None:
        r = F.embedding(indices, row.unsqueeze(-1))  # (..., 1), gathered per token
        if scalar is not None:
            r = r * scalar
        y = y * r
    elif scalar is not None:
        y = y * scalar
    if col is not None:
        y = y * col
    if fixed != 1.0:
        y = y * fixed
    return y


def prefers_activation_side(tokens: int, rows: int, cols: int) -> bool:
    """True when scaling activations is cheaper than building ``W_eff``.

    Element-wise work per call: activation side ``tokens·(rows + cols)``, weight side
    ``rows·cols``. Language-model micro-batches have ``tokens ≫ width``, so training normally
    takes the weight side; single-token decoding takes the activation side.
    """
    return tokens * (rows + cols) < rows * cols
