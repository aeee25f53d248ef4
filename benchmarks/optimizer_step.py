"""Optimizer step time and state memory on a GPT-like parameter set, against peers measured in the same run.

Per layer: 512×1536 (qkv), 512×512 (proj), 512×2048 (mlp in), 2048×512 (mlp out) and two norm vectors,
plus a final norm (6 layers, width 512 by default; ``--layers``/``--width`` change it). Gradients are fixed
random tensors, so only the optimizer step is timed. Reports medians and these ratios:

* ``optimizers.AdamW`` / ``torch.optim.AdamW(fused=True)``                          goal ≤ 1.05
* ``optimizers.Muon`` / ``torch.optim.Muon`` (same ns_steps; its matrices only,      goal ≤ 0.05
  timed over ``--torch-muon-steps`` steps: one takes minutes on a CPU)
* ``optimizers.Muon`` / (Newton–Schulz FLOPs ÷ measured fp32 matmul rate)             goal ≤ 1.5
* ``optimizers.Muon(ns_method="auto")`` (Gram Newton–Schulz on the long matrices) against the same
  model and against the default ``optimizers.Muon``
* optimizer-state buffers per matrix: Muon 1, AdamW 2

Usage::

    python -m benchmarks.optimizer_step --out results/optimizer_step.json
    python -m benchmarks.optimizer_step --quick        # seconds; used by the smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import optimizers
from optimizers import newton_schulz_flops
from optimizers.newton_schulz import default_ns_dtype


def gpt_like_shapes(layers: int, width: int) -> list[tuple[int, ...]]:
    """Matrix and norm shapes of a GPT-like block stack (weights stored as (out, in) ... as in the issue)."""
    shapes: list[tuple[int, ...]] = []
    for _ in range(layers):
        shapes += [(width, 3 * width), (width, width), (width, 4 * width), (4 * width, width), (width,), (width,)]
    shapes.append((width,))
    return shapes


def make_params(shapes: Sequence[tuple[int, ...]], seed: int = 0, device: str = "cpu") -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    params = []
    for s in shapes:
        p = (torch.randn(s, generator=g) * 0.02).to(device).requires_grad_()
        p.grad = torch.randn(s, generator=g).to(device)
        params.append(p)
    return params


def clone_params(params: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_()
        q.grad = p.grad.clone()
        out.append(q)
    return out


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def time_steps(step: Callable[[], Any], n: int) -> list[float]:
    times = []
    for _ in range(n):
        _sync()
        t0 = time.perf_counter()
        step()
        _sync()
        times.append(time.perf_counter() - t0)
    return times


def time_interleaved(steps: dict[str, Callable[[], Any]], n: int, warmup: int) -> dict[str, list[float]]:
    """Alternate the contenders step by step, so load drift on a shared machine hits all of them alike."""
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {k: [] for k in steps}
    for _ in range(n):
        for name, fn in steps.items():
            times[name] += time_steps(fn, 1)
    return times


GEMMS_PER_PROBE = 8
"""fp32 rate probe: this many (w×w)·(w×4w) products (the NS's dominant shape) after each Muon step."""


def state_buffers(opt: torch.optim.Optimizer, params: Sequence[torch.Tensor]) -> tuple[float, int]:
    """(full-size state tensors per matrix parameter, total state bytes)."""
    per_matrix = [
        sum(1 for v in opt.state[p].values() if torch.is_tensor(v) and v.shape == p.shape)
        for p in params
        if p.ndim >= 2
    ]
    total = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values() if torch.is_tensor(v))
    return statistics.mean(per_matrix), total


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--adamw-steps", type=int, default=30, help="timed AdamW steps per contender")
    ap.add_argument("--muon-steps", type=int, default=5, help="timed steps of our Muon")
    ap.add_argument("--torch-muon-steps", type=int, default=1, help="timed steps of torch.optim.Muon (slow on CPU)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ns-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu (the issue's setting) or cuda")
    ap.add_argument("--skip-torch-muon", action="store_true", help="do not time torch.optim.Muon")
    ap.add_argument("--quick", action="store_true", help="1 layer, width 64, few steps (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.width = 1, 64
        args.adamw_steps, args.muon_steps, args.torch_muon_steps, args.warmup = 3, 2, 1, 1
    for name in ("layers", "width", "adamw_steps", "muon_steps", "torch_muon_steps", "ns_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    shapes = gpt_like_shapes(args.layers, args.width)
    base = make_params(shapes, device=args.device)
    matrices = [s for s in shapes if len(s) >= 2]
    n_params = sum(torch.Size(s).numel() for s in shapes)

    # AdamW: ours vs torch fused, interleaved.
    ours_p, torch_p = clone_params(base), clone_params(base)
    ours_adamw = optimizers.AdamW(ours_p, lr=1e-3, weight_decay=0.1)
    torch_adamw = torch.optim.AdamW(torch_p, lr=1e-3, weight_decay=0.1, fused=True)
    adamw_times = time_interleaved(
        {"ours": ours_adamw.step, "torch_fused": torch_adamw.step}, args.adamw_steps, args.warmup
    )

    # Muon: ours on everything (matrices → Muon, vectors → AdamW rule).
    muon_p, gram_p = clone_params(base), clone_params(base)
    ours_muon = optimizers.Muon(muon_p, lr=0.02, ns_steps=args.ns_steps)
    # Opt-in Gram Newton–Schulz for matrices with aspect ratio >= 2 (fp32 on CPU).
    ours_gram = optimizers.Muon(gram_p, lr=0.02, ns_steps=args.ns_steps, ns_method="auto")
    # FLOP model: NS FLOPs of all matrices ÷ the fp32 GEMM rate, probed between our Muon steps so both
    # see the same load on a shared machine.
    # The probe runs in Muon's NS compute dtype (fp32 on CPU, bf16 on CUDA).
    ns_dtype = default_ns_dtype(args.device)
    a = torch.randn(args.width, args.width, device=args.device, dtype=ns_dtype)
    b = torch.randn(args.width, 4 * args.width, device=args.device, dtype=ns_dtype)
    gemm_flops = 2 * args.width * args.width * 4 * args.width
    muon_times = time_interleaved(
        {
            "ours": ours_muon.step,
            "ours_gram": ours_gram.step,
            "gemm": lambda: [torch.mm(a, b) for _ in range(GEMMS_PER_PROBE)],
        },
        args.muon_steps, args.warmup,
    )
    ours_muon_times, gram_times = muon_times["ours"], muon_times["ours_gram"]
    rate_times = [t / GEMMS_PER_PROBE for t in muon_times["gemm"]]
    rate = gemm_flops / statistics.median(rate_times)
    ns_flops = sum(newton_schulz_flops(m, n, args.ns_steps) for m, n in matrices)
    ideal = ns_flops / rate

    # torch.optim.Muon on the matrices only (it rejects vectors); first step included (no warm-up: minutes).
    torch_muon_times: list[float] = []
    if not args.skip_torch_muon:
        tm_p = [p for p in clone_params(base) if p.ndim >= 2]
        torch_muon = torch.optim.Muon(tm_p, lr=0.02, ns_steps=args.ns_steps)
        torch_muon_times = time_steps(torch_muon.step, args.torch_muon_steps)

    muon_buffers, muon_bytes = state_buffers(ours_muon, muon_p)
    adamw_buffers, adamw_bytes = state_buffers(ours_adamw, ours_p)

    med = statistics.median
    rows = [
        dict(name="AdamW step", ours_s=med(adamw_times["ours"]), peer="torch.optim.AdamW(fused=True)",
             peer_s=med(adamw_times["torch_fused"]), goal=1.05),
        dict(name="Muon step vs torch.optim.Muon", ours_s=med(ours_muon_times),
             peer=f"torch.optim.Muon(ns_steps={args.ns_steps}) [{len(torch_muon_times)} step(s)]",
             peer_s=med(torch_muon_times) if torch_muon_times else None, goal=0.05),
        dict(name="Muon step vs NS FLOP model", ours_s=med(ours_muon_times),
             peer=f"{ns_flops / 1e9:.1f} GFLOP ÷ {rate / 1e9:.1f} GFLOP/s ({str(ns_dtype)[6:]})", peer_s=ideal,
             goal=1.5),
        dict(name="Muon(ns_method='auto') vs NS FLOP model", ours_s=med(gram_times),
             peer="same model (standard-NS FLOPs)", peer_s=ideal, goal=1.5),
        dict(name="Muon(ns_method='auto') vs Muon()", ours_s=med(gram_times),
             peer="optimizers.Muon() (standard NS)", peer_s=med(ours_muon_times), goal=1.0),
    ]
    for r in rows:
        r["ratio"] = r["ours_s"] / r["peer_s"] if r["peer_s"] else None
        r["meets_goal"] = (r["ratio"] <= r["goal"]) if r["ratio"] is not None else None
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "device": torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu",
        },
        "parameters": n_params,
        "matrices": len(matrices),
        "ns_gflop_per_step": ns_flops / 1e9,
        "matmul_gflops": rate / 1e9,  # the NS dtype's rate: fp32 on CPU, bf16 on CUDA
        "ns_dtype": str(ns_dtype),
        "rows": rows,
        "raw_times_s": {
            "adamw_ours": adamw_times["ours"], "adamw_torch_fused": adamw_times["torch_fused"],
            "muon_ours": ours_muon_times, "muon_ours_gram": gram_times, "muon_torch": torch_muon_times, "matmul_per_gemm": rate_times,
        },
        "state": {
            "muon_full_size_buffers_per_matrix": muon_buffers, "muon_state_bytes": muon_bytes,
            "adamw_full_size_buffers_per_matrix": adamw_buffers, "adamw_state_bytes": adamw_bytes,
        },
    }


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(title=f"Optimizer step, {result['parameters'] / 1e6:.2f} M params, "
                        f"{result['matrices']} matrices, {result['machine']['threads']} threads")
    for col in ("comparison", "ours (median)", "peer", "peer (median)", "ratio", "goal", "ok"):
        table.add_column(col)
    for r in result["rows"]:
        fmt = (lambda s: f"{s * 1e3:.1f} ms" if s is not None else "—")
        table.add_row(
            r["name"], fmt(r["ours_s"]), r["peer"], fmt(r["peer_s"]),
            f"{r['ratio']:.3f}" if r["ratio"] is not None else "—", f"≤ {r['goal']}",
            {True: "yes", False: "NO", None: "—"}[r["meets_goal"]],
        )
    st = result["state"]
    table.add_row("state buffers / matrix", f"Muon {st['muon_full_size_buffers_per_matrix']:g}", "AdamW",
                  f"{st['adamw_full_size_buffers_per_matrix']:g}", "", "1 vs 2",
                  "yes" if st["muon_full_size_buffers_per_matrix"] == 1 and st["adamw_full_size_buffers_per_matrix"] == 2 else "NO")
    console.print(table)
    console.print(f"{result['ns_dtype']} matmul rate measured in this run: {result['matmul_gflops']:.1f} GFLOP/s; "
                  f"Newton–Schulz work per Muon step: {result['ns_gflop_per_step']:.1f} GFLOP")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    render(result, Console(width=150))
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
