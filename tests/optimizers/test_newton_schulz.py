"""Properties of optimizers.newton_schulz (fp32 on CPU)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optimizers import newton_schulz, newton_schulz_flops, orthogonalize_updates
from optimizers.newton_schulz import default_ns_dtype

dims = st.integers(min_value=1, max_value=24)
seeds = st.integers(min_value=0, max_value=2**31 - 1)
log_scales = st.floats(min_value=-3.0, max_value=3.0)


def _matrix(m: int, n: int, seed: int, batch: tuple[int, ...] = ()) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*batch, m, n, generator=g, dtype=torch.float64)


def _scalar_map(x: torch.Tensor, coefficients: list[tuple[float, float, float]], steps: int) -> torch.Tensor:
    """The polynomial iteration on singular values, float64 (independent of the implementation)."""
    for k in range(steps):
        a, b, c = coefficients[min(k, len(coefficients) - 1)]
        x = a * x + b * x**3 + c * x**5
    return x


QUINTIC = [(3.4445, -4.7750, 2.0315)]


@given(m=dims, n=dims, seed=seeds)
def test_quintic_singular_values_land_in_band(m: int, n: int, seed: int) -> None:
    G = _matrix(m, n, seed)
    sigma = torch.linalg.svdvals(G)
    O = newton_schulz(G.float(), steps=5, coefficients="quintic").double()
    out = torch.linalg.svdvals(O)
    kept = sigma >= 0.01 * torch.linalg.matrix_norm(G)
    assert kept.any()
    assert out[kept].min() >= 0.68 and out[kept].max() <= 1.14, (out, sigma)


@given(m=dims, n=dims, seed=seeds)
def test_polar_express_is_closer_to_one_than_quintic(m: int, n: int, seed: int) -> None:
    G = _matrix(m, n, seed)
    sigma = torch.linalg.svdvals(G)
    kept = sigma >= 0.01 * torch.linalg.matrix_norm(G)
    pe = torch.linalg.svdvals(newton_schulz(G.float(), coefficients="polar_express").double())[kept]
    # Documented band of the 5-step schedule: [0.85, 1.15] (quintic's is [0.68, 1.14]).
    assert (pe - 1).abs().max() <= 0.15
    # With more steps the classical tail converges to 1.
    pe8 = torch.linalg.svdvals(newton_schulz(G.float(), steps=8, coefficients="polar_express").double())[kept]
    assert (pe8 - 1).abs().max() <= 2e-3


@given(m=dims, n=dims, seed=seeds)
def test_newton_schulz_keeps_singular_vectors(m: int, n: int, seed: int) -> None:
    G = _matrix(m, n, seed)
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    O = newton_schulz(G.float()).double()
    D = U.mT @ O @ Vh.mT  # = p(Σ/‖G‖) exactly when the singular vectors are kept
    expected = _scalar_map(S / torch.linalg.matrix_norm(G), QUINTIC, 5)
    assert torch.allclose(D, torch.diag(expected), atol=2e-4), (D, expected)


@given(m=dims, n=dims, seed=seeds, log_scale=log_scales)
def test_newton_schulz_is_invariant_to_positive_rescaling(m: int, n: int, seed: int, log_scale: float) -> None:
    G = _matrix(m, n, seed).float()
    a, b = newton_schulz(G), newton_schulz(G * 10.0**log_scale)
    assert torch.allclose(a, b, atol=1e-4)


@given(m=dims, n=dims, seed=seeds)
def test_newton_schulz_is_transpose_equivariant(m: int, n: int, seed: int) -> None:
    G = _matrix(m, n, seed).float()
    assert torch.allclose(newton_schulz(G.mT), newton_schulz(G).mT, atol=1e-4)


@given(m=dims, n=dims, seed=seeds, coefficients=st.sampled_from(["quintic", "polar_express"]))
def test_newton_schulz_is_rotation_equivariant(m: int, n: int, seed: int, coefficients: str) -> None:
    G = _matrix(m, n, seed)
    U = torch.linalg.qr(_matrix(m, m, seed + 1))[0]
    V = torch.linalg.qr(_matrix(n, n, seed + 2))[0]
    lhs = newton_schulz((U @ G @ V).float(), coefficients=coefficients).double()
    rhs = U @ newton_schulz(G.float(), coefficients=coefficients).double() @ V
    assert torch.allclose(lhs, rhs, atol=3e-4)


@given(m=dims, n=dims, k=st.integers(1, 4), seed=seeds)
def test_newton_schulz_batched_matches_one_at_a_time(m: int, n: int, k: int, seed: int) -> None:
    G = _matrix(m, n, seed, batch=(k,)).float()
    batched = newton_schulz(G)
    single = torch.stack([newton_schulz(G[i]) for i in range(k)])
    assert torch.allclose(batched, single, atol=1e-5)


@given(seed=seeds)
def test_orthogonalize_updates_matches_newton_schulz_per_update(seed: int) -> None:
    shapes = [(8, 12), (12, 8), (8, 12), (3, 8, 12), (5, 5), (7, 3)]
    updates = [_matrix(*s[-2:], seed + i, batch=s[:-2]).float() for i, s in enumerate(shapes)]
    before = [u.clone() for u in updates]
    out = orthogonalize_updates(updates, steps=5, coefficients="quintic", dtype=None)
    for u, b, o in zip(updates, before, out):
        assert torch.equal(u, b)  # inputs are never modified
        assert o.shape == u.shape
        assert torch.allclose(o, newton_schulz(u), atol=1e-5)


@given(m=dims, n=dims, k=st.integers(1, 3), seed=seeds, coefficients=st.sampled_from(["quintic", "polar_express"]))
def test_gram_method_computes_the_same_polynomial_as_standard(m: int, n: int, k: int, seed: int, coefficients: str) -> None:
    G = _matrix(m, n, seed, batch=(k,))
    f64 = torch.float64
    exact = newton_schulz(G, coefficients=coefficients, dtype=f64)
    gram = newton_schulz(G.float(), coefficients=coefficients, method="gram").double()  # fp32 compute
    assert gram.shape == G.shape
    assert (gram - exact).norm() <= 1e-3 * exact.norm()
    # In float64 the two are the same map up to rounding.
    assert torch.allclose(newton_schulz(G, coefficients=coefficients, method="gram", dtype=f64), exact, atol=1e-9)


def test_zero_matrix_maps_to_zero() -> None:
    assert torch.equal(newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6))


def test_newton_schulz_does_not_modify_input_and_uses_fp32_on_cpu() -> None:
    G = torch.randn(6, 4)
    before = G.clone()
    out = newton_schulz(G)
    assert torch.equal(G, before)
    assert out.dtype == torch.float32 == default_ns_dtype("cpu")
    assert default_ns_dtype("cuda") == torch.bfloat16
    assert newton_schulz(G, dtype=torch.float64).dtype == torch.float64


def test_custom_coefficients_match_named_schedule() -> None:
    G = torch.randn(5, 9)
    assert torch.equal(newton_schulz(G, coefficients=[(3.4445, -4.7750, 2.0315)]), newton_schulz(G))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(steps=0), "steps"),
        (dict(coefficients="cubic"), "coefficients"),
        (dict(coefficients=[(1.0, 2.0)]), "coefficients"),
        (dict(coefficients=5), "coefficients"),
        (dict(eps=0.0), "eps"),
        (dict(eps=-1.0), "eps"),
        (dict(method="svd"), "method"),
    ],
)
def test_newton_schulz_rejects_bad_arguments(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        newton_schulz(torch.randn(3, 4), **kwargs)


def test_newton_schulz_rejects_vectors_and_integer_tensors() -> None:
    with pytest.raises(ValueError, match="2 dimensions"):
        newton_schulz(torch.randn(4))
    with pytest.raises(TypeError, match="dtype"):
        newton_schulz(torch.ones(3, 3, dtype=torch.int64))


def test_flop_count_formula() -> None:
    # 4·s²·l + 2·s³ per step, s = short side.
    assert newton_schulz_flops(512, 2048, steps=1) == 4 * 512 * 512 * 2048 + 2 * 512**3
    assert newton_schulz_flops(2048, 512, steps=5) == newton_schulz_flops(512, 2048, steps=5)


# ---- low precision (bf16) --------------------------------------------------------------------------

BF16_SHAPES = [(32, 48), (64, 64), (48, 32), (24, 160)]


def _torch_form_bf16(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """torch.optim.Muon's bf16 iteration (``a·X`` folded into the last GEMM), written out for comparison."""
    a, b, c = QUINTIC[0]
    X = (G / G.norm().clamp_min(1e-7)).bfloat16()
    if X.shape[0] > X.shape[1]:
        X = X.mT
    for _ in range(steps):
        A = X @ X.mT
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X.mT if G.shape[0] > G.shape[1] else X


def _rel_error(x: torch.Tensor, G: torch.Tensor) -> float:
    exact = newton_schulz(G, dtype=torch.float64)
    return ((x.double() - exact).norm() / exact.norm()).item()


def _low_precision(G: torch.Tensor, fp32_products: bool) -> torch.Tensor:
    from optimizers.newton_schulz import NS_COEFFICIENTS, _iterate_low_precision

    X = G if G.shape[0] <= G.shape[1] else G.mT
    X = (X / X.norm()).bfloat16().unsqueeze(0)
    out = _iterate_low_precision(X, NS_COEFFICIENTS["quintic"], 5, fp32_products=fp32_products)[0]
    return out if G.shape[0] <= G.shape[1] else out.mT


@pytest.mark.parametrize("shape", BF16_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bf16_newton_schulz_is_close_to_float64(shape: tuple[int, int]) -> None:
    G = _matrix(*shape, seed=0)
    out = newton_schulz(G.float(), dtype=torch.bfloat16)  # CPU: fp32 products on bf16 X
    assert out.dtype == torch.bfloat16 and out.shape == G.shape
    # Measured 4e-3–7e-3 on these shapes; torch's bf16 form gives 1.1e-2–1.4e-2.
    assert _rel_error(out, G) < 1e-2


@pytest.mark.parametrize("fp32_products", [True, False], ids=["cpu_form", "cuda_form"])
@pytest.mark.parametrize("shape", BF16_SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_bf16_newton_schulz_is_at_least_as_accurate_as_torch_form(shape: tuple[int, int], fp32_products: bool) -> None:
    # Summed over seeds so one lucky matrix cannot decide. The CPU form (fp32 products) is expected to
    # halve torch's error; the CUDA form (bf16 GEMMs, the same cost as torch's) to beat it.
    ours = torch_err = 0.0
    for seed in range(3):
        G = _matrix(*shape, seed=seed)
        ours += _rel_error(_low_precision(G.float(), fp32_products), G)
        torch_err += _rel_error(_torch_form_bf16(G.float()), G)
    assert ours <= (0.7 if fp32_products else 1.0) * torch_err, (ours, torch_err)


def test_bf16_newton_schulz_on_cpu_runs_the_fp32_products_form() -> None:
    G = _matrix(40, 56, seed=5).float()
    torch.testing.assert_close(newton_schulz(G, dtype=torch.bfloat16), _low_precision(G, fp32_products=True))


def test_fp32_newton_schulz_error_is_unchanged_by_the_low_precision_path() -> None:
    # fp32 keeps the (B + a·I)·X form; its error is four orders of magnitude below bf16's.
    G = _matrix(64, 96, seed=1)
    assert _rel_error(newton_schulz(G.float()), G) < 5e-6
