"""The paper's central experiment (arXiv 2601.04890, Fig. 1 and 5): sweep the matrices'
equilibrium scale S = sqrt(lr/wd) at a fixed effective lr η_eff = sqrt(lr·wd).

For each factor f the hidden matrices get S = f·S0 (lr = η_eff·S, wd = η_eff/S); embeddings, head,
norm weights and multipliers keep the base setting, so only the matrices' equilibrium moves. Arms:
AdamW and Muon, each with and without learnable multipliers. Reported per arm and S: the final
validation loss, the mean RMS of the hidden matrices against the noise-only AdamW prediction
sqrt(lr/(2 wd)), and the multipliers' overall scale (expected ∝ 1/S if they compensate).

    python benchmarks/scale_sweep.py                   # --preset quick, CPU
    python benchmarks/scale_sweep.py --preset full --device cuda
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
from benchmarks._harness import (
    ARMS,
    RunRecord,
    adamw_equilibrium_rms,
    default_workers,
    lr_wd_from_scale,
    run_many,
)

# All settings of a preset in one table. The base cell (lr0, wd0) sets S0 = sqrt(lr0/wd0) and
# η_eff = sqrt(lr0·wd0); steps·η_eff² is the number of equilibrium time constants of the run.
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(model="tiny", model_overrides=dict(n_layer=1), steps=6, warmup_steps=2, batch_size=4, seq_len=32,
                  base=(1e-2, 1.0), factors=[1 / 8, 1.0, 8.0], seed=0, eval_batches=1),
    "quick": dict(model="tiny", model_overrides={}, steps=400, warmup_steps=20, batch_size=16, seq_len=64,
                  base=(1e-2, 1.0), factors=[1 / 8, 1 / 2, 1.0, 2.0, 8.0], seed=0, eval_batches=16),
    "full": dict(model="small", model_overrides={}, steps=1000, warmup_steps=50, batch_size=32, seq_len=128,
                 base=(1e-2, 1.0), factors=[1 / 8, 1 / 4, 1 / 2, 1.0, 2.0, 4.0, 8.0], seed=0, eval_batches=32),
}


def _parse_factors(text: str) -> list[float]:
    out = []
    for item in text.split(","):
        num, _, den = item.partition("/")
        out.append(float(num) / float(den) if den else float(num))
    return out


def _factor_label(f: float) -> str:
    return f"1/{round(1 / f)}" if f < 1 else f"{f:g}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--arms", default=",".join(ARMS))
    parser.add_argument("--steps", type=int)
    parser.add_argument("--factors", type=_parse_factors, help="S factors, e.g. 1/8,1,8")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", default="results/scale_sweep.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    p = dict(PRESETS[args.preset])
    for key in ("steps", "factors"):
        if getattr(args, key) is not None:
            p[key] = getattr(args, key)
    arms = [ARMS[name] for name in args.arms.split(",")]
    lr0, wd0 = p["base"]
    eta_eff, s0 = math.sqrt(lr0 * wd0), math.sqrt(lr0 / wd0)
    console = Console(width=None if Console().is_terminal else 180)
    model_config = GPTConfig.preset(p["model"], **p["model_overrides"])
    corpus = ByteCorpus.load(args.data)
    # Non-matrix parameters stay at the base cell: adamw_lr = lr0, and wd0 for embedding and head.
    base = TrainConfig(steps=p["steps"], warmup_steps=p["warmup_steps"], batch_size=p["batch_size"],
                       seq_len=p["seq_len"], eval_batches=p["eval_batches"], device=args.device,
                       adamw_lr=lr0, rules={"embedding": {"weight_decay": wd0}, "head": {"weight_decay": wd0}},
                       progress=not args.no_progress)
    workers = args.workers or default_workers(args.device)
    console.print(
        f"[bold]scale_sweep[/] preset={args.preset} model={p['model']} steps={p['steps']} "
        f"η_eff=sqrt(lr·wd)={eta_eff:g} S0=sqrt(lr0/wd0)={s0:g} steps·lr·wd={p['steps'] * eta_eff ** 2:.2f} "
        f"(the same at every S) workers={workers}"
    )
    settings = {f: lr_wd_from_scale(f * s0, eta_eff) for f in p["factors"]}
    jobs = [(arm, dict(lr=settings[f][0], weight_decay=settings[f][1], seed=p["seed"])) for arm in arms for f in p["factors"]]
    start = time.perf_counter()

    def report(rec: RunRecord) -> None:
        console.print(f"  {rec.arm:<10} lr={rec.lr:<9.3g} wd={rec.weight_decay:<7.3g} val={rec.final_val_loss:.4f} "
                      f"RMS(W)={rec.matrix_rms:.4g} ({rec.wall_s:.0f} s)")

    records = run_many(model_config, base, jobs, corpus=corpus, workers=workers, on_done=report)
    job_factors = [f for _ in arms for f in p["factors"]]  # same order as `jobs`
    by = {(r.arm, f): r for r, f in zip(records, job_factors)}

    loss_table = Table(title=f"final val loss vs S/S0 (η_eff = {eta_eff:g} fixed)")
    loss_table.add_column("S/S0")
    loss_table.add_column("lr, wd")
    for arm in arms:
        loss_table.add_column(arm.name, justify="right")
    for f in p["factors"]:
        lr, wd = settings[f]
        loss_table.add_row(_factor_label(f), f"{lr:.3g}, {wd:.3g}", *[f"{by[(a.name, f)].final_val_loss:.4f}" for a in arms])
    spread = {a.name: max(by[(a.name, f)].final_val_loss for f in p["factors"]) - min(by[(a.name, f)].final_val_loss for f in p["factors"]) for a in arms}
    loss_table.add_row("max − min", "", *[f"{spread[a.name]:.4f}" for a in arms])
    console.print(loss_table)

    rms_table = Table(title="hidden-matrix RMS ÷ sqrt(lr/(2 wd)) (AdamW noise-only equilibrium); multiplier scale (matrices)")
    rms_table.add_column("S/S0")
    rms_table.add_column("sqrt(lr/(2wd))", justify="right")
    for arm in arms:
        rms_table.add_column(f"{arm.name} RMS ratio", justify="right")
    for arm in arms:
        if arm.has_multipliers:
            rms_table.add_column(f"{arm.name} mult scale", justify="right")
    rows = []
    for f in p["factors"]:
        lr, wd = settings[f]
        pred = adamw_equilibrium_rms(lr, wd)
        cells = [f"{by[(a.name, f)].matrix_rms / pred:.3f}" for a in arms]
        cells += [f"{by[(a.name, f)].multiplier_scales.get('matrix', float('nan')):.3f}" for a in arms if a.has_multipliers]
        rms_table.add_row(_factor_label(f), f"{pred:.4g}", *cells)
        rows.append(dict(factor=f, lr=lr, weight_decay=wd, predicted_adamw_rms=pred,
                         arms={a.name: dict(final_val_loss=by[(a.name, f)].final_val_loss, matrix_rms=by[(a.name, f)].matrix_rms,
                                             multiplier_scales=by[(a.name, f)].multiplier_scales) for a in arms}))
    console.print(rms_table)
    wall = time.perf_counter() - start
    cpu = sum(r.cpu_s for r in records)
    console.print(f"CPU time of the runs {cpu:.0f} s (≈ {cpu / 2:.0f} s of wall on two idle cores)")
    console.print(f"total wall time {wall:.0f} s for {len(records)} runs")

    out = dict(preset=args.preset, settings=p, eta_eff=eta_eff, s0=s0, model=model_config.to_dict(), device=args.device,
               workers=workers, rows=rows, loss_spread=spread, runs=[r.to_dict() for r in records], wall_s=wall)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
