"""Fused multiplier layers: ``W_eff = f·s·diag(r)·W·diag(c)`` is built, used, and dropped.

Written with plain tensor ops, a multiplied layer keeps a weight-sized copy of ``W_eff`` (and of
``r·W``) alive from forward to backward; under FSDP2 that is an unsharded copy of every layer's
weight. The ``torch.autograd.Function``s here save only what the plain layer saves (its input and
``W``) plus the 1-D multipliers, build ``W_eff`` transiently in forward, recompute it in backward
where ``∂x`` needs it, and return the paper's eq. 4 gradients (Velikanov et al., arXiv 2601.04890)
through :func:`~parametrization.effective_weight.effective_weight_grads`. With ``G = ∂L/∂W_eff``
of the plain layer (``gᵀx`` for a linear layer)::

    ∂W = f·s·(r cᵀ) ⊙ G     ∂r = f·s·(W ⊙ G) c     ∂c = f·s·(W ⊙ G)ᵀ r     ∂s = f·rᵀ(W ⊙ G) c

and ``∂x``, ``∂b`` as the plain layer computes them with ``W_eff``.

This is the paper's "option A" (multipliers inside the layer). "Option B" (merge ``W_eff`` in the
forward and backward, apply eq. 4 at the optimizer) would need the optimizer to know the
multipliers; option A keeps ``optimizers`` independent of ``parametrization`` and costs no more
memory than a plain layer, so it is the one built.

``torch.compile`` traces these Functions (dynamo inlines ``autograd.Function``; no graph break).
Under autocast they cast the input, ``W_eff`` and bias to the autocast dtype themselves and save
the cast input, as the plain autocast layer does; the eq. 4 sums run in the weight's dtype.

Ops:

* :func:`multiplied_linear` — ``y = x W_effᵀ + b`` (``nn.Linear``; Hugging Face ``Conv1D`` passes
  ``W.T``). ``activation_side=True`` computes ``y = f·s·r ⊙ (W (c ⊙ x)) + b`` instead (cheaper
  for few tokens); both save the same tensors.
* :func:`multiplied_conv` — ``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d`` through
  ``torch.convolution`` and ``aten.convolution_backward``.
* :func:`multiplied_embedding` — gathers rows of ``W_eff`` (or scales gathered rows of ``W``).
* :func:`multiplied_weight` — ``W_eff`` itself, for layers whose forward is the model's own code
  (stacked experts, subclasses): saves only ``W, s, r, c`` (not ``r·W``) and recomputes.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import compiled_linear
from .effective_weight import Factors, absorbed_factors, apply_factors, effective_weight, grads_from_factors

__all__ = ["multiplied_linear", "multiplied_conv", "multiplied_embedding", "multiplied_weight"]


# ``torch.autograd.Function.apply`` is a Python wrapper around this C entry point. In eager mode,
# outside functorch transforms, the wrapper's only work is a pytree pass over the arguments that
# unwraps dead functorch wrappers (tensors leaked out of a finished ``vmap``/``grad``; the ops give
# them the same values and gradients either way, tested). That pass measured 13 µs of a 16×16
# layer's ~50 µs forward on the 2-core reference CPU, paid once per multiplied layer per forward.
# ``None`` if a torch build drops the entry point: then every call takes ``Function.apply``.
_FUNCTION_APPLY = getattr(getattr(torch._C, "_FunctionBase", None), "__dict__", {}).get("apply")


def _plain_eager() -> bool:
    """Neither ``torch.compile`` tracing (dynamo must see ``Function.apply`` to trace a Function)
    nor a functorch transform (which needs its wrapper): C entry points may be called directly."""
    return not torch.compiler.is_compiling() and not torch._C._are_functorch_transforms_active()


def _apply(fn: type[torch.autograd.Function], *args: Any) -> Any:
    """``fn.apply(*args)``; in plain eager mode straight through the C entry point.

    Outside :func:`_plain_eager` it is ``fn.apply`` itself; both paths run the same ``forward``.
    """
    if _FUNCTION_APPLY is None or not _plain_eager():
        return fn.apply(*args)
    return _FUNCTION_APPLY(fn, *args)


def _autocast_dtype(x: Tensor) -> torch.dtype | None:
    """The dtype autocast would run a matmul/conv of ``x`` in, or ``None`` (float64 is never cast)."""
    dev = x.device.type
    if x.dtype == torch.float64 or not x.is_floating_point() or not torch.is_autocast_enabled(dev):
        return None
    return torch.get_autocast_dtype(dev)


def _cast(t: Tensor | None, dtype: torch.dtype | None) -> Tensor | None:
    return t if t is None or dtype is None or t.dtype == dtype else t.to(dtype)


def _row_scale(scalar: Tensor | None, row: Tensor | None, fixed: float) -> Tensor | float:
    """``f·s·r`` as a vector, or ``f·s`` / ``f`` when there is no ``r`` (the output-side factor)."""
    out: Tensor | float = fixed
    if row is not None:
        out = row * fixed if fixed != 1.0 else row
    if scalar is not None:
        out = scalar.reshape(()) * out
    return out


def _rebuilt_effective_weight(w: Tensor, factors: Factors, row_dim: int = 0, col_dim: int = 1) -> Tensor:
    """``W_eff`` again, in backward, for ``∂x``: the same values as the forward's, another expression.

    Under ``torch.compile``, AOTAutograd traces forward and backward into one graph and merges
    identical expressions (CSE). The backward's rebuild, written exactly like the forward's,
    became the forward's ``W_eff``, which the partitioner then kept alive for backward: one
    weight-sized tensor per layer, the memory this op exists to save (28 extra tensors on the
    reference GPT ``small``). Built on the view with the row and column axes swapped, the same
    products in the same order give bitwise the same values but a distinct graph, recomputed from
    the parameters. In eager mode the transposes are free views. ``factors``:
    :func:`~parametrization.effective_weight.absorbed_factors`, shared with ``∂W``.
    """
    return apply_factors(w.transpose(row_dim, col_dim), factors, col_dim, row_dim, None, in_place=False).transpose(row_dim, col_dim)


def _eq4(ctx: Any, w: Tensor, grad_eff: Tensor, s: Tensor | None, r: Tensor | None, c: Tensor | None, needs: tuple[bool, ...], factors: Factors | None = None, *, own: bool = True, row_dim: int = 0, col_dim: int = 1, batch_dim: int | None = None) -> tuple[Tensor | None, ...]:
    """Eq. 4 from ``grad_eff``; ``own``: it is a temporary of this backward, so ``∂W`` may reuse it.
    ``factors``: the backward's :func:`~parametrization.effective_weight.absorbed_factors`, if made."""
    need_w, need_s, need_r, need_c = needs
    if not (need_w or need_s or need_r or need_c):
        return None, None, None, None
    g = grad_eff
    if g.dtype != w.dtype:
        g, own = g.to(w.dtype), True
    if factors is None:
        factors = absorbed_factors(s, r, c, ctx.fixed)
    ndim = w.ndim
    bdim = None if batch_dim is None else batch_dim % ndim
    return grads_from_factors(w, g, s, r, c, factors, row_dim % ndim, col_dim % ndim, bdim, ctx.fixed, (need_w, need_s, need_r, need_c), own)


# --------------------------------------------------------------------------- linear


def _linear_forward(x: Tensor, w: Tensor, b: Tensor | None, s: Tensor | None, r: Tensor | None, c: Tensor | None, fixed: float, activation_side: bool) -> tuple[Tensor, Tensor]:
    """``(y, x as cast by autocast)`` of :func:`multiplied_linear`, without autograd."""
    dtype = _autocast_dtype(x)
    if dtype is None and not activation_side:  # the common case, with no cast to make
        return F.linear(x, apply_factors(w, absorbed_factors(s, r, c, fixed), 0, 1, None, in_place=False), b), x
    xc = _cast(x, dtype)
    if activation_side:
        xs = xc * _cast(c, xc.dtype) if c is not None else xc
        y = F.linear(xs, _cast(w, xc.dtype))
        scale = _row_scale(s, r, fixed)
        y = y * (_cast(scale, y.dtype) if isinstance(scale, Tensor) else scale)
        if b is not None:
            y = y + _cast(b, y.dtype)
    else:
        w_eff = effective_weight(w, s, r, c, fixed=fixed)
        y = F.linear(xc, _cast(w_eff, xc.dtype), _cast(b, xc.dtype))
    return y, xc  # type: ignore[return-value]


class _LinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, s: Tensor | None, r: Tensor | None, c: Tensor | None, fixed: float, activation_side: bool) -> Tensor:  # type: ignore[override]
        y, xc = _linear_forward(x, w, b, s, r, c, fixed, activation_side)
        ctx.save_for_backward(xc, w, s, r, c)
        ctx.fixed, ctx.activation_side = fixed, activation_side
        ctx.x_dtype = x.dtype
        ctx.b_dtype = None if b is None else b.dtype
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xc, w, s, r, c = ctx.saved_tensors
        need_x, need_w, need_b, need_s, need_r, need_c = ctx.needs_input_grad[:6]
        dtype = xc.dtype
        # One 2-D copy of the incoming gradient (it is often a non-contiguous view), used by
        # every product below, instead of one reshape per product. Without autocast every dtype
        # below already matches (the casts are written out: this runs once per layer call).
        gy2 = (gy if gy.dtype == dtype else gy.to(dtype)).reshape(-1, gy.shape[-1])
        dx = db = factors = None
        if need_x:
            if ctx.activation_side:
                scale = _row_scale(s, r, ctx.fixed)
                g = gy2 * (_cast(scale, dtype) if isinstance(scale, Tensor) else scale)
                dx = g @ _cast(w, dtype)
                if c is not None:
                    dx = dx * _cast(c, dtype)
            else:
                factors = absorbed_factors(s, r, c, ctx.fixed)
                w_eff = _rebuilt_effective_weight(w, factors)
                dx = gy2 @ (w_eff if w_eff.dtype == dtype else w_eff.to(dtype))
            dx = dx.view(*xc.shape[:-1], dx.shape[-1])
            if dx.dtype != ctx.x_dtype:
                dx = dx.to(ctx.x_dtype)
        if need_b:
            db = _cast(gy2.sum(0), ctx.b_dtype)
        if not (need_w or need_s or need_r or need_c):
            return dx, None, db, None, None, None, None, None
        grad_eff = gy2.mT @ xc.reshape(-1, xc.shape[-1])  # ∂L/∂W_eff of the plain layer
        gw, gs, gr, gc = _eq4(ctx, w, grad_eff, s, r, c, (need_w, need_s, need_r, need_c), factors)
        return dx, gw, db, gs, gr, gc, None, None


def multiplied_linear(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    fixed: float = 1.0,
    activation_side: bool = False,
) -> Tensor:
    """``F.linear(x, effective_weight(weight, scalar, row, col, fixed=fixed), bias)``, memory-lean.

    ``weight`` is ``(m, n)`` (``nn.Linear``; pass ``W.T`` for a weight stored ``(n, m)``),
    ``row`` ``(m,)``, ``col`` ``(n,)``, ``scalar`` ``(1,)``; any of them ``None`` means 1.
    Saves ``x`` (as cast by autocast), ``W`` and the multipliers; ``W_eff`` is rebuilt in backward
    only for ``∂x``. ``activation_side`` (default False) scales ``x`` and ``y`` instead of ``W``:
    O(tokens·(m+n)) instead of O(m·n) element-wise work, same result up to rounding. Eager
    weight-side calls without autocast run the C++ build of this op where it is available
    (:mod:`~parametrization.compiled_linear`; bitwise the same results).
    """
    if not activation_side:
        y = compiled_linear_call(x, weight, bias, scalar, row, col, fixed, 0, 0)
        if y is not None:
            return y
    return python_linear(x, weight, bias, scalar, row, col, fixed, activation_side)


def python_linear(x: Tensor, weight: Tensor, bias: Tensor | None, scalar: Tensor | None, row: Tensor | None, col: Tensor | None, fixed: float, activation_side: bool) -> Tensor:
    """:func:`multiplied_linear` through the Python op only (the C++ op declined or is off)."""
    if not torch.is_grad_enabled():  # inference: the same maths without the Function's per-call cost
        return _linear_forward(x, weight, bias, scalar, row, col, fixed, activation_side)[0]
    return _apply(_LinearFn, x, weight, bias, scalar, row, col, fixed, activation_side)


#: The C++ build of :class:`_LinearFn` (bitwise the same outputs and gradients; it returns
#: ``None`` for calls it does not serve), ``None`` for the Python op only, or, under the default
#: ``"auto"``, a stand-in that builds it on first call. Set by
#: :func:`parametrization.compiled_linear.use_compiled_linear`.
_compiled_linear: Any = compiled_linear.initial_op()
#: Tensor types the C++ op takes; subclasses (``DTensor``, fake tensors) keep the Python op.
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
#: ``Compute`` settings of a multiplied module as the C++ op's ``mode`` argument.
COMPUTE_MODES = {"weight": 0, "activation": 1, "auto": 2}


def compiled_linear_call(x: Tensor, weight: Tensor, bias: Tensor | None, scalar: Tensor | None, row: Tensor | None, col: Tensor | None, fixed: float, row_dim: int, mode: int) -> Tensor | None:
    """The multiplied Linear through the C++ op, or ``None`` when the Python op must serve the call.

    ``weight`` as stored (``row_dim`` 1: Hugging Face ``Conv1D``'s ``(in, out)``); ``mode``: a
    :data:`COMPUTE_MODES` value. Python decides what only Python can see (op switched off,
    ``torch.compile`` tracing, functorch, tensor subclasses); the op declines the rest (the
    activation side, autocast, multipliers that do not fit the weight).
    """
    if not _plain_eager():  # first: while dynamo traces, nothing below is read
        return None
    op = _compiled_linear
    if op is None or type(x) not in _PLAIN_TENSORS or type(weight) not in _PLAIN_TENSORS:
        return None
    return op(x, weight, bias, scalar, row, col, fixed, row_dim, mode)


# --------------------------------------------------------------------------- convolution


class _ConvFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: Tensor, w: Tensor, b: Tensor | None, s: Tensor | None, r: Tensor | None, c: Tensor | None, fixed: float, row_dim: int, col_dim: int, conv: tuple[Any, ...]) -> Tensor:  # type: ignore[override]
        dt = _autocast_dtype(x)
        xc = _cast(x, dt)
        w_eff = effective_weight(w, s, r, c, row_dim=row_dim, col_dim=col_dim, fixed=fixed)
        stride, padding, dilation, transposed, output_padding, groups = conv
        y = torch.convolution(xc, _cast(w_eff, xc.dtype), _cast(b, xc.dtype), stride, padding, dilation, transposed, output_padding, groups)
        ctx.save_for_backward(xc, w, s, r, c)
        ctx.fixed, ctx.row_dim, ctx.col_dim, ctx.conv = fixed, row_dim, col_dim, conv
        ctx.x_dtype = x.dtype
        ctx.b_dtype = None if b is None else b.dtype
        ctx.bias_sizes = None if b is None else list(b.shape)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        xc, w, s, r, c = ctx.saved_tensors
        need_x, need_w, need_b, need_s, need_r, need_c = ctx.needs_input_grad[:6]
        need_eff = need_w or need_s or need_r or need_c
        gy = gy.to(xc.dtype)
        # The weight-gradient half of convolution_backward reads only the weight's shape, so
        # W_eff is rebuilt only when ∂x needs it.
        factors = absorbed_factors(s, r, c, ctx.fixed) if need_x or need_eff else None
        w_used = _rebuilt_effective_weight(w, factors, ctx.row_dim, ctx.col_dim) if need_x else w
        stride, padding, dilation, transposed, output_padding, groups = ctx.conv
        dx, grad_eff, db = torch.ops.aten.convolution_backward(
            gy, xc, w_used.to(xc.dtype), ctx.bias_sizes, stride, padding, dilation, transposed, output_padding, groups,
            [need_x, need_eff, need_b],
        )
        dx = None if dx is None else dx.to(ctx.x_dtype)
        db = None if db is None else db.to(ctx.b_dtype)
        gw = gs = gr = gc = None
        if need_eff:
            gw, gs, gr, gc = _eq4(ctx, w, grad_eff, s, r, c, (need_w, need_s, need_r, need_c), factors, row_dim=ctx.row_dim, col_dim=ctx.col_dim)
        return dx, gw, db, gs, gr, gc, None, None, None, None


def multiplied_conv(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    fixed: float = 1.0,
    row_dim: int = 0,
    col_dim: int = 1,
    stride: tuple[int, ...] = (1,),
    padding: tuple[int, ...] = (0,),
    dilation: tuple[int, ...] = (1,),
    transposed: bool = False,
    output_padding: tuple[int, ...] = (0,),
    groups: int = 1,
) -> Tensor:
    """``torch.convolution(x, effective_weight(W, s, r, c), b, ...)``, memory-lean.

    Arguments after ``fixed`` are ``torch.convolution``'s, with explicit integer padding (the
    module wrapper resolves ``padding="same"`` and non-zero padding modes first). ``row_dim`` /
    ``col_dim``: the weight's output / input channel axes (0/1 for ``nn.Conv*``, 1/0 for
    ``nn.ConvTranspose*``). Saves ``x``, ``W`` and the multipliers.
    """
    conv = (list(stride), list(padding), list(dilation), transposed, list(output_padding), groups)
    return _apply(_ConvFn, x, weight, bias, scalar, row, col, fixed, row_dim, col_dim, conv)


# --------------------------------------------------------------------------- embedding


class _EmbeddingFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, idx: Tensor, w: Tensor, s: Tensor | None, r: Tensor | None, c: Tensor | None, fixed: float, padding_idx: int, scale_grad_by_freq: bool, activation_side: bool) -> Tensor:  # type: ignore[override]
        if activation_side:
            y = F.embedding(idx, w)
            scale = _row_scale(s, r, fixed)
            if isinstance(scale, Tensor) and scale.ndim == 1:
                scale = F.embedding(idx, scale.unsqueeze(-1))  # f·s·r gathered per token
            y = y * scale
            if c is not None:
                y = y * c
        else:
            y = F.embedding(idx, effective_weight(w, s, r, c, fixed=fixed))
        ctx.save_for_backward(idx, w, s, r, c)
        ctx.fixed, ctx.padding_idx, ctx.scale_grad_by_freq = fixed, padding_idx, scale_grad_by_freq
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        idx, w, s, r, c = ctx.saved_tensors
        _, need_w, need_s, need_r, need_c = ctx.needs_input_grad[:5]
        grads: tuple[Tensor | None, ...] = (None,) * 4
        if need_w or need_s or need_r or need_c:
            # The plain embedding's dense ∂L/∂W_eff (padding row zeroed, optional 1/frequency).
            grad_eff = torch.ops.aten.embedding_dense_backward(gy, idx, w.shape[0], ctx.padding_idx, ctx.scale_grad_by_freq)
            grads = _eq4(ctx, w, grad_eff, s, r, c, (need_w, need_s, need_r, need_c))
        gw, gs, gr, gc = grads
        return None, gw, gs, gr, gc, None, None, None, None


def multiplied_embedding(
    indices: Tensor,
    weight: Tensor,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    fixed: float = 1.0,
    padding_idx: int | None = None,
    scale_grad_by_freq: bool = False,
    activation_side: bool = True,
) -> Tensor:
    """``F.embedding(indices, effective_weight(W, s, r, c), padding_idx, ...)``, memory-lean.

    ``activation_side`` (default True) gathers rows of ``W`` and scales them
    (``W_eff[i] = f·s·r[i]·W[i] ⊙ c``, O(tokens·d)); False builds ``W_eff`` (O(vocab·d)).
    Saves only the indices, ``W`` and the multipliers. Dense gradients only (no ``sparse``,
    no ``max_norm``: the module wrapper keeps those on plain autograd).
    """
    pad = -1 if padding_idx is None else padding_idx % weight.shape[0]
    return _apply(_EmbeddingFn, indices, weight, scalar, row, col, fixed, pad, scale_grad_by_freq, activation_side)


# --------------------------------------------------------------------------- weight only


class _WeightFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, w: Tensor, s: Tensor | None, r: Tensor | None, c: Tensor | None, fixed: float, row_dim: int, col_dim: int, batch_dim: int | None) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(w, s, r, c)
        ctx.fixed, ctx.layout = fixed, dict(row_dim=row_dim, col_dim=col_dim, batch_dim=batch_dim)
        return effective_weight(w, s, r, c, fixed=fixed, **ctx.layout)

    @staticmethod
    def backward(ctx: Any, grad_eff: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        w, s, r, c = ctx.saved_tensors
        gw, gs, gr, gc = _eq4(ctx, w, grad_eff, s, r, c, tuple(ctx.needs_input_grad[:4]), own=False, **ctx.layout)
        return gw, gs, gr, gc, None, None, None, None


def multiplied_weight(
    weight: Tensor,
    scalar: Tensor | None = None,
    row: Tensor | None = None,
    col: Tensor | None = None,
    *,
    fixed: float = 1.0,
    row_dim: int = 0,
    col_dim: int = 1,
    batch_dim: int | None = None,
) -> Tensor:
    """:func:`~parametrization.effective_weight.effective_weight` that saves only ``W, s, r, c``.

    For layers whose forward is not ours (stacked experts, subclasses reading ``module.weight``):
    the consumer still saves the ``W_eff`` it is given, but no intermediate (``r·W``) is kept,
    and eq. 4 gives the gradients. Everything absent returns ``weight`` itself.
    """
    if scalar is None and row is None and col is None and fixed == 1.0:
        return weight
    return _apply(_WeightFn, weight, scalar, row, col, fixed, row_dim, col_dim, batch_dim)
