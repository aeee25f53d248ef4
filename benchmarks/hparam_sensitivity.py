"""Do learnable multipliers make hyperparameters matter less? Two experiments (arXiv 2601.04890 §5.1).

``forward``: the fixed forward multipliers a muP user tunes — embedding output, output logits and
(``full``) attention logits — each swept ×{1/16, 1/4, 1, 4, 16} around 1, the others at 1, for AdamW
and Muon, each without and with learnable multipliers. With multipliers, the model's fixed factor
stays 1 and the learnable multiplier that plays its part starts at the swept value (the embedding's
column multiplier, a scalar on the head, the query projection's row multiplier), so the initial
forward is the same and only learnability differs. Reported per arm: the loss at each point, the
spread (max − min over the sweep) and the worst case (max − loss at 1), per seed and paired.

``transfer``: learning-rate transfer across width. Widths ``w`` (narrowest = muP base width), an lr
grid spaced ×2, standard parametrization (SP: same lr and init std at every width) vs muP
(``parametrize(base_width=w0)``: hidden AdamW lr/m, logits/m; the GPT's init std 0.02/√m, so muP
equals SP at the base width)
vs muP + vector multipliers. Reported per arm: the best lr per width from a parabola fit in log lr
around the grid minimum, its drift in octaves from the narrowest to the widest width, and the
transfer regret (loss at the widest width with the narrowest width's best lr minus the widest
width's best), plus the figure muP users know (loss vs lr, one curve per width, one panel per arm).

    python benchmarks/hparam_sensitivity.py                      # both, --preset quick, CPU
    python benchmarks/hparam_sensitivity.py --experiment transfer --preset full --device cuda

Writes ``results/hparam_sensitivity.json`` and, with matplotlib, ``.png`` (transfer) and
``_forward.png``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks._harness import ARMS, Arm, RunRecord, default_workers, mean_spread, run_many  # noqa: E402
from reference_models import ByteCorpus, GPTConfig, TrainConfig  # noqa: E402

# Which learnable multiplier plays the part of each fixed forward multiplier (GPTConfig field).
FORWARD: dict[str, tuple[str, str]] = {
    "embedding": ("embedding_multiplier", "wte.weight_mult_col"),
    "logit": ("logit_multiplier", "lm_head.weight_mult_scalar"),
    "attention": ("attn_logit_multiplier", "blocks.*.attn.q_proj.weight_mult_row"),
}
# Vector multipliers on matrices and embedding (the default preset) plus a learnable scalar on the
# head, so that the logit multiplier has a learnable counterpart.
FORWARD_PLACEMENT = {"*": "rc", "lm_head": "s"}

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(model="tiny", model_overrides=dict(n_layer=1), steps=6, warmup_steps=2, batch_size=4, seq_len=32,
                  eval_batches=1, seeds=[0], cells={"adamw": (3e-3, 0.1), "muon": (1e-2, 0.1)},
                  forward=["embedding", "logit"], factors=[1 / 4, 1.0, 4.0],
                  widths=[32, 64], lrs=[2 ** -7, 2 ** -6, 2 ** -5], transfer_optimizers=["adamw"], transfer_wd=0.1,
                  transfer_steps=6, transfer_batch_size=4, transfer_seeds=[0]),
    "quick": dict(model="tiny", model_overrides={}, steps=200, warmup_steps=20, batch_size=8, seq_len=64,
                  eval_batches=16, seeds=[0, 1], cells={"adamw": (3e-3, 0.1), "muon": (1e-2, 0.1)},
                  forward=["embedding", "logit"], factors=[1 / 16, 1 / 4, 1.0, 4.0, 16.0],
                  widths=[32, 64, 128], lrs=[2.0 ** k for k in range(-10, -3)], transfer_optimizers=["adamw"],
                  transfer_wd=0.1, transfer_steps=200, transfer_batch_size=8, transfer_seeds=[0]),
    "full": dict(model="small", model_overrides={}, steps=1000, warmup_steps=50, batch_size=32, seq_len=128,
                 eval_batches=32, seeds=[0, 1, 2], cells={"adamw": (3e-3, 0.1), "muon": (1e-2, 0.1)},
                 forward=["embedding", "logit", "attention"], factors=[1 / 16, 1 / 4, 1.0, 4.0, 16.0],
                 widths=[64, 128, 256, 512, 1024], lrs=[2.0 ** k for k in range(-13, -4)],
                 transfer_optimizers=["adamw", "muon"], transfer_wd=0.1, transfer_steps=1000, transfer_batch_size=32,
                 transfer_seeds=[0, 1]),
}


def _factor_label(f: float) -> str:
    return f"1/{round(1 / f)}" if f < 1 else f"{f:g}"


# ---------------------------------------------------------------------------------------------
# Pure analysis


def parabola_min(xs: list[float], ys: list[float]) -> tuple[float, float, bool]:
    """Minimum of the parabola through the grid minimum and its two neighbours: ``(x*, y*, interior)``.

    At an edge of the grid (or a non-convex triple) returns the grid minimum with ``interior=False``.
    """
    i = min(range(len(ys)), key=ys.__getitem__)
    if i == 0 or i == len(ys) - 1:
        return xs[i], ys[i], False
    (x0, x1, x2), (y0, y1, y2) = xs[i - 1:i + 2], ys[i - 1:i + 2]
    denom = (x0 - x1) * (x0 - x2) * (x1 - x2)
    a = (x2 * (y1 - y0) + x1 * (y0 - y2) + x0 * (y2 - y1)) / denom
    b = (x2 * x2 * (y0 - y1) + x1 * x1 * (y2 - y0) + x0 * x0 * (y1 - y2)) / denom
    if not a > 0:
        return xs[i], ys[i], False
    x = -b / (2 * a)
    c = y1 - a * x1 * x1 - b * x1
    return x, a * x * x + b * x + c, True


def interpolate(xs: list[float], ys: list[float], x: float) -> float:
    """Piecewise-linear interpolation of ``ys`` at ``x`` (clamped to the ends)."""
    if x <= xs[0]:
        return ys[0]
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return ys[-1]


def forward_summary(losses: dict[float, list[float]]) -> dict[str, Any]:
    """Per-seed spread (max − min over the sweep) and worst case (max − loss at factor 1) of one
    arm's sweep ``{factor: [loss per seed]}``, and their means ± std over seeds."""
    factors = sorted(losses)
    n = min(len(v) for v in losses.values())
    spread = [max(losses[f][s] for f in factors) - min(losses[f][s] for f in factors) for s in range(n)]
    worst = [max(losses[f][s] for f in factors) - losses[1.0][s] for s in range(n)]
    return dict(spread=spread, worst=worst, spread_mean=mean_spread(spread), worst_mean=mean_spread(worst))


# ---------------------------------------------------------------------------------------------
# The experiments


def _forward(p: dict[str, Any], base: TrainConfig, corpus: ByteCorpus, arms: list[Arm], workers: int,
             console: Console, report: Any) -> dict[str, Any]:
    model_config = GPTConfig.preset(p["model"], **p["model_overrides"])
    points = [(None, 1.0)] + [(name, f) for name in p["forward"] for f in p["factors"] if f != 1.0]
    jobs = []
    for arm in arms:
        lr, wd = p["cells"][arm.optimizer]
        for name, f in points:
            field, mult = FORWARD[name] if name else (None, None)
            kw: dict[str, Any] = dict(lr=lr, weight_decay=wd, setting=dict(experiment="forward", knob=name, factor=f))
            if arm.has_multipliers:
                kw["multipliers"] = FORWARD_PLACEMENT
                if name is not None:
                    kw["multiplier_init"] = {mult: f}
            elif name is not None:
                kw["model_config"] = model_config.replace(**{field: f})
            jobs += [(arm, {**kw, "seed": s}) for s in p["seeds"]]
    records = run_many(model_config, base, jobs, corpus=corpus, workers=workers, on_done=report)
    loss: dict[tuple[str, str | None, float], list[float]] = {}
    for (arm, kw), rec in zip(jobs, records):
        loss.setdefault((arm.name, kw["setting"]["knob"], kw["setting"]["factor"]), []).append(rec.final_val_loss)
    table: dict[str, dict[str, Any]] = {}
    for arm in arms:
        default = loss[(arm.name, None, 1.0)]
        for name in p["forward"]:
            sweep = {f: (default if f == 1.0 else loss[(arm.name, name, f)]) for f in p["factors"]}
            table.setdefault(arm.name, {})[name] = dict(losses={str(f): v for f, v in sweep.items()}, **forward_summary(sweep))
    # Paired by seed: spread without multipliers − with (positive = multipliers flatten the sweep).
    compare = []
    for opt in sorted({a.optimizer for a in arms}):
        plain, mult = f"{opt}", f"{opt}+mult"
        if plain in table and mult in table:
            for name in p["forward"]:
                d = [a - b for a, b in zip(table[plain][name]["spread"], table[mult][name]["spread"])]
                mean, std = mean_spread(d)
                se = std / math.sqrt(len(d)) if len(d) > 1 else math.nan
                compare.append(dict(optimizer=opt, knob=name, spread_plain_minus_mult=d, mean=mean, se=se,
                                    beyond_3se=bool(len(d) > 1 and mean > 3 * se)))
    t = Table(title=f"forward-multiplier sweep: final val loss (mean ± std over seeds {p['seeds']}), {p['steps']} steps")
    t.add_column("arm (lr, wd)")
    t.add_column("knob")
    for f in p["factors"]:
        t.add_column(f"×{_factor_label(f)}", justify="right")
    t.add_column("spread (max−min)", justify="right")
    t.add_column("worst − default", justify="right")
    for arm in arms:
        lr, wd = p["cells"][arm.optimizer]
        for name in p["forward"]:
            row = table[arm.name][name]
            t.add_row(f"{arm.name} ({lr:g}, {wd:g})", name,
                      *[_fmt(row["losses"][str(f)]) for f in p["factors"]], _fmt(row["spread"]), _fmt(row["worst"]))
    console.print(t)
    ct = Table(title="spread without − with multipliers, paired by seed (positive: multipliers flatten the sweep)")
    for col in ("optimizer", "knob", "per seed", "mean ± SE", "> 3 SE"):
        ct.add_column(col, justify="left" if col in ("optimizer", "knob") else "right")
    for c in compare:
        ct.add_row(c["optimizer"], c["knob"], ", ".join(f"{v:+.4f}" for v in c["spread_plain_minus_mult"]),
                   f"{c['mean']:+.4f} ± {c['se']:.4f}", "yes" if c["beyond_3se"] else "no")
    console.print(ct)
    return dict(table=table, compare=compare, runs=[r.to_dict(curve_points=20) for r in records])


def _transfer_arms(optimizers_: list[str], only: list[str] | None = None) -> list[tuple[str, Arm, bool]]:
    """``(label, arm, muP?)`` per optimizer: SP, muP, muP + multipliers (``only``: kinds to keep)."""
    out = []
    for opt in optimizers_:
        out += [(f"{opt} SP", ARMS[opt], False), (f"{opt} muP", ARMS[opt], True), (f"{opt} muP+mult", ARMS[f"{opt}+mult"], True)]
    return [a for a in out if only is None or a[0].split(" ", 1)[1] in only]


def _transfer(p: dict[str, Any], base: TrainConfig, corpus: ByteCorpus, workers: int, console: Console,
              report: Any) -> dict[str, Any]:
    base = TrainConfig(**{**base.__dict__, "steps": p["transfer_steps"], "batch_size": p["transfer_batch_size"],
                          "warmup_steps": min(base.warmup_steps, p["transfer_steps"])})
    w0 = p["widths"][0]
    jobs = []
    for label, arm, mup in _transfer_arms(p["transfer_optimizers"], p.get("transfer_arms")):
        for width in p["widths"]:
            cfg = GPTConfig.preset(p["model"], **{**p["model_overrides"], "d_model": width})
            for lr in p["lrs"]:
                for seed in p["transfer_seeds"]:
                    kw: dict[str, Any] = dict(model_config=cfg, lr=lr, weight_decay=p["transfer_wd"], seed=seed,
                                              setting=dict(experiment="transfer", arm=label, width=width))
                    if mup:  # the GPT's own init (residual scaling kept) with std/√m: equals SP at w0
                        kw.update(mup_base_width=w0, model_config=cfg.replace(init_std=cfg.init_std / math.sqrt(width / w0)))
                    jobs.append((arm, kw))
    records = run_many(GPTConfig.preset(p["model"], **p["model_overrides"]), base, jobs, corpus=corpus, workers=workers,
                       on_done=report)
    by: dict[tuple[str, int, float], dict[int, float]] = {}
    for (arm, kw), rec in zip(jobs, records):
        by.setdefault((kw["setting"]["arm"], kw["setting"]["width"], kw["lr"]), {})[kw["seed"]] = rec.final_val_loss
    xs = [math.log2(lr) for lr in p["lrs"]]

    def drift_and_regret(curve: Callable[[int, float], float]) -> tuple[dict[int, dict[str, Any]], float, float]:
        """Best lr per width of the loss curve ``curve(width, lr)``; drift (octaves) and regret."""
        per_width = {}
        for width in p["widths"]:
            ys = [curve(width, lr) for lr in p["lrs"]]
            x, y, interior = parabola_min(xs, ys)
            per_width[width] = dict(loss=ys, best_log2_lr=x, best_lr=2.0 ** x, best_loss=y, interior=interior)
        narrow, wide = per_width[p["widths"][0]], per_width[p["widths"][-1]]
        regret = interpolate(xs, wide["loss"], narrow["best_log2_lr"]) - wide["best_loss"]
        return per_width, wide["best_log2_lr"] - narrow["best_log2_lr"], regret

    result: dict[str, Any] = {}
    for label, _, _ in _transfer_arms(p["transfer_optimizers"], p.get("transfer_arms")):
        # The seed-mean curve gives the reported optimum; each seed's own curve gives the spread.
        per_width, drift, regret = drift_and_regret(lambda w, lr: mean_spread(list(by[(label, w, lr)].values()))[0])
        per_seed = []
        for seed in p["transfer_seeds"]:
            _, seed_drift, seed_regret = drift_and_regret(lambda w, lr: by[(label, w, lr)][seed])
            per_seed.append(dict(seed=seed, drift_octaves=seed_drift, regret=seed_regret))
        result[label] = dict(widths={str(w): v for w, v in per_width.items()}, drift_octaves=drift, regret=regret,
                             per_seed=per_seed)
    t = Table(title=f"lr transfer across width (base width {w0}; {p['transfer_steps']} steps of {p['transfer_batch_size']}×"
                    f"{base.seq_len}, wd {p['transfer_wd']:g}, "
                    f"seeds {p['transfer_seeds']}): best lr per width (parabola fit in log2 lr; * = grid edge)")
    t.add_column("arm")
    for w in p["widths"]:
        t.add_column(f"w={w}", justify="right")
    t.add_column("drift (octaves)", justify="right")
    t.add_column("transfer regret", justify="right")
    t.add_column("per seed: drift / regret", justify="right")
    for label, r in result.items():
        cells = [f"{v['best_lr']:.2e}{'' if v['interior'] else '*'} ({v['best_loss']:.3f})" for v in r["widths"].values()]
        seeds = ", ".join(f"{q['drift_octaves']:+.2f} / {q['regret']:.4f}" for q in r["per_seed"])
        t.add_row(label, *cells, f"{r['drift_octaves']:+.2f}", f"{r['regret']:.4f}", seeds)
    console.print(t)
    return dict(arms=result, lrs=p["lrs"], widths=p["widths"], runs=[r.to_dict(curve_points=20) for r in records])


def _fmt(values: list[float]) -> str:
    mean, spread = mean_spread(values)
    return f"{mean:.4f} ± {spread:.4f}" if len(values) > 1 else f"{mean:.4f}"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--experiment", choices=["forward", "transfer", "all"], default="all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--data", default="stdlib")
    parser.add_argument("--arms", default=",".join(ARMS), help="forward sweep arms, subset of " + ",".join(ARMS))
    parser.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")])
    parser.add_argument("--transfer-arms", type=lambda s: s.split(","), help="subset of SP,muP,muP+mult")
    parser.add_argument("--transfer-seeds", type=lambda s: [int(x) for x in s.split(",")],
                        help="seeds of the transfer experiment (default: the preset's; its curves are seed means)")
    parser.add_argument("--widths", type=lambda s: [int(x) for x in s.split(",")], help="transfer widths, e.g. 32,64,128")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", default="results/hparam_sensitivity.json")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    p = dict(PRESETS[args.preset])
    if args.seeds is not None:
        p["seeds"] = args.seeds
    if args.transfer_seeds is not None:
        p["transfer_seeds"] = args.transfer_seeds
    if args.transfer_arms is not None:
        bad = sorted(set(args.transfer_arms) - {"SP", "muP", "muP+mult"})
        if bad:
            raise SystemExit(f"--transfer-arms: unknown {bad}; choose from SP, muP, muP+mult")
        p["transfer_arms"] = args.transfer_arms
    if args.widths is not None:
        p["widths"] = args.widths
    console = Console(width=None if Console().is_terminal else 200)
    corpus = ByteCorpus.load(args.data)
    base = TrainConfig(steps=p["steps"], warmup_steps=p["warmup_steps"], batch_size=p["batch_size"], seq_len=p["seq_len"],
                       eval_batches=p["eval_batches"], device=args.device, progress=not args.no_progress)
    workers = args.workers or default_workers(args.device)
    console.print(f"[bold]hparam_sensitivity[/] preset={args.preset} experiment={args.experiment} device={args.device} "
                  f"workers={workers}; forward cells (lr, wd, steps·lr·wd): "
                  + ", ".join(f"{k} ({lr:g}, {wd:g}, {p['steps'] * lr * wd:.2f})" for k, (lr, wd) in p["cells"].items()))
    done = [0]

    def report(rec: RunRecord) -> None:
        done[0] += 1
        console.print(f"  [{done[0]}] {rec.arm:<10} {rec.setting} lr={rec.lr:<8.3g} seed={rec.seed} "
                      f"val={rec.final_val_loss:.4f} ({rec.wall_s:.0f} s)")

    start = time.perf_counter()
    out: dict[str, Any] = dict(preset=args.preset, settings=p, device=args.device, workers=workers)
    if args.experiment in ("forward", "all"):
        arms = [ARMS[name] for name in args.arms.split(",")]
        out["forward"] = _forward(p, base, corpus, arms, workers, console, report)
        out["forward_wall_s"] = time.perf_counter() - start
    if args.experiment in ("transfer", "all"):
        t0 = time.perf_counter()
        out["transfer"] = _transfer(p, base, corpus, workers, console, report)
        out["transfer_wall_s"] = time.perf_counter() - t0
    out["wall_s"] = time.perf_counter() - start
    console.print(f"total wall time {out['wall_s']:.0f} s")
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    console.print(f"wrote {path}")
    for png in _plot(out, path):
        console.print(f"wrote {png}")
    return out


def _plot(out: dict[str, Any], path: Path) -> list[Path]:
    """Loss vs lr per width, one panel per arm (transfer); loss vs factor per knob (forward)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    if "transfer" in out:
        tr = out["transfer"]
        arms = list(tr["arms"])
        fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.6), sharey=True, squeeze=False)
        for ax, label in zip(axes[0], arms):
            for w, v in tr["arms"][label]["widths"].items():
                ax.plot(tr["lrs"], v["loss"], marker="o", ms=3, label=f"width {w}")
                ax.axvline(v["best_lr"], color=ax.lines[-1].get_color(), lw=0.6, ls=":")
            ax.set_xscale("log", base=2)
            ax.set_title(f"{label}\ndrift {tr['arms'][label]['drift_octaves']:+.2f} oct, regret {tr['arms'][label]['regret']:.3f}")
            ax.set_xlabel("lr")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("final val loss")
        axes[0][0].legend(fontsize=7)
        finite = [y for a in tr["arms"].values() for v in a["widths"].values() for y in v["loss"] if math.isfinite(y)]
        if finite:
            axes[0][0].set_ylim(min(finite) - 0.05, min(min(finite) + 1.5, max(finite) + 0.05))
        fig.tight_layout()
        fig.savefig(path.with_suffix(".png"), dpi=110)
        plt.close(fig)
        written.append(path.with_suffix(".png"))
    if "forward" in out:
        table = out["forward"]["table"]
        knobs = list(next(iter(table.values())))
        fig, axes = plt.subplots(1, len(knobs), figsize=(4.5 * len(knobs), 3.6), squeeze=False)
        for ax, knob in zip(axes[0], knobs):
            for arm, rows in table.items():
                fs = sorted(float(f) for f in rows[knob]["losses"])
                ax.plot(fs, [mean_spread(rows[knob]["losses"][str(f)])[0] for f in fs], marker="o", ms=3, label=arm)
            ax.set_xscale("log", base=2)
            ax.set_title(f"{knob} multiplier")
            ax.set_xlabel("factor (× default)")
            ax.grid(alpha=0.3)
        axes[0][0].set_ylabel("final val loss (seed mean)")
        axes[0][0].legend(fontsize=7)
        fig.tight_layout()
        fwd = path.with_name(path.stem + "_forward.png")
        fig.savefig(fwd, dpi=110)
        plt.close(fig)
        written.append(fwd)
    return written


if __name__ == "__main__":
    main()
