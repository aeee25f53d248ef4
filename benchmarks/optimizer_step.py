"""Optimizer step time and state memory on a GPT-like parameter set, against peers measured in the same run.

Per layer: 512×1536 (qkv), 512×512 (proj), 512×2048 (mlp in), 2048×512 (mlp out) and two norm vectors,
plus a final norm (6 layers, width 512 by default; ``--layers``/``--width`` change it). Gradients are fixed
random tensors, so only the optimizer step is timed. Reports medians and these ratios:

* ``optimizers.AdamW`` / ``torch.optim.AdamW(fused=True)``                              goal ≤ 1.05
* Newton–Schulz of every matrix (``orthogonalize_updates``) / the same batched GEMMs     goal ≤ 1.1
  alone (``bmm``/``baddbmm`` into preallocated buffers, the NS's own shapes): the FLOP bound
* ``optimizers.Muon`` step / those GEMMs                                                 goal ≤ 1.5
* ``optimizers.Muon`` / ``torch.optim.Muon`` (same ns_steps; matrices only)              goal ≤ 0.05
* ``optimizers.Muon`` / ``heavyball.Muon`` and / ``pytorch_optimizer.Muon``, when installed (optional,
  never required: ``pip install heavyball pytorch-optimizer``)
* ``optimizers.Muon(ns_method="auto")`` (Gram Newton–Schulz on the long matrices) against the same
  GEMMs and against the default ``optimizers.Muon``
* optimizer-state buffers per matrix: Muon 1, AdamW 2

All contenders of one table are timed interleaved (round-robin, order reversed every round), so load
on a shared machine hits them alike; the load average is recorded. The peers iterate in bf16, which
on a CPU is very slow: they are timed over ``--peer-steps`` steps (default 1, no warm-up).

What the peers cannot match, and why their times differ:

* ``torch.optim.Muon``: Newton–Schulz always in bf16 (``a·X`` folded into the GEMM); 2-D parameters only.
* ``heavyball.Muon``: bf16 Newton–Schulz with its own per-step coefficient schedule, 5 steps fixed;
  compiled with ``torch.compile`` by default (disabled here: compiling takes minutes on a CPU); its
  step sets ``p.grad`` to ``None`` (3.2.1).
* ``pytorch_optimizer.Muon``: bf16 Newton–Schulz; its step overwrites ``p.grad`` (4.1.0).

The table records whether a peer's step left ``p.grad`` as it was ("p.grad kept"); where it did not,
the benchmark puts the gradient back after each step so that every timed step does the same work.

Usage::

    python -m benchmarks.optimizer_step --out results/optimizer_step.json
    python -m benchmarks.optimizer_step --quick        # seconds; used by the smoke test
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

import optimizers
from benchmarks._report import machine, ratio_row, run_script, time_interleaved
from optimizers import newton_schulz_flops, orthogonalize_updates
from optimizers.newton_schulz import default_ns_dtype


def gpt_like_shapes(layers: int, width: int) -> list[tuple[int, ...]]:
    """Matrix and norm shapes of a GPT-like block stack (weights stored as (out, in))."""
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


def newton_schulz_gemms(
    matrices: Sequence[tuple[int, int]], steps: int, dtype: torch.dtype, device: str
) -> tuple[Callable[[], None], int]:
    """The GEMMs of the batched Newton–Schulz alone, on its own shapes, into preallocated buffers.

    Matrices are grouped as :func:`optimizers.orthogonalize_updates` groups them (wide orientation, one
    stack per shape); per step ``A = X Xᵀ`` (bmm), ``B = b·A + c·A²`` (baddbmm), ``Y = B X`` (bmm).
    Returns the callable and its FLOP count (= :func:`optimizers.newton_schulz_flops` summed).
    """
    counts: dict[tuple[int, int], int] = {}
    for m, n in matrices:
        key = (min(m, n), max(m, n))
        counts[key] = counts.get(key, 0) + 1
    g = torch.Generator().manual_seed(1)
    work = []
    for (m, n), b in counts.items():
        X = (torch.randn(b, m, n, generator=g) / (m * n) ** 0.5).to(device=device, dtype=dtype)
        work.append((X, X.new_empty(b, m, m), X.new_empty(b, m, m), torch.empty_like(X)))

    def run() -> None:
        for X, A, B, Y in work:
            for _ in range(steps):
                torch.bmm(X, X.mT, out=A)
                torch.baddbmm(A, A, A, beta=-4.775, alpha=2.0315, out=B)
                torch.bmm(B, X, out=Y)

    return run, sum(b * newton_schulz_flops(m, n, steps) for (m, n), b in counts.items())


PEER_NAMES = {"torch": "torch.optim.Muon", "heavyball": "heavyball.Muon", "pytorch_optimizer": "pytorch_optimizer.Muon"}


def _peers(base: Sequence[torch.Tensor], ns_steps: int) -> dict[str, tuple[str, torch.optim.Optimizer, list[torch.Tensor]]]:
    """``{key: (label, optimizer, params)}`` for every installed peer, on the matrices only."""
    peers: dict[str, tuple[str, torch.optim.Optimizer, list[torch.Tensor]]] = {}

    def matrices() -> list[torch.Tensor]:
        return [p for p in clone_params(base) if p.ndim >= 2]

    ps = matrices()
    peers["torch"] = (f"torch.optim.Muon(ns_steps={ns_steps})", torch.optim.Muon(ps, lr=0.02, ns_steps=ns_steps), ps)
    try:
        import heavyball
        import heavyball.utils

        heavyball.utils.compile_mode = None  # torch.compile of the step takes minutes on a CPU
        ps = matrices()
        peers["heavyball"] = ("heavyball.Muon (5 NS steps, fixed)", heavyball.Muon(ps, lr=0.02), ps)
    except ImportError:
        pass
    try:
        import pytorch_optimizer

        ps = matrices()
        opt = pytorch_optimizer.Muon([dict(params=ps, use_muon=True)], lr=0.02, ns_steps=ns_steps)
        peers["pytorch_optimizer"] = (f"pytorch_optimizer.Muon(ns_steps={ns_steps})", opt, ps)
    except ImportError:
        pass
    return peers


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
    ap.add_argument("--muon-steps", type=int, default=5, help="timed steps of our Muon (and of the GEMM probe)")
    ap.add_argument("--peer-steps", "--torch-muon-steps", dest="peer_steps", type=int, default=1,
                    help="timed steps of each peer Muon (bf16 on CPU: minutes per step)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--ns-steps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (there the NS runs in bf16, peers too)")
    ap.add_argument("--skip-peers", "--skip-torch-muon", dest="skip_peers", action="store_true",
                    help="do not time the peer Muons")
    ap.add_argument("--quick", action="store_true", help="1 layer, width 64, few steps (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.width = 1, 64
        args.adamw_steps, args.muon_steps, args.peer_steps, args.warmup = 3, 2, 1, 1
    for name in ("layers", "width", "adamw_steps", "muon_steps", "peer_steps", "ns_steps"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    med = statistics.median
    shapes = gpt_like_shapes(args.layers, args.width)
    base = make_params(shapes, device=args.device)
    matrices = [s for s in shapes if len(s) >= 2]
    n_params = sum(torch.Size(s).numel() for s in shapes)

    # AdamW: ours vs torch fused, interleaved.
    ours_p, torch_p = clone_params(base), clone_params(base)
    ours_adamw = optimizers.AdamW(ours_p, lr=1e-3, weight_decay=0.1)
    torch_adamw = torch.optim.AdamW(torch_p, lr=1e-3, weight_decay=0.1, fused=True)
    adamw_times, _ = time_interleaved({"ours": ours_adamw.step, "torch_fused": torch_adamw.step}, args.adamw_steps, args.warmup)

    # Muon, its Newton–Schulz alone, and the NS's GEMMs alone (the FLOP bound), interleaved.
    muon_p, gram_p = clone_params(base), clone_params(base)
    ours_muon = optimizers.Muon(muon_p, lr=0.02, ns_steps=args.ns_steps)
    ours_gram = optimizers.Muon(gram_p, lr=0.02, ns_steps=args.ns_steps, ns_method="auto")
    ns_dtype = default_ns_dtype(args.device)
    updates = [p.grad for p in base if p.ndim >= 2]
    gemms, ns_flops = newton_schulz_gemms([s for s in matrices], args.ns_steps, ns_dtype, args.device)  # type: ignore[misc]
    muon_times, muon_cpu = time_interleaved(
        {
            "muon": ours_muon.step,
            "muon_auto": ours_gram.step,
            "ns": lambda: orthogonalize_updates(updates, steps=args.ns_steps, coefficients="quintic", dtype=None),
            "gemms": gemms,
        },
        args.muon_steps, args.warmup,
    )
    gemm_s = med(muon_times["gemms"])
    rate = ns_flops / gemm_s

    # Peers on the matrices only, first step included (no warm-up: minutes on a CPU).
    peer_rows = []
    if not args.skip_peers:
        peers = _peers(base, args.ns_steps)
        saved = {k: [p.grad.clone() for p in ps] for k, (_, _, ps) in peers.items()}
        kept: dict[str, bool] = {}

        def stepper(key: str) -> Callable[[], None]:
            _, opt, ps = peers[key]

            def step() -> None:
                opt.step()
                # A peer that rewrites or drops p.grad gets it back (a copy: µs against its seconds).
                if key not in kept:
                    kept[key] = all(p.grad is not None and torch.equal(p.grad, g) for p, g in zip(ps, saved[key]))
                if not kept[key]:
                    for p, g in zip(ps, saved[key]):
                        p.grad = g.clone()

            return step

        peer_times, _ = time_interleaved({k: stepper(k) for k in peers}, args.peer_steps, warmup=0)
        for key, (label, _, _) in peers.items():
            peer_rows.append(ratio_row(f"Muon step vs {PEER_NAMES[key]}", med(muon_times["muon"]), f"{label} [{args.peer_steps} step(s)]",
                                       med(peer_times[key]), 0.05 if key == "torch" else None, grad_kept=kept[key]))

    muon_buffers, muon_bytes = state_buffers(ours_muon, muon_p)
    adamw_buffers, adamw_bytes = state_buffers(ours_adamw, ours_p)
    flop_peer = f"{ns_flops / 1e9:.1f} GFLOP of batched GEMMs alone ({rate / 1e9:.1f} GFLOP/s, {str(ns_dtype)[6:]})"
    rows = [
        ratio_row("AdamW step", med(adamw_times["ours"]), "torch.optim.AdamW(fused=True)", med(adamw_times["torch_fused"]), 1.05),
        ratio_row("Newton–Schulz vs its GEMMs alone", med(muon_times["ns"]), flop_peer, gemm_s, 1.1,
                  cpu_time_ratio=med(muon_cpu["ns"]) / med(muon_cpu["gemms"])),
        ratio_row("Muon step vs NS FLOP model", med(muon_times["muon"]), flop_peer, gemm_s, 1.5),
        *peer_rows,
        ratio_row("Muon(ns_method='auto') vs NS FLOP model", med(muon_times["muon_auto"]), "same GEMMs (standard-NS FLOPs)", gemm_s, 1.5),
        ratio_row("Muon(ns_method='auto') vs Muon()", med(muon_times["muon_auto"]), "optimizers.Muon() (standard NS)", med(muon_times["muon"]), 1.0),
    ]
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": machine(args.device),
        "parameters": n_params,
        "matrices": len(matrices),
        "ns_gflop_per_step": ns_flops / 1e9,
        "matmul_gflops": rate / 1e9,  # measured on the NS's own batched shapes, in its compute dtype
        "ns_dtype": str(ns_dtype),
        "rows": rows,
        "raw_times_s": {"adamw": adamw_times, "muon": muon_times},
        "state": {
            "muon_full_size_buffers_per_matrix": muon_buffers, "muon_state_bytes": muon_bytes,
            "adamw_full_size_buffers_per_matrix": adamw_buffers, "adamw_state_bytes": adamw_bytes,
        },
    }


def render(result: dict[str, Any], console: Console) -> None:
    m = result["machine"]
    load = f", load avg {m['load_avg_1min']:.1f}" if m.get("load_avg_1min") is not None else ""
    table = Table(title=f"Optimizer step, {result['parameters'] / 1e6:.2f} M params, "
                        f"{result['matrices']} matrices, {m['threads']} threads{load}")
    for col in ("comparison", "ours (median)", "peer", "peer (median)", "ratio", "goal", "ok"):
        table.add_column(col)

    def fmt(s: float | None) -> str:
        return "—" if s is None else (f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.1f} ms")

    for r in result["rows"]:
        peer = r["peer"] + ("" if "grad_kept" not in r else f"; p.grad kept: {'yes' if r['grad_kept'] else 'NO'}")
        table.add_row(
            r["name"], fmt(r["ours_s"]), peer, fmt(r["peer_s"]),
            f"{r['ratio']:.3f}" if r["ratio"] is not None else "—", "—" if r["goal"] is None else f"≤ {r['goal']}",
            {True: "yes", False: "NO", None: "—"}[r["meets_goal"]],
        )
    st = result["state"]
    table.add_row("state buffers / matrix", f"Muon {st['muon_full_size_buffers_per_matrix']:g}", "AdamW",
                  f"{st['adamw_full_size_buffers_per_matrix']:g}", "", "1 vs 2",
                  "yes" if st["muon_full_size_buffers_per_matrix"] == 1 and st["adamw_full_size_buffers_per_matrix"] == 2 else "NO")
    console.print(table)
    console.print(f"{result['ns_dtype']} GEMM rate on the Newton–Schulz shapes, measured in this run: "
                  f"{result['matmul_gflops']:.1f} GFLOP/s; Newton–Schulz work per Muon step: {result['ns_gflop_per_step']:.1f} GFLOP")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_script(argv, parse_args, run, render)


if __name__ == "__main__":
    main()
