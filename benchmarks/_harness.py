"""Shared pieces of the benchmark scripts: the four arms, the (S, η_eff) ↔ (lr, wd) map, one run
with its measurements (:func:`run`), the process pool (:func:`run_many`), seed statistics and the
paired analyses. The scripts in ``benchmarks/`` stay thin; nothing here ships in the wheel.

Notation (paper arXiv 2601.04890 §1, §3): with decoupled weight decay a matrix settles at the
noise–WD equilibrium RMS(W) ∝ S = sqrt(lr/wd) after about 1/(lr·wd) steps, and the effective
learning rate η_eff = sqrt(lr·wd) sets the noise level. For AdamW, RMS(W)_eq ≈ sqrt(lr/(2 wd)).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from parametrization.stats import multiplier_scales
from reference_models import ByteCorpus, GPTConfig, TrainConfig, Trainer
from reference_models.train import build_model, build_optimizer, build_scheduler

__all__ = [
    "ARMS",
    "Arm",
    "RunRecord",
    "adamw_equilibrium_rms",
    "lr_wd_from_scale",
    "first_reach",
    "matrix_rms",
    "mean_spread",
    "paired",
    "records_at",
    "run",
    "run_many",
    "smooth",
]


@dataclass(frozen=True)
class Arm:
    """One benchmark arm: the optimizer of the matrices and the multiplier placement."""

    name: str
    optimizer: str
    multipliers: str

    @property
    def has_multipliers(self) -> bool:
        return self.multipliers != "none"


ARMS: dict[str, Arm] = {
    a.name: a
    for a in (
        Arm("adamw", "adamw", "none"),
        Arm("adamw+mult", "adamw", "vector"),
        Arm("muon", "muon", "none"),
        Arm("muon+mult", "muon", "vector"),
    )
}


def lr_wd_from_scale(scale: float, effective_lr: float) -> tuple[float, float]:
    """``(lr, wd)`` with equilibrium scale ``S = sqrt(lr/wd)`` and ``η_eff = sqrt(lr·wd)``:
    ``lr = η_eff·S``, ``wd = η_eff/S`` (paper §3)."""
    if not scale > 0 or not effective_lr > 0:
        raise ValueError(f"scale and effective_lr must be positive, got {scale!r}, {effective_lr!r}")
    return effective_lr * scale, effective_lr / scale


def adamw_equilibrium_rms(lr: float, weight_decay: float) -> float:
    """Noise-only AdamW equilibrium RMS of a matrix, ``sqrt(lr / (2 wd))`` (Kosson et al. 2024)."""
    if not lr > 0 or not weight_decay > 0:
        raise ValueError(f"lr and weight_decay must be positive, got {lr!r}, {weight_decay!r}")
    return math.sqrt(lr / (2.0 * weight_decay))


def mean_spread(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("mean_spread needs at least one value")
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


def smooth(values: Sequence[float], window: int = 20) -> list[float]:
    """Trailing moving average (for plotting noisy training losses)."""
    out, total = [], 0.0
    for i, v in enumerate(values):
        total += v
        if i >= window:
            total -= values[i - window]
        out.append(total / min(i + 1, window))
    return out


def matrix_rms(table: dict[str, dict[str, Any]]) -> float:
    """Mean over hidden matrices (role ``matrix``) of RMS(W) of the raw weight W, from a
    :func:`parametrization.stats.stats` table."""
    values = [e["rms_w"] for e in table.values() if e["role"] == "matrix"]
    return statistics.fmean(values) if values else float("nan")


@dataclass
class RunRecord:
    """One finished run: its setting and what it measured."""

    arm: str
    lr: float
    weight_decay: float
    seed: int
    final_val_loss: float
    tokens_per_s: float
    opt_step_share: float
    wall_s: float
    steps_lr_wd: float
    matrix_rms: float
    multiplier_scales: dict[str, float]
    train_loss: list[float]
    val_loss: list[tuple[int, float]] = field(default_factory=list)  # (step, loss) every eval_every steps
    multiplier_lr: float | None = None  # the lr the multiplier group actually got (None: no multipliers)
    cpu_s: float = float("nan")  # CPU time of the run's process (all its threads)
    stats: dict[str, dict[str, Any]] = field(default_factory=dict)  # mp.stats(optimizer) at the end
    row_norms: dict[str, list[float]] = field(default_factory=dict)  # W_eff row norms (keep_row_norms=True)
    setting: dict[str, Any] = field(default_factory=dict)  # what else the job set (width, forward multipliers)

    def to_dict(self, *, curve_points: int = 200) -> dict[str, Any]:
        stride = max(1, len(self.train_loss) // curve_points)
        d = dict(self.__dict__)
        d["train_loss"] = smooth(self.train_loss)[::stride]
        d["curve_stride"] = stride
        return d


def run(
    model_config: GPTConfig,
    base: TrainConfig,
    arm: Arm,
    *,
    lr: float,
    weight_decay: float,
    seed: int,
    corpus: ByteCorpus,
    multiplier_lr: float | None = None,
    multiplier_init: dict[str, float] | None = None,
    multipliers: Any = None,
    keep_row_norms: bool = False,
    setting: dict[str, Any] | None = None,
    **train_overrides: Any,
) -> RunRecord:
    """Train one arm at one setting with :class:`~reference_models.train.Trainer` and measure it.

    ``multipliers`` overrides the arm's placement (a preset name or a glob dict) when the arm has
    multipliers; ``multiplier_init`` maps multiplier-parameter FQN globs to initial values (a
    learnable multiplier that starts at a tuned forward multiplier); ``train_overrides`` replace
    fields of ``base`` (e.g. ``mup_base_width``); ``setting`` is stored in the record as is."""
    cfg = TrainConfig(
        **{
            **base.__dict__,
            **train_overrides,
            "optimizer": arm.optimizer,
            "multipliers": (multipliers or arm.multipliers) if arm.has_multipliers else "none",
            "lr": lr,
            "weight_decay": weight_decay,
            "seed": seed,
            "data_seed": seed,
            "multiplier_lr": multiplier_lr if arm.has_multipliers else None,
            "label": f"{arm.name} lr={lr:.3g} wd={weight_decay:.3g} seed={seed}",
        }
    )
    model, mp = build_model(model_config, cfg)
    if multiplier_init:
        _init_multipliers(mp, multiplier_init)
    optimizer = build_optimizer(mp, cfg)
    trainer = Trainer(model, mp, optimizer, build_scheduler(optimizer, cfg), corpus, cfg)
    cpu_start = time.process_time()
    result = trainer.fit()
    cpu_s = time.process_time() - cpu_start
    with torch.no_grad():
        table = mp.stats(trainer.optimizer)
        norms = _row_norms(mp) if keep_row_norms else {}
    mult_lrs = {g["initial_lr"] for g in trainer.optimizer.param_groups if g.get("role") == "multiplier"}
    return RunRecord(
        arm=arm.name,
        lr=lr,
        weight_decay=weight_decay,
        seed=seed,
        final_val_loss=result.final_val_loss,
        tokens_per_s=result.tokens_per_s,
        opt_step_share=result.opt_step_share,
        wall_s=result.wall_s,
        steps_lr_wd=cfg.lr_times_wd_times_steps,
        matrix_rms=matrix_rms(table),
        multiplier_scales=multiplier_scales(table),
        train_loss=result.train_loss,
        val_loss=[(int(s), float(v)) for s, v in result.val_loss],
        multiplier_lr=mult_lrs.pop() if len(mult_lrs) == 1 else None,
        cpu_s=cpu_s,
        stats=table,
        row_norms=norms,
        setting=dict(setting or {}),
    )


def _init_multipliers(mp: Any, values: dict[str, float]) -> None:
    """Fill every multiplier parameter whose FQN matches a glob with that glob's value."""
    import fnmatch

    params = dict(mp.model.named_parameters())
    for glob, value in values.items():
        hits = [fqn for fqn in params if mp.roles.get(fqn) == "multiplier" and fnmatch.fnmatchcase(fqn, glob)]
        if not hits:
            raise ValueError(f"multiplier_init glob {glob!r} matches no multiplier; multipliers are named like "
                             f"{[f for f in params if mp.roles.get(f) == 'multiplier'][:3]}")
        with torch.no_grad():
            for fqn in hits:
                params[fqn].fill_(value)


def _row_norms(mp: Any) -> dict[str, list[float]]:
    """Row norms of every hidden matrix's W_eff (one host transfer per matrix; end of run only)."""
    from parametrization.roles import WeightLayout, weight_layout
    from parametrization.stats import row_col_norms

    out = {}
    for fqn, _ in mp.model.named_parameters():
        if mp.roles.get(fqn) != "matrix":
            continue
        module_name, _, pname = fqn.rpartition(".")
        module = mp.model.get_submodule(module_name)
        rows, _ = row_col_norms(getattr(module, pname), weight_layout(module, pname) or WeightLayout())
        out[fqn] = rows.cpu().tolist()
    return out


def paired(a: Sequence[RunRecord], b: Sequence[RunRecord]) -> list[float]:
    """Per-seed differences a − b of the final val loss (seeds present in both)."""
    bs = {r.seed: r.final_val_loss for r in b}
    return [r.final_val_loss - bs[r.seed] for r in a if r.seed in bs]


def first_reach(curve: Sequence[tuple[int, float]], target: float) -> float:
    """First step at which a validation curve ``[(step, loss), ...]`` reaches ``target``, linearly
    interpolated between the two evaluations around the crossing; ``inf`` if it never does."""
    prev: tuple[int, float] | None = None
    for step, loss in curve:
        if loss <= target:
            if prev is None or prev[1] == loss:
                return float(step)
            return prev[0] + (step - prev[0]) * (prev[1] - target) / (prev[1] - loss)
        prev = (step, loss)
    return math.inf


def records_at(records: Iterable[RunRecord], arm: str, lr: float, weight_decay: float) -> list[RunRecord]:
    """The records of ``arm`` at setting ``(lr, weight_decay)`` (all seeds)."""
    return [
        r for r in records
        if r.arm == arm and math.isclose(r.lr, lr, rel_tol=1e-9) and math.isclose(r.weight_decay, weight_decay, rel_tol=1e-9)
    ]


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_job(job: tuple[GPTConfig, TrainConfig, Arm, dict[str, Any], str]) -> RunRecord:
    model_config, base, arm, kwargs, source = job
    return _run_one(model_config, base, arm, ByteCorpus.load(source), kwargs)


def _run_one(model_config: GPTConfig, base: TrainConfig, arm: Arm, corpus: ByteCorpus, kwargs: dict[str, Any]) -> RunRecord:
    kwargs = dict(kwargs)
    return run(kwargs.pop("model_config", model_config), base, arm, corpus=corpus, **kwargs)


def run_many(
    model_config: GPTConfig,
    base: TrainConfig,
    jobs: Sequence[tuple[Arm, dict[str, Any]]],
    *,
    corpus: ByteCorpus,
    workers: int = 1,
    on_done: Any = None,
) -> list[RunRecord]:
    """Run ``(arm, run-kwargs)`` jobs (a ``model_config`` entry overrides the shared one), in order, or in ``workers`` processes of one thread each
    (small CPU models train faster as two one-thread runs than as one two-thread run). Results
    are identical either way; only the timings differ. ``on_done(record)`` is called per run."""
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive int, got {workers!r}")
    if workers == 1 or len(jobs) <= 1:
        out = []
        for arm, kwargs in jobs:
            out.append(_run_one(model_config, base, arm, corpus, kwargs))
            if on_done is not None:
                on_done(out[-1])
        return out
    quiet = TrainConfig(**{**base.__dict__, "progress": False})
    payload = [(model_config, quiet, arm, kwargs, corpus.source) for arm, kwargs in jobs]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(1,)) as pool:
        futures = [pool.submit(_run_job, job) for job in payload]
        out = []
        for future in futures:
            out.append(future.result())
            if on_done is not None:
                on_done(out[-1])
    return out


def default_workers(device: str) -> int:
    """Parallel runs: two one-thread processes on a CPU with at least two cores; six processes
    sharing one GPU (the small models are launch-bound: on an H200 six processes trained 32
    `small` runs of 1000 steps in 148 s, about twice the throughput of one process)."""
    if device != "cpu" and (device != "auto" or torch.cuda.is_available()):
        return max(1, min(6, (os.cpu_count() or 1) // 2))
    return max(1, min(2, os.cpu_count() or 1))
