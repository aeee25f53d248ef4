"""AdamW vs Muon, each with and without learnable multipliers, on the stdlib byte corpus.

Four arms (AdamW, AdamW + multipliers, Muon, Muon + multipliers) train the same model on the same
data and token budget. Fairness: every arm runs the same lr × wd grid with every seed, and is
reported at its own best cell (best-vs-best) as well as at a shared cell in the strong-decay regime
(``steps·lr·wd`` well above 1, where the weight-decay equilibrium forms, paper §1) and at the common
``wd = 0.1``. Muon uses ``lr_scale="match_rms_adamw"`` so one lr grid suits both optimizers.
Differences are paired by seed (a seed fixes the init and the batches).

    python benchmarks/adam_vs_muon.py                  # --preset quick, CPU, <= 10 min on 2 cores
    python benchmarks/adam_vs_muon.py --preset full --device cuda

Writes ``results/adam_vs_muon.json`` and, when matplotlib is importable, ``.png`` loss curves.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from reference_models import ByteCorpus, GPTConfig, TrainConfig  # noqa: E402
from benchmarks._harness import (  # noqa: E402
    ARMS,
    RunRecord,
    default_workers,
    first_reach,
    mean_spread,
    paired,
    records_at,
    run_many,
    smooth,
)

# All settings of a preset in one table. lrs × wds is the grid every arm runs with every seed;
# `shared` is the common cell in the strong-decay regime; `common_wd` the usual wd = 0.1.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(model="tiny", model_overrides=dict(n_layer=1), steps=6, warmup_steps=2, batch_size=4,
                  seq_len=32, lrs=[1e-2], wds=[0.1, 1.0], seeds=[0, 1], shared=(1e-2, 1.0), common_wd=0.1,
                  eval_batches=1, eval_every=2, multiplier_lrs=[None]),
    "quick": dict(model="tiny", model_overrides={}, steps=400, warmup_steps=20, batch_size=16, seq_len=64,
                  lrs=[3e-3, 1e-2], wds=[0.1, 1.0], seeds=[0, 1], shared=(1e-2, 1.0), common_wd=0.1,
                  eval_batches=16, eval_every=20, multiplier_lrs=[None]),
    "full": dict(model="small", model_overrides={}, steps=1000, warmup_steps=50, batch_size=32, seq_len=128,
                 lrs=[1e-3, 3e-3, 1e-2], wds=[0.1, 1.0], seeds=[0, 1, 2], shared=(1e-2, 1.0), common_wd=0.1,
                 eval_batches=32, eval_every=25, multiplier_lrs=[None]),
}


def _parse_floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x]


def _parse_mlrs(text: str) -> list[float | None]:
    return [None if x in ("default", "none") else float(x) for x in text.split(",") if x]


def _fmt(values: list[float]) -> str:
    mean, spread = mean_spread(values)
    return f"{mean:.4f} ± {spread:.4f}"


def steps_to_target(records: list[RunRecord], summary: dict[str, dict[str, Any]], steps: int,
                    reference: str = "adamw") -> dict[str, dict[str, Any]]:
    """Per arm at its best cell: the fraction of the run at which its validation curve first reaches
    the reference arm's final validation loss (at the reference's best cell, same seed). A fraction
    above 1 (``inf``) means never within the run."""
    if reference not in summary:
        return {}
    ref = summary[reference]["best"]
    target = {r.seed: r.final_val_loss for r in records_at(records, reference, ref["lr"], ref["weight_decay"])}
    out: dict[str, dict[str, Any]] = {}
    for name, s in summary.items():
        runs = [r for r in records_at(records, name, s["best"]["lr"], s["best"]["weight_decay"]) if r.seed in target]
        fractions = [first_reach(r.val_loss, target[r.seed]) / steps for r in runs]
        out[name] = dict(seeds=[r.seed for r in runs], fraction=fractions,
                         reached=sum(math.isfinite(f) for f in fractions))
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    parser.add_argument("--data", default="stdlib", help="'stdlib' or the path of a UTF-8 text file (.gz ok)")
    parser.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of " + ",".join(ARMS))
    parser.add_argument("--steps", type=int, help="override the preset's steps")
    parser.add_argument("--lrs", type=_parse_floats, help="override the lr grid, e.g. 3e-3,1e-2")
    parser.add_argument("--wds", type=_parse_floats, help="override the wd grid, e.g. 0.1,1.0")
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], help="e.g. 0,1,2")
    parser.add_argument("--shared", type=_parse_floats, help="override the shared cell, e.g. 3e-3,1.0")
    parser.add_argument("--multiplier-lrs", type=_parse_mlrs,
                        help="multiplier lrs to sweep at the shared cell, seed 0 ('default' = the parametrization's)")
    parser.add_argument("--out", default="results/adam_vs_muon.json")
    parser.add_argument("--workers", type=int, help="parallel one-thread runs (default: 2 on a CPU, 1 on CUDA)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    p = dict(PRESETS[args.preset])
    for key in ("steps", "lrs", "wds", "seeds", "multiplier_lrs", "shared"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    arms = [ARMS[name] for name in args.arms.split(",")]
    shared_lr, shared_wd = p["shared"]
    cells = sorted({(lr, wd) for lr in p["lrs"] for wd in p["wds"]} | {(shared_lr, shared_wd), (shared_lr, p["common_wd"])})
    console = Console(width=None if Console().is_terminal else 180)
    model_config = GPTConfig.preset(p["model"], **p["model_overrides"])
    corpus = ByteCorpus.load(args.data)
    base = TrainConfig(steps=p["steps"], warmup_steps=p["warmup_steps"], batch_size=p["batch_size"],
                       seq_len=p["seq_len"], eval_batches=p["eval_batches"], eval_every=p["eval_every"], device=args.device,
                       progress=not args.no_progress)
    console.print(
        f"[bold]adam_vs_muon[/] preset={args.preset} model={p['model']} ({model_config.n_layer}L, d={model_config.d_model}) "
        f"steps={p['steps']} batch={p['batch_size']}x{p['seq_len']} tokens/run={p['steps'] * p['batch_size'] * p['seq_len']:,} "
        f"device={args.device} seeds={p['seeds']}"
    )
    console.print("grid (lr, wd) and steps·lr·wd: " + ", ".join(f"({lr:g}, {wd:g}) → {p['steps'] * lr * wd:.2f}" for lr, wd in cells))
    workers = args.workers or default_workers(args.device)
    console.print(f"workers={workers} (parallel one-thread runs)" if workers > 1 else "workers=1")
    start = time.perf_counter()
    done = [0]

    def report(rec: RunRecord) -> None:
        done[0] += 1
        console.print(f"  [{done[0]}] {rec.arm:<10} lr={rec.lr:<7g} wd={rec.weight_decay:<5g} seed={rec.seed} "
                      f"val={rec.final_val_loss:.4f} ({rec.wall_s:.0f} s, {rec.tokens_per_s:,.0f} tok/s)")

    # Phase 0 (optional): the multiplier lr, swept at the shared cell with seed 0, per optimizer.
    mlr_sweep: list[dict[str, Any]] = []
    sweep_records: list[RunRecord] = []
    chosen_mlr: dict[str, float | None] = {a.name: p["multiplier_lrs"][0] if p["multiplier_lrs"] else None for a in arms}
    if len(p["multiplier_lrs"]) > 1:
        jobs = [(arm, dict(lr=shared_lr, weight_decay=shared_wd, seed=p["seeds"][0], multiplier_lr=mlr))
                for arm in arms if arm.has_multipliers for mlr in p["multiplier_lrs"]]
        sweep_records = run_many(model_config, base, jobs, corpus=corpus, workers=workers, on_done=report)
        for (arm, kw), rec in zip(jobs, sweep_records):
            mlr_sweep.append(dict(arm=arm.name, requested=kw["multiplier_lr"], multiplier_lr=rec.multiplier_lr,
                                  final_val_loss=rec.final_val_loss))
        for arm in arms:
            mine = [m for m in mlr_sweep if m["arm"] == arm.name]
            if mine:
                chosen_mlr[arm.name] = min(mine, key=lambda m: m["final_val_loss"])["requested"]

    # Phase 1: every arm, every cell, every seed.
    jobs = [(arm, dict(lr=lr, weight_decay=wd, seed=seed, multiplier_lr=chosen_mlr[arm.name]))
            for arm in arms for lr, wd in cells for seed in p["seeds"]]
    records = run_many(model_config, base, jobs, corpus=corpus, workers=workers, on_done=report)

    # Per arm: best cell by mean final val loss over seeds; shared and common-wd cells.
    summary: dict[str, dict[str, Any]] = {}
    for arm in arms:
        means = {cell: mean_spread([r.final_val_loss for r in records_at(records, arm.name, *cell)])[0] for cell in cells}
        best = min(means, key=means.get)
        at = lambda cell: records_at(records, arm.name, *cell)  # noqa: E731
        all_arm = [r for r in records if r.arm == arm.name]
        summary[arm.name] = dict(
            best=dict(lr=best[0], weight_decay=best[1], steps_lr_wd=p["steps"] * best[0] * best[1],
                      val=[r.final_val_loss for r in at(best)]),
            shared=dict(lr=shared_lr, weight_decay=shared_wd, val=[r.final_val_loss for r in at((shared_lr, shared_wd))]),
            common_wd=dict(lr=shared_lr, weight_decay=p["common_wd"], val=[r.final_val_loss for r in at((shared_lr, p["common_wd"]))]),
            tokens_per_s=mean_spread([r.tokens_per_s for r in all_arm])[0],
            opt_step_share=mean_spread([r.opt_step_share for r in all_arm])[0],
            multiplier_lr=at(best)[0].multiplier_lr,
            multiplier_scales_at_best=at(best)[0].multiplier_scales,
            matrix_rms_at_best=at(best)[0].matrix_rms,
        )

    # Tables.
    grid = Table(title=f"final val loss (mean ± std over {len(p['seeds'])} seeds), every cell")
    grid.add_column("arm")
    for lr, wd in cells:
        grid.add_column(f"lr {lr:g}\nwd {wd:g}\nsteps·lr·wd {p['steps'] * lr * wd:.2f}", justify="right")
    for arm in arms:
        grid.add_row(arm.name, *[_fmt([r.final_val_loss for r in records_at(records, arm.name, *c)]) for c in cells])
    console.print(grid)

    table = Table(title="per arm: best cell (own grid), shared strong-decay cell, common wd")
    for col in ("arm", "best (lr, wd)", "steps·lr·wd", "best val", f"shared ({shared_lr:g}, {shared_wd:g})",
                f"wd {p['common_wd']:g} (lr {shared_lr:g})", "tokens/s", "opt-step share", "mult lr"):
        table.add_column(col, justify="left" if col == "arm" else "right")
    for name, s in summary.items():
        table.add_row(
            name, f"({s['best']['lr']:g}, {s['best']['weight_decay']:g})", f"{s['best']['steps_lr_wd']:.2f}",
            _fmt(s["best"]["val"]), _fmt(s["shared"]["val"]), _fmt(s["common_wd"]["val"]),
            f"{s['tokens_per_s']:,.0f}", f"{100 * s['opt_step_share']:.1f}%",
            "-" if s["multiplier_lr"] is None else f"{s['multiplier_lr']:g}",
        )
    console.print(table)

    diffs: list[dict[str, Any]] = []
    pairs = [("adamw+mult", "adamw"), ("muon+mult", "muon"), ("muon", "adamw"), ("muon+mult", "adamw+mult")]
    for a, b in pairs:
        if a not in summary or b not in summary:
            continue
        row: dict[str, Any] = dict(a=a, b=b)
        for where in ("best", "shared", "common_wd"):
            ca = (summary[a][where]["lr"], summary[a][where]["weight_decay"])
            cb = (summary[b][where]["lr"], summary[b][where]["weight_decay"])
            row[where] = paired(records_at(records, a, *ca), records_at(records, b, *cb))
        diffs.append(row)
    dtable = Table(title="differences a − b in final val loss (paired by seed; negative = a better)")
    for col in ("a − b", "best vs best", f"at shared ({shared_lr:g}, {shared_wd:g})", f"at wd {p['common_wd']:g}"):
        dtable.add_column(col, justify="left" if col == "a − b" else "right")
    for row in diffs:
        dtable.add_row(f"{row['a']} − {row['b']}", _fmt(row["best"]), _fmt(row["shared"]), _fmt(row["common_wd"]))
    console.print(dtable)
    reach = steps_to_target(records, summary, p["steps"])
    if reach:
        rt = Table(title=f"steps to reach plain AdamW's final val loss (same seed), as a fraction of the "
                         f"{p['steps']} steps; each arm at its best cell; val every {p['eval_every']} steps, interpolated")
        for col in ("arm", "per seed", "mean ± std", "reached"):
            rt.add_column(col, justify="left" if col == "arm" else "right")
        for name, r in reach.items():
            finite = [f for f in r["fraction"] if math.isfinite(f)]
            rt.add_row(name, ", ".join(f"{f:.3f}" if math.isfinite(f) else "never" for f in r["fraction"]),
                       _fmt(finite) if len(finite) == len(r["fraction"]) else "-", f"{r['reached']}/{len(r['fraction'])}")
        console.print(rt)
    if mlr_sweep:
        mt = Table(title=f"multiplier lr sweep at the shared cell, seed {p['seeds'][0]}")
        for col in ("arm", "multiplier lr", "final val loss"):
            mt.add_column(col)
        for m in mlr_sweep:
            mt.add_row(m["arm"], f"{m['multiplier_lr']:g}", f"{m['final_val_loss']:.4f}")
        console.print(mt)
        console.print("chosen multiplier lr: " + ", ".join(f"{k}={v}" for k, v in chosen_mlr.items() if ARMS[k].has_multipliers))
    wall = time.perf_counter() - start
    cpu = sum(r.cpu_s for r in records + sweep_records)
    console.print(f"CPU time of the runs {cpu:.0f} s (≈ {cpu / 2:.0f} s of wall on two idle cores)")
    console.print(f"total wall time {wall:.0f} s for {len(records) + len(mlr_sweep)} runs")

    out = dict(preset=args.preset, settings={**p, "cells": cells}, model=model_config.to_dict(), device=args.device, workers=workers,
               data=args.data, multiplier_lr_sweep=mlr_sweep, chosen_multiplier_lr=chosen_mlr,
               summary=summary, differences=diffs,
               steps_to_target={k: {**v, "fraction": [f if math.isfinite(f) else None for f in v["fraction"]]}
                                for k, v in reach.items()},
               runs=[r.to_dict() for r in records], wall_s=wall)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {path}")
    png = _plot(records, summary, path.with_suffix(".png"))
    if png:
        console.print(f"wrote {png}")
    return out


def _plot(records: list[RunRecord], summary: dict[str, dict[str, Any]], path: Path) -> Path | None:
    """Seed-mean smoothed training loss of each arm at its best cell; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary.items():
        runs = records_at(records, name, s["best"]["lr"], s["best"]["weight_decay"])
        curves = [smooth(r.train_loss, 25) for r in runs]
        mean = [sum(v) / len(v) for v in zip(*curves)]
        ax.plot(range(1, len(mean) + 1), mean, label=f"{name} (lr {s['best']['lr']:g}, wd {s['best']['weight_decay']:g})")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (smoothed, seed mean)")
    finals = [v for s in summary.values() for v in s["best"]["val"]]
    if finals and all(math.isfinite(v) for v in finals):
        ax.set_ylim(min(finals) - 0.3, min(finals) + 1.5)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


if __name__ == "__main__":
    main()
