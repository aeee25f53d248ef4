"""muP coordinate check of the reference GPT: per-layer activation RMS after a few training steps,
at several widths, under muP and under the standard parametrization (SP), in the same run.

Widths change ``d_model`` with a fixed head dim (16) and the SwiGLU width following ``d_model``;
muP uses the smallest width as the base model (per-matrix fan-in ratios, ``init_std`` = the
config's 0.02 at the base width, AdamW hidden lr × 1/m, logits × 1/m). Reported per module: RMS
per width at the last step and the log-log slope against width (≈ 0 is flat; SP's output and
hidden activations grow). Writes JSON always and a PNG when matplotlib is importable.

Usage::

    python -m benchmarks.coord_check               # writes results/coord_check.json (+ .png)
    python -m benchmarks.coord_check --quick        # seconds; used by the smoke test
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

import parametrization as P
from reference_models import GPT, GPTConfig

HEAD_DIM = 16


def make_model(preset: str, width: int) -> GPT:
    """The reference GPT at ``d_model = width`` with head dim 16 and GQA kept at 2 query heads per kv head."""
    n_head = max(1, width // HEAD_DIM)
    n_kv = n_head // 2 if n_head % 2 == 0 else n_head
    return GPT(GPTConfig.preset(preset, d_model=width, n_head=n_head, n_kv_head=n_kv, d_mlp=None))


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512])
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--lr", type=float, default=3e-3, help="AdamW lr at the base width (TrainConfig's default)")
    ap.add_argument("--multipliers", default="none", help="placement passed to parametrize (default none)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--quick", action="store_true", help="widths 32 64, 2 steps (smoke test)")
    ap.add_argument("--out", type=Path, default=Path("results/coord_check.json"), help="JSON here, a PNG beside it")
    args = ap.parse_args(argv)
    if args.quick:
        args.widths, args.steps, args.batch = [32, 64], 2, 2
    if len(args.widths) < 2 or any(w < HEAD_DIM or w % HEAD_DIM for w in args.widths):
        raise SystemExit(f"--widths needs at least two multiples of {HEAD_DIM}, got {args.widths}")
    if args.steps < 1 or args.batch < 1:
        raise SystemExit(f"--steps and --batch must be >= 1, got {args.steps}, {args.batch}")
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    config = GPTConfig.preset(args.preset)
    g = torch.Generator().manual_seed(0)
    batch = (
        torch.randint(0, config.vocab_size, (args.batch, config.seq_len), generator=g),
        torch.randint(0, config.vocab_size, (args.batch, config.seq_len), generator=g),
    )
    results = {}
    for mup in (True, False):
        results["muP" if mup else "SP"] = P.coord_check(
            lambda w: make_model(args.preset, w),
            args.widths,
            args.steps,
            batch=batch,
            mup=mup,
            lr=args.lr,
            multipliers=args.multipliers,
            parametrize_kwargs={"init_std": config.init_std},
        )
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads()},
        "results": {name: r.to_json() for name, r in results.items()},
        "_objects": results,
    }


def _summary_rows(result: dict[str, Any]) -> list[tuple[str, float, float]]:
    mup, sp = result["_objects"]["muP"], result["_objects"]["SP"]
    ms, ss = mup.slopes(), sp.slopes()
    return [(m, ms[m], ss[m]) for m in mup.modules]


def render(result: dict[str, Any], console: Console) -> None:
    for name in ("muP", "SP"):
        console.print(result["_objects"][name].table())
    t = Table(title="log-log slope of activation RMS vs width, last step (0 = flat)")
    t.add_column("module")
    t.add_column("muP", justify="right")
    t.add_column("SP", justify="right")
    for module, m, s in _summary_rows(result):
        t.add_row(module, f"{m:+.2f}", f"{s:+.2f}")
    console.print(t)


def write_png(result: dict[str, Any], path: Path) -> bool:
    """Plot RMS vs width per module (one panel per parametrization); False without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 5), sharey=True)
    for ax, name in zip(axes, ("muP", "SP")):
        r = result["_objects"][name]
        for module in r.modules:
            ax.plot(r.widths, r.rms(module), marker="o", label=module, linewidth=0.8)
        ax.set(xscale="log", yscale="log", xlabel="width", title=f"{name}, step {r.steps - 1}")
    axes[0].set_ylabel("activation RMS")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    result = run(args)
    render(result, Console(width=160))
    serializable = {k: v for k, v in result.items() if k != "_objects"}
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        serializable["png"] = str(args.out.with_suffix(".png")) if write_png(result, args.out.with_suffix(".png")) else None
        args.out.write_text(json.dumps(serializable, indent=2))
    return serializable


if __name__ == "__main__":
    main()
