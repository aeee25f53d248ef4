"""What else was tried for the multipliers: placement and multiplier weight decay.

Where multipliers do not help, this shows what else was tried. It runs the quick-preset
model and data of ``benchmarks/adam_vs_muon.py`` for AdamW and Muon at two cells (each arm's best cell
in the quick grid, lr 3e-3 / wd 0.1 for AdamW and lr 1e-2 / wd 0.1 for Muon, and the shared
strong-decay cell lr 1e-2 / wd 1) with these variants, every seed:

* ``none``            no multipliers (the baseline);
* ``vector``          row + column on every matrix and the embedding (the default; wd 2e-3);
* ``scalar``          one scalar per matrix and embedding;
* ``symmetry-free``   the paper's App. C placement: gate row, up none, down row+col; q row, k/v none,
                      o row+col; embedding row+col;
* ``vector wd=0``     vector without multiplier decay;
* ``vector wd=2e-2``  vector with 10× the paper's multiplier decay.

    python benchmarks/multiplier_ablation.py                  # ~5 min on 2 CPU cores
    python benchmarks/multiplier_ablation.py --preset smoke   # seconds (the smoke test)
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as `python benchmarks/<script>.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from reference_models import ByteCorpus, GPTConfig, TrainConfig  # noqa: E402
from benchmarks._harness import Arm, default_workers, mean_spread, run_many

SYMMETRY_FREE = {
    "*.mlp.gate_proj": "r", "*.mlp.up_proj": "none", "*.mlp.down_proj": "rc",
    "*.attn.q_proj": "r", "*.attn.k_proj": "none", "*.attn.v_proj": "none", "*.attn.o_proj": "rc",
    "wte": "rc",
}
# variant name → (multipliers, multiplier weight decay)
VARIANTS: dict[str, tuple[Any, float]] = {
    "none": ("none", 2e-3),
    "vector": ("vector", 2e-3),
    "scalar": ("scalar", 2e-3),
    "symmetry-free": (SYMMETRY_FREE, 2e-3),
    "vector wd=0": ("vector", 0.0),
    "vector wd=2e-2": ("vector", 2e-2),
}
PRESETS: dict[str, dict[str, Any]] = {
    "smoke": dict(model="tiny", model_overrides=dict(n_layer=1), steps=6, warmup_steps=2, batch_size=4, seq_len=32,
                  seeds=[0], eval_batches=1, cells={"adamw": [(3e-3, 0.1)], "muon": [(1e-2, 0.1)]}),
    "quick": dict(model="tiny", model_overrides={}, steps=400, warmup_steps=20, batch_size=16, seq_len=64,
                  seeds=[0, 1], eval_batches=16,
                  cells={"adamw": [(3e-3, 0.1), (1e-2, 1.0)], "muon": [(1e-2, 0.1), (1e-2, 1.0)]}),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--out", default="results/multiplier_ablation.json")
    args = parser.parse_args(argv)

    p = PRESETS[args.preset]
    model_config = GPTConfig.preset(p["model"], **p["model_overrides"])
    corpus = ByteCorpus.load("stdlib")
    workers = args.workers or default_workers(args.device)
    rows: list[dict[str, Any]] = []
    for variant, (multipliers, mult_wd) in VARIANTS.items():
        base = TrainConfig(steps=p["steps"], warmup_steps=p["warmup_steps"], batch_size=p["batch_size"],
                           seq_len=p["seq_len"], eval_batches=p["eval_batches"], device=args.device,
                           progress=False, multiplier_weight_decay=mult_wd)
        jobs = [(Arm(f"{opt} {variant}", opt, multipliers), dict(lr=lr, weight_decay=wd, seed=seed))
                for opt, cells in p["cells"].items() for lr, wd in cells for seed in p["seeds"]]
        for (arm, kw), rec in zip(jobs, run_many(model_config, base, jobs, corpus=corpus, workers=workers)):
            rows.append(dict(optimizer=arm.optimizer, variant=variant, lr=kw["lr"], weight_decay=kw["weight_decay"],
                             seed=kw["seed"], final_val_loss=rec.final_val_loss))

    def losses(opt: str, variant: str, cell: tuple[float, float]) -> list[float]:
        return [r["final_val_loss"] for r in rows
                if r["optimizer"] == opt and r["variant"] == variant and (r["lr"], r["weight_decay"]) == cell]

    table = Table(title=f"final val loss, mean ± std over seeds {p['seeds']}; Δ = variant − none, paired by seed")
    for col in ("optimizer", "(lr, wd)", *VARIANTS):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    summary = []
    for opt, cells in p["cells"].items():
        for cell in cells:
            ref = losses(opt, "none", cell)
            cells_out = []
            for variant in VARIANTS:
                mean, spread = mean_spread(losses(opt, variant, cell))
                dmean, dspread = mean_spread([a - b for a, b in zip(losses(opt, variant, cell), ref)])
                summary.append(dict(optimizer=opt, lr=cell[0], weight_decay=cell[1], variant=variant, mean=mean,
                                    std=spread, delta_mean=dmean, delta_std=dspread))
                cells_out.append(f"{mean:.4f} ± {spread:.4f}" if variant == "none" else f"{dmean:+.4f} ± {dspread:.4f}")
            table.add_row(opt, f"({cell[0]:g}, {cell[1]:g})", *cells_out)
    Console(width=200).print(table)
    result = dict(preset=args.preset, settings={k: v for k, v in p.items() if k != "cells"},
                  cells={k: [list(c) for c in v] for k, v in p["cells"].items()},
                  variants={k: [v[0], v[1]] for k, v in VARIANTS.items()}, summary=summary, runs=rows)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
