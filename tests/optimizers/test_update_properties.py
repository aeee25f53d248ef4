"""Property tests of the invariants that define the two optimizers' updates (random shapes, fp32/fp64,
hyperparameters anywhere in their valid ranges). Each test's name states its invariant."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from optimizers import AdamW, Muon, newton_schulz
from tests.optimizers._state import assert_unchanged, resumed_run, snapshot

dims = st.integers(min_value=2, max_value=12)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
dtypes = st.sampled_from([torch.float32, torch.float64])
momenta = st.floats(min_value=0.0, max_value=0.99)
rules = st.sampled_from(["spectral", "match_rms_adamw", "none"])
# Tolerances for results that are equal in exact arithmetic but rounded differently.
TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.float64: dict(rtol=1e-9, atol=1e-11)}

# The lr-scale rules as the README states them (not read from optimizers.lr_scale).
SCALE = {
    "spectral": lambda fo, fi: math.sqrt(max(1.0, fo / fi)),
    "match_rms_adamw": lambda fo, fi: 0.2 * math.sqrt(max(fo, fi)),
    "none": lambda fo, fi: 1.0,
}


def _randn(shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(dtype)


def _muon_updates(p0: torch.Tensor, grads: list[torch.Tensor], **kw) -> list[torch.Tensor]:
    """The parameter change of each step of a Muon on ``p0`` fed ``grads`` (NS in the parameter's dtype)."""
    p = p0.clone().requires_grad_()
    opt = Muon([{"params": [p], **{k: v for k, v in kw.items() if k == "matrix_view"}}],
               ns_dtype=p0.dtype, **{k: v for k, v in kw.items() if k != "matrix_view"})
    out = []
    for g in grads:
        before = p.detach().clone()
        p.grad = g.clone()
        opt.step()
        out.append(p.detach() - before)
    return out


# ---- Muon ------------------------------------------------------------------------------------------------


@given(m=dims, n=dims, steps=st.integers(1, 3), k=st.integers(-8, 8), mu=momenta, nesterov=st.booleans(),
       dtype=dtypes, seed=seeds)
def test_muon_update_is_invariant_to_scaling_the_gradient_history(m, n, steps, k, mu, nesterov, dtype, seed) -> None:
    # c = 2^k scales every intermediate exactly, so the updates must agree bit for bit.
    grads = [_randn((m, n), seed + t, dtype) for t in range(steps)]
    p0 = _randn((m, n), seed - 1, dtype)
    a = _muon_updates(p0, grads, momentum=mu, nesterov=nesterov, weight_decay=0.0)
    b = _muon_updates(p0, [g * 2.0**k for g in grads], momentum=mu, nesterov=nesterov, weight_decay=0.0)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


@given(m=dims, n=dims, c=st.floats(1e-2, 1e2), dtype=dtypes, seed=seeds)
def test_muon_update_is_invariant_to_any_positive_gradient_scale(m, n, c, dtype, seed) -> None:
    g, p0 = _randn((m, n), seed, dtype), _randn((m, n), seed + 1, dtype)
    (a,), (b,) = _muon_updates(p0, [g], weight_decay=0.0), _muon_updates(p0, [g * c], weight_decay=0.0)
    assert torch.allclose(a, b, **TOL[dtype])


@given(m=dims, n=dims, dtype=dtypes, seed=seeds, mu=momenta)
def test_muon_update_commutes_with_row_and_column_permutations(m, n, dtype, seed, mu) -> None:
    grads = [_randn((m, n), seed + t, dtype) for t in range(2)]
    p0 = _randn((m, n), seed - 1, dtype)
    gen = torch.Generator().manual_seed(seed)
    rows, cols = torch.randperm(m, generator=gen), torch.randperm(n, generator=gen)
    plain = _muon_updates(p0, grads, momentum=mu)
    permuted = _muon_updates(p0[rows][:, cols], [g[rows][:, cols] for g in grads], momentum=mu)
    for u, v in zip(plain, permuted):
        assert torch.allclose(v, u[rows][:, cols], **TOL[dtype])


@given(m=dims, n=dims, dtype=dtypes, seed=seeds, coefficients=st.sampled_from(["quintic", "polar_express"]))
def test_muon_update_singular_values_lie_in_the_band_of_the_coefficients(m, n, dtype, seed, coefficients) -> None:
    # newton_schulz's promise: every singular value that was >= 1% of ‖G‖_F ends in the band after 5 steps.
    band = {"quintic": (0.68, 1.14), "polar_express": (0.85, 1.15)}[coefficients]
    g = _randn((m, n), seed, dtype)
    (u,) = _muon_updates(torch.zeros(m, n, dtype=dtype), [g], lr=1.0, lr_scale="none", weight_decay=0.0,
                         ns_coefficients=coefficients)
    U, S, Vh = torch.linalg.svd(g.double(), full_matrices=False)
    sigma = torch.einsum("im,ij,mj->m", U, -u.double(), Vh)  # O's singular value on each of G's pairs
    kept = S >= 0.01 * torch.linalg.matrix_norm(g.double())
    assert bool(((sigma[kept] >= band[0] - 1e-4) & (sigma[kept] <= band[1] + 1e-4)).all()), sigma[kept]


@given(m=dims, n=dims, batch=st.sampled_from([0, 3]), rule=rules, mu=momenta, dtype=dtypes, seed=seeds)
def test_transposing_the_parameter_with_the_matching_view_transposes_the_update(m, n, batch, rule, mu, dtype, seed) -> None:
    shape = (batch, m, n) if batch else (m, n)
    grads = [_randn(shape, seed + t, dtype) for t in range(2)]
    p0 = _randn(shape, seed - 1, dtype)
    view = "batch_in_out" if batch else "in_out"
    plain = _muon_updates(p0, grads, lr_scale=rule, momentum=mu)
    transposed = _muon_updates(p0.mT.contiguous(), [g.mT.contiguous() for g in grads], lr_scale=rule,
                               momentum=mu, matrix_view=view)
    for u, v in zip(plain, transposed):
        assert torch.allclose(v, u.mT, **TOL[dtype])


@given(m=dims, n=dims, wd=st.floats(0.0, 1.0), decay=st.sampled_from(["lr", "independent"]), dtype=dtypes, seed=seeds)
def test_muon_with_zero_lr_only_decays(m, n, wd, decay, dtype, seed) -> None:
    p0 = _randn((m, n), seed, dtype)
    p = p0.clone().requires_grad_()
    opt = Muon([p], lr=0.0, weight_decay=wd, decay=decay)
    p.grad = _randn((m, n), seed + 1, dtype)
    opt.step()
    expected = p0 * (1 - wd) if decay == "independent" else p0  # decay="lr" scales wd by lr = 0
    assert torch.equal(p.detach(), expected)


@given(m=dims, n=dims, rule=rules, lr=st.floats(1e-4, 1.0), nesterov=st.booleans(), dtype=dtypes, seed=seeds)
def test_first_step_from_zero_state_is_lr_times_the_rule_scale_times_ns_of_the_gradient(m, n, rule, lr, nesterov, dtype, seed) -> None:
    g = _randn((m, n), seed, dtype)
    (u,) = _muon_updates(_randn((m, n), seed + 1, dtype), [g], lr=lr, lr_scale=rule, weight_decay=0.0,
                         nesterov=nesterov)
    o = newton_schulz(g, steps=5, coefficients="quintic", dtype=dtype)
    assert torch.allclose(u, -lr * SCALE[rule](m, n) * o, **TOL[dtype])
    rms = u.square().mean().sqrt() / lr
    assert rms.item() == pytest.approx(SCALE[rule](m, n) * o.square().mean().sqrt().item(), rel=1e-4)


# ---- AdamW -----------------------------------------------------------------------------------------------

betas = st.tuples(st.floats(0.0, 0.999), st.floats(0.0, 0.9999))
paths = st.sampled_from(["fused", "foreach", "single"])
_TORCH_PATH = {"fused": dict(fused=True), "foreach": dict(foreach=True), "single": dict(foreach=False, fused=False)}


@settings(max_examples=20)
@given(shape=st.sampled_from([(3,), (4, 5), (2, 3, 2)]), lr=st.floats(0.0, 0.1), b=betas, eps=st.floats(0.0, 1e-3),
       wd=st.floats(0.0, 1.0), amsgrad=st.booleans(), maximize=st.booleans(), path=paths, dtype=dtypes,
       schedule=st.lists(st.floats(0.0, 2.0), min_size=1, max_size=4), seed=seeds)
def test_adamw_is_bit_identical_to_torch_adamw(shape, lr, b, eps, wd, amsgrad, maximize, path, dtype, schedule, seed) -> None:
    p0 = _randn(shape, seed, dtype)
    ours, theirs = p0.clone().requires_grad_(), p0.clone().requires_grad_()
    kw = dict(lr=lr, betas=b, eps=eps, weight_decay=wd, amsgrad=amsgrad, maximize=maximize, **_TORCH_PATH[path])
    opt, ref = AdamW([ours], **kw), torch.optim.AdamW([theirs], **kw)
    for t, factor in enumerate(schedule):
        for o in (opt, ref):
            o.param_groups[0]["lr"] = lr * factor
        g = _randn(shape, seed + 1 + t, dtype)
        ours.grad, theirs.grad = g, g.clone()
        opt.step()
        ref.step()
        assert torch.equal(ours, theirs)


@given(shape=st.sampled_from([(3,), (4, 5)]), lr=st.floats(0.0, 10.0), wd=st.floats(0.0, 1.0), dtype=dtypes, seed=seeds)
def test_adamw_independent_decay_shrinks_by_exactly_one_minus_wd_whatever_the_lr(shape, lr, wd, dtype, seed) -> None:
    p0 = _randn(shape, seed, dtype)
    p = p0.clone().requires_grad_()
    opt = AdamW([p], lr=lr, weight_decay=wd, decay="independent")
    p.grad = torch.zeros_like(p)  # no Adam move: what is left is the decay
    opt.step()
    assert torch.equal(p.detach(), p0 * (1 - wd))


@given(shape=st.sampled_from([(3,), (4, 5)]), k=st.integers(-10, 10), steps=st.integers(1, 4), b=betas,
       path=paths, dtype=dtypes, seed=seeds)
def test_adamw_with_zero_eps_is_invariant_to_gradient_scale(shape, k, steps, b, path, dtype, seed) -> None:
    # With eps = 0 Adam's step m̂/√v̂ is scale-free; a power-of-two scale keeps it bit for bit.
    p0 = _randn(shape, seed, dtype)
    runs = []
    for c in (1.0, 2.0**k):
        p = p0.clone().requires_grad_()
        opt = AdamW([p], lr=1e-2, betas=b, eps=0.0, **_TORCH_PATH[path])
        for t in range(steps):
            p.grad = _randn(shape, seed + 1 + t, dtype) * c
            opt.step()
        runs.append(p.detach())
    assert torch.equal(*runs)


@given(shape=st.sampled_from([(3,), (4, 5)]), c=st.floats(1e-3, 1e3), dtype=dtypes, seed=seeds)
def test_adamw_is_invariant_to_gradient_scale_up_to_eps(shape, c, dtype, seed) -> None:
    p0 = _randn(shape, seed, dtype)
    moves = []
    for scale in (1.0, c):
        p = p0.clone().requires_grad_()
        opt = AdamW([p], lr=1.0, eps=1e-8, weight_decay=0.0)
        p.grad = _randn(shape, seed + 1, dtype) * scale
        opt.step()
        moves.append(p.detach() - p0)
    g = _randn(shape, seed + 1, dtype).abs()
    # First step: move = -g/(|g| + eps/scale); the two differ by at most eps/(min|g|·min(1, c)).
    bound = 1e-8 / (g.min().item() * min(1.0, c)) + TOL[dtype]["rtol"]
    assert torch.allclose(moves[0], moves[1], rtol=0, atol=bound)


# ---- both ------------------------------------------------------------------------------------------------

SHAPES = [(6, 4), (3, 4, 2), (4,), ()]


def _maker(kind: str):
    def make(seed: int):
        ps = [_randn(s, seed * 10 + i, torch.float32).requires_grad_() for i, s in enumerate(SHAPES)]
        if kind == "muon":
            opt = Muon(ps, adamw_weight_decay=0.01)
        else:
            opt = AdamW(ps, weight_decay=0.1, amsgrad=True)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.3 * t))
        return ps, opt, sched

    return make


def _train(opt, sched, ps, steps) -> None:
    for t in steps:
        for i, p in enumerate(ps):
            p.grad = _randn(p.shape, 1000 * t + i, torch.float32)
        opt.step()
        sched.step()


@settings(max_examples=10)
@given(kind=st.sampled_from(["muon", "adamw"]), split=st.integers(0, 5))
def test_state_dict_into_a_fresh_optimizer_continues_bit_identically_at_any_step(kind, split) -> None:
    straight, resumed, _ = resumed_run(_maker(kind), _train, split=split, total=6)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))


@settings(max_examples=20)
@given(kind=st.sampled_from(["muon", "adamw"]), before=st.integers(0, 3),
       failure=st.sampled_from(["nan", "inf", "sparse", "negative_lr", "nan_lr", "bad_beta", "dtype", "view"]),
       which=st.integers(0, len(SHAPES) - 1))
def test_a_step_that_raises_leaves_every_parameter_and_state_tensor_unchanged(kind, before, failure, which) -> None:
    ps, opt, sched = _maker(kind)(0)
    opt.nonfinite = "raise"
    _train(opt, sched, ps, range(before))
    for i, p in enumerate(ps):
        p.grad = _randn(p.shape, 77 + i, torch.float32)
    target = ps[which]
    group = next(g for g in opt.param_groups if any(q is target for q in g["params"]))
    if failure in ("nan", "inf"):
        target.grad.view(-1)[0] = float(failure)
    elif failure == "sparse":
        target.grad = target.grad.to_sparse()
    elif failure == "negative_lr":
        group["lr"] = -1.0
    elif failure == "nan_lr":
        group["lr"] = float("nan")
    elif failure == "bad_beta":
        group["momentum" if group.get("algorithm") == "muon" else "betas"] = (
            1.5 if group.get("algorithm") == "muon" else (0.9, 1.5))
    elif failure == "view":
        if group.get("algorithm") != "muon":
            return  # only Muon groups read a matrix view
        group["matrix_view"] = "in_out" if target.ndim == 3 else "conv"  # edited after construction, wrong ndim
    elif failure == "dtype":
        if before == 0 or (kind == "muon" and target.ndim >= 2):
            return  # no AdamW state yet / Muon momentum may differ in dtype: no failure to provoke
        with torch.no_grad():
            target.data = target.data.double()
            target.grad = target.grad.double()
    snap = snapshot(opt, ps)
    with pytest.raises((ValueError, TypeError, FloatingPointError, RuntimeError)):
        opt.step()
    assert_unchanged(opt, ps, snap)
