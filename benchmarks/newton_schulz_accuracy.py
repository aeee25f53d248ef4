"""Newton–Schulz accuracy: relative error against a float64 reference over aspect ratios 1–8.

For each m×(r·m) matrix (r = 1, 2, 3, 4, 6, 8; Gaussian, and "ill-conditioned": singular values spread
log-uniformly over 3 decades, as in a gradient dominated by a few directions) and 5 quintic steps:

* fp32 ``standard`` (the default) and fp32 ``gram`` (``ns_method="gram"``, what ``"auto"`` picks for
  r ≥ 2 in fp32);
* bf16 ``standard`` as run on a CPU (fp32 products of the bf16 ``X``) and as run on CUDA (bf16 GEMMs,
  computed here on the CPU with the same arithmetic), bf16 ``gram``, and torch.optim.Muon's bf16 form
  (``a·X`` folded into the last GEMM) written out.

Error: ``‖O − O₆₄‖_F / ‖O₆₄‖_F``, mean over ``--seeds`` matrices, where ``O₆₄`` is the same iteration in
float64 (so only rounding is measured, not the distance to the exact polar factor).

Usage::

    python -m benchmarks.newton_schulz_accuracy --out results/newton_schulz_accuracy.json
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from benchmarks._report import machine, run_script
from optimizers import newton_schulz
from optimizers.newton_schulz import NS_COEFFICIENTS, _iterate_low_precision

RATIOS = (1, 2, 3, 4, 6, 8)


def torch_form_bf16(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """torch.optim.Muon's bf16 iteration on a wide matrix: ``X ← addmm(X, B, X, beta=a)``."""
    a, b, c = NS_COEFFICIENTS["quintic"].at(0)
    X = (G / G.norm().clamp_min(1e-7)).bfloat16()
    for _ in range(steps):
        A = X @ X.mT
        B = torch.addmm(A, A, A, beta=b, alpha=c)
        X = torch.addmm(X, B, X, beta=a)
    return X


def cuda_form_bf16(G: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Our bf16 iteration as it runs on CUDA (bf16 GEMMs), computed on this device."""
    X = (G / G.norm()).bfloat16().unsqueeze(0)
    return _iterate_low_precision(X, NS_COEFFICIENTS["quintic"], steps, fp32_products=False)[0]


FORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "fp32 standard": lambda G: newton_schulz(G, dtype=torch.float32),
    "fp32 gram": lambda G: newton_schulz(G, dtype=torch.float32, method="gram"),
    "bf16 standard (CPU form)": lambda G: newton_schulz(G.cpu(), dtype=torch.bfloat16),
    "bf16 standard (CUDA form)": cuda_form_bf16,
    "bf16 gram": lambda G: newton_schulz(G, dtype=torch.bfloat16, method="gram"),
    "bf16 torch.optim.Muon form": torch_form_bf16,
}


def make_matrix(m: int, n: int, kind: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    G = torch.randn(m, n, generator=g, dtype=torch.float64)
    if kind == "ill-conditioned":
        U, _, Vh = torch.linalg.svd(G, full_matrices=False)
        S = torch.logspace(0, -3, m, dtype=torch.float64)
        G = U @ torch.diag(S) @ Vh
    return G


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=96, help="short side (default 96)")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="m = 16, ratios 1 and 4, one seed")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    args.ratios = (1, 4) if args.quick else RATIOS
    if args.quick:
        args.m, args.seeds = 16, 1
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    rows = []
    for kind in ("gaussian", "ill-conditioned"):
        for r in args.ratios:
            m, n = args.m, r * args.m
            errors: dict[str, list[float]] = {name: [] for name in FORMS}
            for seed in range(args.seeds):
                G = make_matrix(m, n, kind, seed)
                exact = newton_schulz(G, dtype=torch.float64)
                for name, form in FORMS.items():
                    out = form(G.float()).double()
                    errors[name].append(((out - exact).norm() / exact.norm()).item())
            rows.append({"kind": kind, "m": m, "n": n, "ratio": r, **{k: statistics.mean(v) for k, v in errors.items()}})
    return {"config": {"m": args.m, "seeds": args.seeds, "ratios": list(args.ratios)}, "machine": machine(), "forms": list(FORMS), "rows": rows}


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title="Newton–Schulz relative error vs float64 (5 quintic steps)")
    table.add_column("matrix")
    for name in result["forms"]:
        table.add_column(name, justify="right")
    for row in result["rows"]:
        table.add_row(f"{row['kind']} {row['m']}×{row['n']}", *[f"{row[name]:.1e}" for name in result["forms"]])
    console.print(table)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_script(argv, parse_args, run, render, width=170)


if __name__ == "__main__":
    main()
