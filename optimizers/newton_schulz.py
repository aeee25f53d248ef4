"""Newton–Schulz orthogonalization: an approximation of the polar factor of a matrix.

For ``G = U Σ Vᵀ`` (reduced SVD) the polar factor is ``U Vᵀ``: the same singular vectors with every
singular value replaced by 1. Muon replaces each matrix update by (an approximation of) it.

An odd quintic polynomial applied to a matrix acts on its singular values only::

    p(X) = a·X + b·(X Xᵀ) X + c·(X Xᵀ)² X        ⇔        σ ↦ a·σ + b·σ³ + c·σ⁵

so iterating ``X ← p_k(X)`` after scaling ``X = G / ‖G‖_F`` (which puts every σ in [0, 1]) pushes the
singular values towards 1 while keeping ``U`` and ``V``. Per step we compute, on the wide orientation
(m ≤ n, so the Gram matrix ``A = X Xᵀ`` is the small m×m one)::

    A = X Xᵀ;   B = b·A + c·A A;   X ← a·X + B X = (B + a·I) X      (4·m²·n + 2·m³ FLOPs)

Coefficient schedules (``coefficients=``):

* ``"quintic"`` — Keller Jordan's fixed (a, b, c) = (3.4445, −4.7750, 2.0315) for every step (Muon's
  default, 5 steps). It trades accuracy for speed: after 5 steps every singular value that was at least
  1 % of ``‖G‖_F`` lies in [0.68, 1.14] (the scalar map's exact range is [0.6818, 1.1344]).
* ``"polar_express"`` — the per-step schedule of Polar Express (Amsel, Persson, Musco, Gower,
  arXiv 2505.16932), in the 5-step variant used by modded-nanogpt (safety factor 2e-2, cushion 2), with
  the input scaled by ``1.02·‖G‖_F``. After 5 steps the same singular values lie in [0.85, 1.15]
  (scalar map: [0.8589, 1.1411]), i.e. at most 0.15 from 1 where the quintic is up to 0.32 away.
  Steps past the 5 tuned ones use the classical quintic Newton–Schulz polynomial
  (15/8, −10/8, 3/8), which has 1 as a super-attracting fixed point (6 steps: [0.99, 1.01]).
* a sequence of ``(a, b, c)`` tuples, used in order, the last one repeated for further steps.

Compute dtype: bfloat16 on CUDA, float32 elsewhere (on a CPU without bf16 matrix units a bf16 GEMM is
tens of times slower than fp32). ``dtype=`` overrides it. The result is returned in that compute dtype.

Low-precision compute dtypes (bf16, fp16): ``X`` is stored in that dtype, but the small m×m matrices
``A``, ``B`` and ``C = B + a·I`` are kept in fp32 (:func:`_iterate_low_precision`). Folding ``a`` into
``C`` in fp32 is what keeps the accuracy: near convergence ``B ≈ −2.7·I`` and ``C ≈ 0.7·I``, so rounding
``B`` (or ``B + a·I`` computed from a rounded ``B``) to bf16 loses the small part that ``C`` is made of.
Relative error against the same iteration in float64 after 5 quintic steps (Frobenius norm, mean of 3
matrices 96×(96…768); ``python -m benchmarks.newton_schulz_accuracy``):

    bf16 form                                   Gaussian            singular values over 3 decades
    torch's ``addmm(X, B, X, beta=a)``          1.2e-2 – 1.3e-2     4.4e-2 – 7.4e-2
    ours on CUDA (bf16 GEMMs, as torch's)       7.6e-3 – 1.2e-2     4.5e-2 – 7.4e-2
    ours elsewhere (fp32 GEMMs on bf16 X)       4.5e-3 – 7.0e-3     4.3e-2 – 7.3e-2

On ill-conditioned input the rounding of X itself dominates, so all three forms are within 3 % there.
The fp32 path keeps ``(B + a·I)·X`` (``_iterate``): 1.1e-6 – 6.4e-6 on the same matrices.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "NS_COEFFICIENTS",
    "NS_METHODS",
    "default_ns_dtype",
    "newton_schulz",
    "newton_schulz_flops",
]

Coefficients = tuple[float, float, float]

NS_METHODS = ("standard", "gram")

_CLASSICAL_QUINTIC: Coefficients = (15.0 / 8.0, -10.0 / 8.0, 3.0 / 8.0)


@dataclass(frozen=True)
class _Schedule:
    """A per-step list of (a, b, c) and what follows it; ``norm_scale`` multiplies ‖G‖_F."""

    steps: tuple[Coefficients, ...]
    tail: Coefficients
    norm_scale: float = 1.0

    def at(self, k: int) -> Coefficients:
        return self.steps[k] if k < len(self.steps) else self.tail


_KJ_QUINTIC: Coefficients = (3.4445, -4.7750, 2.0315)

# Polar Express (arXiv 2505.16932), 5 steps, safety 2e-2, cushion 2, as in modded-nanogpt.
_POLAR_EXPRESS: tuple[Coefficients, ...] = (
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)

NS_COEFFICIENTS: dict[str, _Schedule] = {
    "quintic": _Schedule(steps=(_KJ_QUINTIC,), tail=_KJ_QUINTIC),
    "polar_express": _Schedule(steps=_POLAR_EXPRESS, tail=_CLASSICAL_QUINTIC, norm_scale=1.02),
}
"""Named coefficient schedules accepted by :func:`newton_schulz` (``coefficients=``)."""


def default_ns_dtype(device: torch.device | str) -> torch.dtype:
    """bfloat16 on CUDA, float32 on every other device (CPU bf16 GEMMs are very slow)."""
    return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32


def _schedule(coefficients: str | Sequence[Sequence[float]]) -> _Schedule:
    if isinstance(coefficients, str):
        if coefficients not in NS_COEFFICIENTS:
            raise ValueError(
                f"coefficients must be one of {sorted(NS_COEFFICIENTS)} or a sequence of (a, b, c), "
                f"got {coefficients!r}"
            )
        return NS_COEFFICIENTS[coefficients]
    try:
        steps = tuple(tuple(float(v) for v in abc) for abc in coefficients)
    except (TypeError, ValueError):
        steps = ()
    if not steps or any(len(abc) != 3 for abc in steps):
        raise ValueError(f"coefficients must be a non-empty sequence of (a, b, c) triples, got {coefficients!r}")
    return _Schedule(steps=steps, tail=steps[-1])  # type: ignore[arg-type]


def check_coefficients(coefficients: object) -> None:
    """Raise ``ValueError`` unless ``coefficients`` names a schedule or is a list of (a, b, c)."""
    _schedule(coefficients)  # type: ignore[arg-type]


def newton_schulz(
    G: Tensor,
    steps: int = 5,
    coefficients: str | Sequence[Sequence[float]] = "quintic",
    eps: float = 1e-7,
    dtype: torch.dtype | None = None,
    *,
    method: Literal["standard", "gram"] = "standard",
    _overwrite_input: bool = False,
) -> Tensor:
    """Approximate the polar factor ``U Vᵀ`` of every matrix in ``G`` (shape ``[..., m, n]``).

    ``X₀ = G / max(s·‖G‖_F, eps)`` per matrix (s = 1, or 1.02 for Polar Express), then ``steps`` times
    ``X ← a·X + (b·A + c·A²) X`` with ``A = X Xᵀ`` on the wide orientation (tall matrices are
    transposed for the iteration and back for the result). Leading dimensions are a batch.

    Args:
        G: real floating tensor with at least 2 dimensions; it is never modified.
        steps: number of iterations, ≥ 1 (default 5).
        coefficients: ``"quintic"`` (default), ``"polar_express"`` or a sequence of (a, b, c).
        eps: floor of the normalizing norm (default 1e-7), so a zero matrix maps to zero.
        dtype: compute dtype; ``None`` picks bfloat16 on CUDA and float32 elsewhere.
        method: ``"standard"`` iterates on X (default). ``"gram"`` runs the same polynomials on the m×m
            Gram matrix (see :func:`_iterate_gram`): fewer FLOPs when n ≥ 2·m (1.5× at n = 3m,
            1.8× at n = 4m), at the cost of more rounding (fp32: ≤ ~5e-4 relative on ill-conditioned
            input, vs ~1e-5); meant for fp32 on CPUs, not for bf16.
        _overwrite_input: private; the caller owns ``G`` (a fresh stack) and lets it be reused as a buffer.

    Returns:
        A new tensor of ``G``'s shape in the compute dtype.
    """
    if not isinstance(G, Tensor):
        raise TypeError(f"G must be a Tensor, got {type(G).__name__}")
    if G.ndim < 2:
        raise ValueError(f"G must have at least 2 dimensions [..., m, n], got shape {tuple(G.shape)}")
    if G.is_complex() or not G.is_floating_point():
        raise TypeError(f"G must be a real floating tensor, got dtype {G.dtype}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (isinstance(eps, (int, float)) and eps > 0 and math.isfinite(eps)):
        raise ValueError(f"eps must be a positive finite float, got {eps!r}")
    if method not in NS_METHODS:
        raise ValueError(f"method must be one of {NS_METHODS}, got {method!r}")
    schedule = _schedule(coefficients)
    dtype = default_ns_dtype(G.device) if dtype is None else dtype
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, got {dtype}")

    shape = G.shape
    m, n = shape[-2], shape[-1]
    X = G.reshape(-1, m, n)
    tall = m > n
    if tall:
        X = X.mT
    X = _normalize(X, schedule.norm_scale, eps, dtype, overwrite=_overwrite_input)
    if method == "gram":
        X = _iterate_gram(X, schedule, steps)
    elif dtype.itemsize < 4:
        X = _iterate_low_precision(X, schedule, steps, fp32_products=X.device.type != "cuda")
    else:
        X = _iterate(X, schedule, steps)
    if tall:
        X = X.mT
    return X.reshape(shape)


def _normalize(X: Tensor, scale: float, eps: float, dtype: torch.dtype, overwrite: bool = False) -> Tensor:
    """``X / max(scale·‖X‖_F, eps)`` per matrix, into a new contiguous tensor of ``dtype``.

    Out of place unless ``overwrite``: ``X`` may be (a view of) optimizer state, which must never be
    normalized in place.
    """
    # Accumulate the norm in at least fp32 (a bf16 sum of squares loses precision).
    norm = torch.linalg.vector_norm(X, dim=(-2, -1), keepdim=True, dtype=torch.promote_types(X.dtype, torch.float32))
    if scale != 1.0:
        norm = norm * scale
    if overwrite and X.dtype == dtype and X.is_contiguous():
        return X.div_(norm.clamp_min(eps))
    out = torch.empty(X.shape, dtype=dtype, device=X.device)
    return torch.div(X, norm.clamp_min(eps), out=out)


def _iterate(X: Tensor, schedule: _Schedule, steps: int) -> Tensor:
    """``steps`` iterations on a batch ``[b, m, n]`` with m ≤ n (already normalized).

    ``a·X + B·X`` is computed as ``(B + a·I)·X``: the ``a`` goes onto B's diagonal (m values) instead of a
    scaled copy of X (m·n values), and every product writes into preallocated double buffers.
    """
    batch, m, n = X.shape
    A = X.new_empty(batch, m, m)
    B = X.new_empty(batch, m, m)
    spare = torch.empty_like(X, memory_format=torch.contiguous_format)
    for k in range(steps):
        a, b, c = schedule.at(k)
        torch.bmm(X, X.mT, out=A)
        torch.baddbmm(A, A, A, beta=b, alpha=c, out=B)
        B.diagonal(dim1=-2, dim2=-1).add_(a)
        torch.bmm(B, X, out=spare)
        X, spare = spare, X
    return X


def _iterate_low_precision(X: Tensor, schedule: _Schedule, steps: int, *, fp32_products: bool) -> Tensor:
    """``steps`` iterations on a low-precision batch ``[b, m, n]`` (m ≤ n, normalized), m×m parts in fp32.

    Per step: ``A = X Xᵀ`` accumulated in fp32; ``C = a·I + b·A + c·A²`` in fp32; ``X ← C X`` rounded
    once to X's dtype.

    * ``fp32_products=False`` (CUDA): every GEMM reads low-precision inputs, as torch's form does, so
      the cost is the same; ``A`` is rounded to X's dtype before squaring (so ``b·A`` and ``c·A²`` see
      the same matrix, which the iteration tolerates far better than two different roundings) and
      ``C`` is rounded before ``C X``. 0.6–0.9× the error of torch's form on Gaussian matrices.
    * ``fp32_products=True`` (CPU, where fp32 GEMMs are the fast ones): ``A`` and ``C X`` are fp32
      products of the exactly upcast X; only X is rounded. 0.4–0.55× the error of torch's form.
    """
    low = X.dtype
    for k in range(steps):
        a, b, c = schedule.at(k)
        if fp32_products:
            Xf = X.float()
            A = torch.bmm(Xf, Xf.mT)
            C = torch.baddbmm(A, A, A, beta=b, alpha=c)
        else:
            A_low = torch.bmm(X, X.mT)
            A = A_low.float()
            C = _mm_fp32(A_low, A_low).mul_(c).add_(A, alpha=b)
        C.diagonal(dim1=-2, dim2=-1).add_(a)
        X = torch.bmm(C, Xf).to(low) if fp32_products else torch.bmm(C.to(low), X)
    return X


def _mm_fp32(x: Tensor, y: Tensor) -> Tensor:
    """``x @ y`` of low-precision batches with fp32 accumulation and an fp32 result (exact products)."""
    if x.device.type == "cuda":
        try:
            return torch.bmm(x, y, out_dtype=torch.float32)
        except (TypeError, RuntimeError, NotImplementedError):  # torch without out_dtype for this dtype
            pass
    return torch.bmm(x.float(), y.float())


def _iterate_gram(X: Tensor, schedule: _Schedule, steps: int) -> Tensor:
    """The same iteration on the Gram matrix ``R = X Xᵀ`` (m×m), touching the m×n X only twice.

    Each step is ``X_{k+1} = P_k X_k`` with ``P_k = a·I + b·R_k + c·R_k²``; P_k is a polynomial in R_k, so
    the two commute and ``R_{k+1} = P_k R_k P_k``. Hence ``X_K = Q X_0`` with ``Q = P_{K−1}···P_0``:
    ``2·m²·n`` (R) + ``2·m²·n`` (Q X) + ``(4·K − 3)·2·m³`` FLOPs instead of ``K·(4·m²·n + 2·m³)``
    (Gram Newton–Schulz, as in Dao-AILab's gram-newton-schulz).
    """
    R = torch.bmm(X, X.mT)
    a, b, c = schedule.at(0)
    P = torch.baddbmm(R, R, R, beta=b, alpha=c)
    P.diagonal(dim1=-2, dim2=-1).add_(a)
    Q = P
    for k in range(1, steps):
        R = torch.bmm(P, torch.bmm(R, P))
        a, b, c = schedule.at(k)
        P = torch.baddbmm(R, R, R, beta=b, alpha=c)
        P.diagonal(dim1=-2, dim2=-1).add_(a)
        Q = torch.bmm(P, Q)
    return torch.bmm(Q, X)


def newton_schulz_flops(m: int, n: int, steps: int = 5) -> int:
    """Multiply-add FLOPs (2 per MAC) of ``steps`` iterations on one m×n matrix: ``steps·(4·s²·l + 2·s³)``
    with s = min(m, n), l = max(m, n)."""
    s, big = min(m, n), max(m, n)
    return steps * (4 * s * s * big + 2 * s * s * s)
