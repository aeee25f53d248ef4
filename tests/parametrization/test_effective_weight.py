"""Properties of W_eff = f·s·diag(r)·W·diag(c) and of the layer that computes with it."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

import parametrization as P
from parametrization.effective_weight import (
    check_multipliers,
    effective_weight,
    embedding_activation_side,
    linear_activation_side,
    multipliers_fit,
    prefers_activation_side,
)
from parametrization.multipliers import set_compute

shapes = st.tuples(st.integers(1, 9), st.integers(1, 9), st.integers(1, 6))  # m, n, tokens
seeds = st.integers(0, 2**31 - 1)


def _tensors(m: int, n: int, seed: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(m, n, generator=g)
    s = torch.rand(1, generator=g) + 0.5
    r = torch.rand(m, generator=g) + 0.5
    c = torch.rand(n, generator=g) + 0.5
    return W, s, r, c


@given(shapes, seeds, st.sampled_from(["weight", "activation", "auto"]))
def test_linear_forward_equals_x_times_effective_weight_transposed(shape, seed, compute):
    m, n, tokens = shape
    W, s, r, c = _tensors(m, n, seed)
    layer = nn.Linear(n, m)
    mp = P.parametrize(nn.Sequential(layer, nn.Linear(m, 2)), {"0": "src"}, compute=compute)
    with torch.no_grad():
        layer._parameters["weight"].copy_(W)
        layer.weight_mult_scalar.copy_(s)
        layer.weight_mult_row.copy_(r)
        layer.weight_mult_col.copy_(c)
    x = torch.randn(tokens, n, generator=torch.Generator().manual_seed(seed + 1))
    expected = x @ (s * torch.diag(r) @ W @ torch.diag(c)).T + layer.bias
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    assert mp.placements["0.weight"] == P.Placement(True, True, True)


@given(shapes, seeds)
def test_activation_side_equals_weight_side(shape, seed):
    m, n, tokens = shape
    W, s, r, c = _tensors(m, n, seed)
    x = torch.randn(3, tokens, n)
    b = torch.randn(m)
    for fixed in (1.0, 0.25):
        a = linear_activation_side(x, W, b, s, r, c, fixed=fixed)
        w = F.linear(x, effective_weight(W, s, r, c, fixed=fixed), b)
        torch.testing.assert_close(a, w, rtol=1e-5, atol=1e-5)


@given(st.integers(2, 12), st.integers(1, 6), seeds)
def test_embedding_activation_side_gathers_effective_rows(vocab, d, seed):
    W, s, r, c = _tensors(vocab, d, seed)
    idx = torch.randint(0, vocab, (2, 5), generator=torch.Generator().manual_seed(seed))
    got = embedding_activation_side(F.embedding(idx, W), idx, s, r, c, fixed=0.5)
    torch.testing.assert_close(got, F.embedding(idx, effective_weight(W, s, r, c, fixed=0.5)))


@given(st.sampled_from([(0, 1), (1, 0)]), st.integers(1, 5), st.integers(1, 5), st.integers(1, 3), seeds)
def test_effective_weight_scales_the_declared_axes(dims, m, n, k, seed):
    row_dim, col_dim = dims
    shape = [0, 0, k]
    shape[row_dim], shape[col_dim] = m, n
    W = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    _, s, r, c = _tensors(m, n, seed)
    got = effective_weight(W, s, r, c, row_dim=row_dim, col_dim=col_dim)
    expected = torch.empty_like(W)
    for i in range(m):
        for j in range(n):
            idx = [slice(None)] * 3
            idx[row_dim], idx[col_dim] = i, j
            expected[tuple(idx)] = s * r[i] * W[tuple(idx)] * c[j]
    torch.testing.assert_close(got, expected)


def test_effective_weight_without_multipliers_is_the_weight_itself():
    W = torch.randn(3, 4)
    assert effective_weight(W) is W


@given(shapes, seeds, st.sampled_from(["weight", "activation"]))
def test_gradients_match_paper_eq4(shape, seed, compute):
    """∂L/∂W = s·(r cᵀ)⊙G, ∂L/∂r = s·(W⊙G)c, ∂L/∂c = s·(W⊙G)ᵀr, ∂L/∂s = Σ(diag(r)W diag(c))⊙G."""
    m, n, tokens = shape
    W, s, r, c = _tensors(m, n, seed)
    layer = nn.Linear(n, m, bias=False)
    P.parametrize(nn.Sequential(layer, nn.Linear(m, 1)), {"0": "src"})
    set_compute(layer, compute)
    with torch.no_grad():
        layer._parameters["weight"].copy_(W)
        layer.weight_mult_scalar.copy_(s)
        layer.weight_mult_row.copy_(r)
        layer.weight_mult_col.copy_(c)
    g = torch.Generator().manual_seed(seed + 7)
    x = torch.randn(tokens, n, generator=g)
    upstream = torch.randn(tokens, m, generator=g)
    (layer(x) * upstream).sum().backward()
    G = upstream.T @ x  # ∂L/∂W_eff for y = x W_effᵀ
    raw = layer._parameters["weight"]
    torch.testing.assert_close(raw.grad, s * torch.outer(r, c) * G, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.weight_mult_row.grad, s * (W * G) @ c, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(layer.weight_mult_col.grad, s * (W * G).T @ r, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        layer.weight_mult_scalar.grad, (torch.diag(r) @ W @ torch.diag(c) * G).sum().reshape(1), rtol=1e-4, atol=1e-5
    )


@given(shapes, seeds, st.floats(0.1, 10.0))
def test_row_multiplier_and_weight_rows_trade_scale(shape, seed, alpha):
    """(r, W) → (α r, W/α) and (W, c) → (α W, c/α) leave the layer's output unchanged."""
    m, n, tokens = shape
    W, s, r, c = _tensors(m, n, seed)
    x = torch.randn(tokens, n)
    y = F.linear(x, effective_weight(W, s, r, c))
    torch.testing.assert_close(F.linear(x, effective_weight(W / alpha, s, alpha * r, c)), y, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(F.linear(x, effective_weight(W * alpha, s, r, c / alpha)), y, rtol=1e-4, atol=1e-5)


def test_cost_model_prefers_weight_side_for_many_tokens():
    assert not prefers_activation_side(tokens=4096, rows=512, cols=512)
    assert prefers_activation_side(tokens=1, rows=512, cols=512)


def test_effective_weight_passes_gradcheck():
    g = torch.Generator().manual_seed(0)
    W = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s, r, c = (torch.rand(k, generator=g, dtype=torch.float64).add(0.5).requires_grad_() for k in (1, 3, 4))
    assert torch.autograd.gradcheck(lambda W, s, r, c: effective_weight(W, s, r, c, fixed=0.5), (W, s, r, c))
    assert torch.autograd.gradgradcheck(lambda W, r: effective_weight(W, None, r, None), (W, r))


# ------------------------------------------------------------------ the every-forward multiplier check

_SHAPE_CHOICES = st.sampled_from(["right", "scalar-like", "too short", "too long", "2-D"])


def _multiplier(kind: str, right: tuple[int, ...], dtype: torch.dtype, device: str) -> torch.Tensor:
    shape = {
        "right": right,
        "scalar-like": (),
        "too short": right[:-1] + (max(right[-1] - 1, 0),),
        "too long": right[:-1] + (right[-1] + 1,),
        "2-D": right + (1,),
    }[kind]
    return torch.ones(shape, dtype=dtype, device=device)


@settings(max_examples=300, deadline=None)
@given(
    m=st.integers(1, 4), n=st.integers(1, 4), batch=st.sampled_from([None, 3]), transposed=st.booleans(),
    kinds=st.tuples(st.none() | _SHAPE_CHOICES, st.none() | _SHAPE_CHOICES, st.none() | _SHAPE_CHOICES),
    dtypes=st.tuples(*[st.sampled_from([torch.float32, torch.float64])] * 3),
    devices=st.tuples(*[st.sampled_from(["cpu", "cpu", "meta"])] * 3),
)
def test_multipliers_fit_agrees_with_check_multipliers(m, n, batch, transposed, kinds, dtypes, devices):
    """The fast check that runs on every forward passes exactly when the full check passes."""
    rd, cd = (1, 0) if transposed else (0, 1)
    shape = [0, 0]
    shape[rd], shape[cd] = m, n
    bdim = None
    if batch is not None:
        shape, bdim, rd, cd = [batch] + shape, 0, rd + 1, cd + 1
    w = torch.ones(shape)
    lead = () if batch is None else (batch,)
    rights = (lead or (1,), lead + (m,), lead + (n,))
    s, r, c = (None if k is None else _multiplier(k, right, dt, dev) for k, right, dt, dev in zip(kinds, rights, dtypes, devices))
    try:
        check_multipliers(w, s, r, c, row_dim=rd, col_dim=cd, batch_dim=bdim)
        full = True
    except (ValueError, TypeError):
        full = False
    assert multipliers_fit(w, s, r, c, rd, cd, bdim) == full
