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

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "effective_weight",
    "effective_weight_grads",
    "absorbed_factors",
    "apply_factors",
    "grads_from_factors",
    "check_multipliers",
    "multipliers_fit",
    "linear_activation_side",
    "embedding_activation_side",
    "prefers_activation_side",
]


def _along(v: Tensor, dim: int, ndim: int, batch_dim: int | None = None) -> Tensor:
    """View ``v`` so that it broadcasts along axis ``dim`` of an ``ndim``-D tensor.

    ``v`` is 1-D, or 2-D ``[batch, size]`` when ``batch_dim`` is set (one vector per matrix).
    """
    if batch_dim is None:
        if dim == ndim - 1:
            return v  # a 1-D tensor already broadcasts along the last axis
        if ndim == 2:
            return v.unsqueeze(1)
        shape = [1] * ndim
        shape[dim] = v.shape[-1]
        return v.reshape(shape)
    shape = [1] * ndim
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
    return apply_factors(weight, absorbed_factors(scalar, row, col, fixed), row_dim % ndim, col_dim % ndim, bdim, in_place=False)


#: ``(row, col, scalar, fixed)`` of :func:`absorbed_factors`.
Factors = tuple[Tensor | None, Tensor | None, Tensor | None, float]


def absorbed_factors(scalar: Tensor | None, row: Tensor | None, col: Tensor | None, fixed: float = 1.0) -> Factors:
    """``(row', col', scalar', fixed')``: the same ``W_eff``, with ``f·s`` folded into the shorter vector.

    ``W_eff = fixed'·s'·diag(row')·W·diag(col')``, where at most one of ``row'``/``col'`` carries
    ``f·s`` (``row'`` on a tie), and ``scalar'``/``fixed'`` are left (``None``/1) only when there
    is no vector to fold them into. The fused backwards make them once and use them for both
    weight-sized products they need (the ``W_eff`` rebuild and ``∂W``).
    """
    plain = scalar is None and fixed == 1.0  # nothing to fold: the vectors as they are
    if row is not None and (col is None or row.shape[-1] <= col.shape[-1]):
        return row if plain else _absorb(row, scalar, fixed), col, None, 1.0
    if col is not None:
        return row, col if plain else _absorb(col, scalar, fixed), None, 1.0
    return None, None, scalar, fixed


def apply_factors(t: Tensor, factors: Factors, rd: int, cd: int, bdim: int | None, *, in_place: bool) -> Tensor:
    """``f·s·diag(r)·t·diag(c)`` from :func:`absorbed_factors` (axes already normalized).

    When autograd is not recording (inside the fused ops' forward and backward), every product
    after the first is done in place on the fresh tensor the first one made, and with
    ``in_place`` the first one too (``t`` is overwritten): fewer weight-sized allocations, which
    on CPU also spares their page faults. Runs once per layer call, so it is kept free of
    per-call Python overhead (no closures, no shape lists on the 2-D path).
    """
    row, col, scalar, fixed = factors
    ndim = t.ndim
    first: Tensor | float | None = None
    second: Tensor | float | None = None
    if ndim == 2 and bdim is None and (row is not None or col is not None):
        # A plain matrix (every Linear): the vector on axis 1 broadcasts as it is, the one on
        # axis 0 as a column; the same views _along makes, without its calls.
        if row is not None:
            first = row if rd == 1 else row.unsqueeze(1)
        if col is not None:
            vc = col if cd == 1 else col.unsqueeze(1)
            first, second = (vc, None) if first is None else (first, vc)
    elif row is not None:
        first = _along(row, rd, ndim, bdim)
        if col is not None:
            second = _along(col, cd, ndim, bdim)
    elif col is not None:
        first = _along(col, cd, ndim, bdim)
    else:
        if scalar is not None:
            first = scalar.reshape([1] * ndim) if bdim is None else _along(scalar, bdim, ndim)
        if fixed != 1.0:
            if first is None:
                first = fixed
            else:
                second = fixed
    if first is None:
        return t
    if torch.is_grad_enabled():  # autograd records these products: no in-place writes
        out = t * first
        return out if second is None else out * second
    out = t.mul_(first) if in_place else t * first
    return out if second is None else out.mul_(second)


def effective_weight_grads(
    weight: Tensor,
    grad: Tensor,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    row_dim: int = 0,
    col_dim: int = 1,
    batch_dim: int | None = None,
    fixed: float = 1.0,
    needs: tuple[bool, bool, bool, bool] = (True, True, True, True),
    overwrite_grad: bool = False,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """Gradients of a loss through ``W_eff = f·s·diag(r)·W·diag(c)`` (paper eq. 4).

    Given ``G = ∂L/∂W_eff`` (``grad``, shaped like ``weight``), with ``P = W ⊙ G``::

        ∂L/∂W = f·s·(r cᵀ) ⊙ G          (the same map as W → W_eff, applied to G)
        ∂L/∂r = f·s·P c                  (sum over every axis but the row axis)
        ∂L/∂c = f·s·Pᵀ r                 (sum over every axis but the column axis)
        ∂L/∂s = f·rᵀ P c                 (one number per matrix)

    Absent multipliers count as 1 and get no gradient. Kernel axes (conv) are summed like
    columns; with ``batch_dim`` set every stacked matrix gets its own ``s``, ``r``, ``c`` and the
    sums stay per matrix. ``needs`` says which of ``(∂W, ∂s, ∂r, ∂c)`` to compute (``None`` for
    the others). ``overwrite_grad`` (default False): ``grad`` is the caller's own temporary, and
    when autograd is not recording ``∂W`` is written into it. The only weight-sized temporaries
    are ``P`` and (unless written into ``grad``) ``∂W``; the sums are ``einsum`` contractions,
    which make no further weight-sized tensor.

    Returns ``(∂W, ∂s, ∂r, ∂c)`` in the shapes of ``weight``, ``scalar``, ``row``, ``col``.
    """
    ndim = weight.ndim
    bdim = None if batch_dim is None else batch_dim % ndim
    factors = absorbed_factors(scalar, row, col, fixed)
    return grads_from_factors(weight, grad, scalar, row, col, factors, row_dim % ndim, col_dim % ndim, bdim, fixed, needs, overwrite_grad)


def grads_from_factors(
    weight: Tensor, grad: Tensor, scalar: Tensor | None, row: Tensor | None, col: Tensor | None, factors: Factors,
    rd: int, cd: int, bdim: int | None, fixed: float, needs: tuple[bool, bool, bool, bool], overwrite_grad: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None, Tensor | None]:
    """:func:`effective_weight_grads` with the axes normalized and :func:`absorbed_factors` given.

    The fused ops call it with the factors their backward already made for rebuilding ``W_eff``;
    ``∂W`` reuses them.
    """
    need_w, need_s, need_r, need_c = needs
    need_s, need_r, need_c = need_s and scalar is not None, need_r and row is not None, need_c and col is not None
    gs, gr, gc = _multiplier_grads(weight, grad, scalar, row, col, rd, cd, bdim, fixed, need_s, need_r, need_c)
    # ∂W after the sums, which read ``grad``: with ``overwrite_grad`` it is written into ``grad``.
    gw = apply_factors(grad, factors, rd, cd, bdim, in_place=overwrite_grad) if need_w else None
    return gw, gs, gr, gc


def _multiplier_grads(
    weight: Tensor, grad: Tensor, scalar: Tensor | None, row: Tensor | None, col: Tensor | None,
    rd: int, cd: int, bdim: int | None, fixed: float, need_s: bool, need_r: bool, need_c: bool,
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """``(∂s, ∂r, ∂c)`` of :func:`effective_weight_grads` from one product ``P = W ⊙ G``.

    The sums contract ``P`` with the raw ``r``/``c`` and scale by ``f·s`` afterwards, not with the
    folded vectors of :func:`absorbed_factors` (which would save one vector product). Compiled
    with ``aot_eager``, a fold that the forward also makes and that a matrix-vector product reads
    was kept alive from forward to backward (one vector per layer); read only by element-wise
    products, as here, it is recomputed, and the compiled layer keeps exactly what a plain one
    keeps (``tests/parametrization/test_fused_layers.py``).
    """
    if not (need_s or need_r or need_c):
        return None, None, None
    p = weight * grad
    # fs: f·s, shaped to scale one vector per matrix ([m] or [E, m]); None is 1.
    fs: Tensor | float | None = None if fixed == 1.0 else fixed
    if scalar is not None:
        fs = scalar.reshape(()) if bdim is None else scalar.reshape(-1, 1)
        if fixed != 1.0:
            fs = fs * fixed
    gs = gr = gc = u = None
    matrix = p.ndim == 2 and bdim is None  # P's rows and columns are the two axes (see _contract)
    if need_r or (need_s and row is not None):
        # u = P c (or P summed over the non-row axes)
        if matrix and col is not None:
            u = (p if rd == 0 else p.mT).mv(col)
        else:
            u = _contract(p, col, rd, cd, bdim)
        if need_r:
            gr = u if fs is None else u * fs
    if need_c:
        # v = Pᵀ r (or P summed over the non-column axes)
        v = (p if cd == 0 else p.mT).mv(row) if matrix and row is not None else _contract(p, row, cd, rd, bdim)
        gc = v if fs is None else v * fs
    if need_s:
        if u is not None:
            total = _dot(row, u, bdim)  # type: ignore[arg-type]
        elif col is not None:
            total = _dot(col, _contract(p, None, cd, rd, bdim), bdim)
        else:
            total = p.sum() if bdim is None else p.sum(dim=[d for d in range(p.ndim) if d != bdim])
        gs = (total if fixed == 1.0 else total * fixed).reshape(scalar.shape)  # type: ignore[union-attr]
    return gs, gr, gc


def _contract(p: Tensor, vec: Tensor | None, keep_dim: int, vec_dim: int, bdim: int | None) -> Tensor:
    """``P`` contracted with ``vec`` along ``vec_dim`` and summed over every axis but ``keep_dim``
    (and the batch axis): ``P c`` for ``keep_dim`` the row axis. ``vec=None`` is all ones."""
    ndim = p.ndim
    if ndim == 2 and bdim is None:
        # A plain matrix takes a matrix-vector product (P or its transpose view): the same
        # contraction as the einsum below, without its per-call parsing.
        rows = p if keep_dim == 0 else p.mT
        return rows.mv(vec) if vec is not None else rows.sum(1)
    letters = "abcdefghijklmnop"[:ndim]
    b = "" if bdim is None else letters[bdim]
    out = b + letters[keep_dim]
    if vec is None:
        return torch.einsum(f"{letters}->{out}", p)
    return torch.einsum(f"{letters},{b + letters[vec_dim]}->{out}", p, vec)


def _dot(vec: Tensor, other: Tensor, bdim: int | None) -> Tensor:
    """``vecᵀ other`` (one number per matrix with a batch axis)."""
    return vec.dot(other) if bdim is None else (vec * other).sum(-1)


def multipliers_fit(
    weight: Tensor, scalar: Tensor | None, row: Tensor | None, col: Tensor | None,
    row_dim: int = 0, col_dim: int = 1, batch_dim: int | None = None,
) -> bool:
    """True when :func:`check_multipliers` would pass; cheap enough to run on every forward."""
    dtype, device, shape = weight.dtype, weight.device, weight.shape
    if batch_dim is None:
        lead: tuple[int, ...] = ()
        if scalar is not None and (scalar.ndim > 1 or scalar.numel() != 1 or scalar.dtype != dtype or scalar.device != device):
            return False
    else:
        lead = (shape[batch_dim],)
        if scalar is not None and (scalar.shape != lead or scalar.dtype != dtype or scalar.device != device):
            return False
    if row is not None and (row.shape != lead + (shape[row_dim],) or row.dtype != dtype or row.device != device):
        return False
    return col is None or (col.shape == lead + (shape[col_dim],) and col.dtype == dtype and col.device == device)


def check_multipliers(
    weight: Tensor,
    scalar: Tensor | None,
    row: Tensor | None,
    col: Tensor | None,
    *,
    row_dim: int = 0,
    col_dim: int = 1,
    batch_dim: int | None = None,
    where: str = "layer",
) -> None:
    """Raise unless ``s``, ``r``, ``c`` have the shapes, dtype and device ``weight`` needs.

    Broadcasting would otherwise turn a wrong shape (say ``r`` of shape ``(1,)``) into a wrong
    result without an error, and a wrong dtype into a silently promoted ``W_eff``.
    Shapes: ``s`` ``(1,)`` or ``()``, ``r`` ``(m,)``, ``c`` ``(n,)``; with a batch axis of size
    ``E``: ``(E,)``, ``(E, m)``, ``(E, n)``.
    """
    ndim = weight.ndim
    m, n = weight.shape[row_dim % ndim], weight.shape[col_dim % ndim]
    lead: tuple[int, ...] = () if batch_dim is None else (weight.shape[batch_dim % ndim],)
    expected = {"scalar": (lead or (1,), (scalar, "s")), "row": (lead + (m,), (row, "r")), "col": (lead + (n,), (col, "c"))}
    for name, (shape, (t, letter)) in expected.items():
        if t is None:
            continue
        ok_shape = tuple(t.shape) == shape or (name == "scalar" and batch_dim is None and t.numel() == 1 and t.ndim <= 1)
        if not ok_shape:
            raise ValueError(
                f"{where}: the {name} multiplier {letter} has shape {tuple(t.shape)}, but a weight of shape "
                f"{tuple(weight.shape)} (rows on axis {row_dim}, columns on axis {col_dim}"
                f"{'' if batch_dim is None else f', matrices on axis {batch_dim}'}) needs {shape}; "
                f"re-create it with torch.ones({shape}) or parametrize the layer again"
            )
        if t.dtype != weight.dtype:
            raise TypeError(
                f"{where}: the {name} multiplier {letter} is {t.dtype} but the weight is {weight.dtype}; "
                f"convert the module as a whole (module.to({weight.dtype})) so both have one dtype"
            )
        if t.device != weight.device:
            raise ValueError(
                f"{where}: the {name} multiplier {letter} is on {t.device} but the weight is on {weight.device}; "
                f"move the module as a whole (module.to(device)) so both are on one device"
            )


def _absorb(v: Tensor, scalar: Tensor | None, fixed: float) -> Tensor:
    """Return ``v · s · fixed`` (cheap: ``v`` is a vector, or one vector per batched matrix)."""
    if scalar is not None:
        # s is (1,) or () against a vector, (E,) against one vector per matrix [E, m].
        v = v * scalar if v.ndim == 1 else v * scalar.reshape(-1, 1)
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
