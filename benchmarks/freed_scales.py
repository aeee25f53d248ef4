"""Freed scales (arXiv 2601.04890 Fig. 2 and 3): do learnable multipliers let row norms and per-layer
scales leave the band that lr and weight decay set?

AdamW and Muon, each without and with vector multipliers, train at one strong-decay cell (the
equilibrium forms when ``steps·lr·wd`` ≫ 1). At the end, from ``mp.stats(optimizer)``: per hidden
matrix, RMS(W) against the predicted equilibrium, RMS(W_eff), and the 90/10 quantile ratio of the
row norms and column norms of W_eff; for the multiplier arms the multipliers' overall scale per
layer. Reported: the mean row/column-norm spread per arm, the paired difference with − without
multipliers (by seed), the histogram of log row norms pooled over hidden matrices (Fig. 3) and
the multiplier scale vs depth per projection (Fig. 2).

    python benchmarks/freed_scales.py                  # --preset quick, CPU
    python benchmarks/freed_scales.py --preset full --device cuda

Writes ``results/freed_scales.json`` and, with matplotlib, ``.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._harness import ARMS, RunRecord, default_workers, mean_spread, run_many  # noqa: E402
from reference_models import ByteCorpus, GPTConfig, TrainConfig  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(model="tiny", model_overrides=dict(n_layer=2), steps=6, warmup_steps=2, batch_size=4, seq_len=32,
                  eval_batches=1, cells={"adamw": (1e-2, 1.0), "muon": (1e-2, 1.0)}, seeds=[0]),
    "quick": dict(model="tiny", model_overrides=dict(n_layer=4), steps=400, warmup_steps=20, batch_size=16, seq_len=64,
                  eval_batches=16, cells={"adamw": (1e-2, 1.0), "muon": (1e-2, 1.0)}, seeds=[0, 1]),
    "full": dict(model="medium", model_overrides={}, steps=2000, warmup_steps=100, batch_size=32, seq_len=256,
                 eval_batches=32, cells={"adamw": (1e-2, 1.0), "muon": (1e-2, 1.0)}, seeds=[0, 1, 2]),
}
_LAYER = re.compile(r"blocks\.(\d+)\.(.+)\.weight$")


def arm_summary(records: list[RunRecord]) -> dict[str, Any]:
    """Seed lists of the mean (over hidden matrices) row/column-norm spread, RMS(W)/equilibrium and
    RMS(W_eff)/RMS(W) of one arm's runs."""
    def per_run(key: str, fn: Any = None) -> list[float]:
        out = []
        for r in records:
            vals = [fn(e) if fn else e[key] for e in r.stats.values() if e["role"] == "matrix"]
            out.append(statistics.fmean(vals))
        return out

    return dict(
        seeds=[r.seed for r in records],
        final_val_loss=[r.final_val_loss for r in records],
        row_norm_spread=per_run("row_norm_spread"),
        col_norm_spread=per_run("col_norm_spread"),
        rms_over_equilibrium=per_run("", lambda e: e["rms_w"] / e["equilibrium_rms"]),
        eff_over_raw=per_run("", lambda e: e["rms_w_eff"] / e["rms_w"]),
    )


def depth_profile(record: RunRecord) -> dict[str, list[float]]:
    """Projection name (``attn.q_proj``, ...) → multiplier scale per layer, in layer order."""
    out: dict[str, dict[int, float]] = {}
    for fqn, e in record.stats.items():
        m = _LAYER.match(fqn)
        if m and "mult_scale" in e:
            out.setdefault(m.group(2), {})[int(m.group(1))] = e["mult_scale"]
    return {k: [v[i] for i in sorted(v)] for k, v in sorted(out.items())}


def _fmt(values: list[float]) -> str:
    mean, spread = mean_spread(values)
    return f"{mean:.4f} ± {spread:.4f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", default="results/freed_scales.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    p = dict(PRESETS[args.preset])
    if args.seeds is not None:
        p["seeds"] = args.seeds
    console = Console(width=None if Console().is_terminal else 180)
    model_config = GPTConfig.preset(p["model"], **p["model_overrides"])
    base = TrainConfig(steps=p["steps"], warmup_steps=p["warmup_steps"], batch_size=p["batch_size"], seq_len=p["seq_len"],
                       eval_batches=p["eval_batches"], device=args.device, progress=not args.no_progress)
    workers = args.workers or default_workers(args.device)
    console.print(f"[bold]freed_scales[/] preset={args.preset} model {model_config.n_layer}L d={model_config.d_model}, "
                  + ", ".join(f"{k} (lr {lr:g}, wd {wd:g}, steps·lr·wd {p['steps'] * lr * wd:g})" for k, (lr, wd) in p["cells"].items()))
    start = time.perf_counter()
    arms = list(ARMS.values())
    jobs = [(arm, dict(lr=p["cells"][arm.optimizer][0], weight_decay=p["cells"][arm.optimizer][1], seed=s, keep_row_norms=True))
            for arm in arms for s in p["seeds"]]
    records = run_many(model_config, base, jobs, corpus=ByteCorpus.load(args.data), workers=workers,
                       on_done=lambda r: console.print(f"  {r.arm} seed={r.seed} val={r.final_val_loss:.4f} ({r.wall_s:.0f} s)"))
    summary = {arm.name: arm_summary([r for r in records if r.arm == arm.name]) for arm in arms}
    t = Table(title=f"hidden matrices at the end (mean over matrices; mean ± std over seeds {p['seeds']})")
    for col in ("arm", "val loss", "row-norm q90/q10", "col-norm q90/q10", "RMS(W) / equilibrium", "RMS(W_eff) / RMS(W)"):
        t.add_column(col, justify="left" if col == "arm" else "right")
    for name, s in summary.items():
        t.add_row(name, _fmt(s["final_val_loss"]), _fmt(s["row_norm_spread"]), _fmt(s["col_norm_spread"]),
                  _fmt(s["rms_over_equilibrium"]), _fmt(s["eff_over_raw"]))
    console.print(t)
    diffs = {}
    for opt in ("adamw", "muon"):
        a, b = summary[f"{opt}+mult"], summary[opt]
        diffs[opt] = {k: [x - y for x, y in zip(a[k], b[k])] for k in ("row_norm_spread", "col_norm_spread", "final_val_loss")}
    dt = Table(title="with − without multipliers, paired by seed (positive spread: broader norms with multipliers)")
    for col in ("optimizer", "Δ row-norm spread", "Δ col-norm spread", "Δ val loss"):
        dt.add_column(col, justify="left" if col == "optimizer" else "right")
    for opt, d in diffs.items():
        dt.add_row(opt, _fmt(d["row_norm_spread"]), _fmt(d["col_norm_spread"]), _fmt(d["final_val_loss"]))
    console.print(dt)
    depth = {r.arm: depth_profile(r) for r in records if r.seed == p["seeds"][0] and ARMS[r.arm].has_multipliers}
    for arm, prof in depth.items():
        console.print(f"{arm}: multiplier scale by layer (seed {p['seeds'][0]}): "
                      + "; ".join(f"{k} " + " ".join(f"{v:.2f}" for v in vals) for k, vals in prof.items()))
    out = dict(preset=args.preset, settings=p, model=model_config.to_dict(), summary=summary, differences=diffs, depth=depth,
               runs=[{**r.to_dict(curve_points=20), "row_norms": {}} for r in records], wall_s=time.perf_counter() - start)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    console.print(f"total wall time {out['wall_s']:.0f} s; wrote {path}")
    png = _plot(records, depth, p["seeds"][0], path.with_suffix(".png"))
    if png:
        console.print(f"wrote {png}")
    return out


def _plot(records: list[RunRecord], depth: dict[str, dict[str, list[float]]], seed: int, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    for ax, opt in zip(axes[:2], ("adamw", "muon")):
        for name in (opt, f"{opt}+mult"):
            rec = next(r for r in records if r.arm == name and r.seed == seed)
            logs = [math.log10(v) for rows in rec.row_norms.values() for v in rows if v > 0]
            ax.hist(logs, bins=40, alpha=0.5, density=True, label=name)
        ax.set_xlabel("log10 row norm of W_eff (hidden matrices)")
        ax.set_title(f"Fig. 3: row norms, {opt}")
        ax.legend(fontsize=8)
    ax = axes[2]
    for arm, prof in depth.items():
        for proj, vals in prof.items():
            ax.plot(range(len(vals)), vals, marker="o", ms=3, ls="-" if arm.startswith("muon") else "--", label=f"{arm} {proj}")
    ax.set_xlabel("layer")
    ax.set_ylabel("multiplier scale RMS(r)·RMS(c)")
    ax.set_title("Fig. 2: multiplier scale vs depth")
    ax.legend(fontsize=5, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
