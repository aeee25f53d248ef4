"""Cost of learnable multipliers: training-step time and saved-for-backward memory of the reference
GPT with vector multipliers against the plain model, measured in the same run.

Contenders (same weights, same batch — 16 sequences as ``reference_models.TrainConfig`` — the
same optimizer ``optimizers.AdamW`` (torch's fused kernel) and the same ``mp.clip_grad_norm_`` in
every step; only the multipliers differ):

* ``plain``        ``parametrize(model, "none")``: roles and rules only, no multipliers;
* ``vector/auto``  ``parametrize(model, "vector")``, weight or activation side chosen per call,
  the library's default: the C++ Linear (``parametrization.compiled_linear``) where it builds;
* ``vector/Python op``   the same, with ``use_compiled_linear(False)`` (the Python ops only; timed
  only where the C++ Linear is in use, i.e. eager without autocast, and builds);
* ``vector/weight``      the same, forced to build ``W_eff`` (O(m·n) per call);
* ``vector/activation``  the same, forced to scale activations (O(tokens·(m+n)) per call);
* ``vector/unfused``     the weight side written with plain autograd ops through ``W_eff`` (what
  the library did before the fused ops of ``parametrization.multiplied_ops``), for comparison;
* forward only: ``fold()``-ed model vs plain model (the folded model *is* a plain model).

Memory: bytes autograd keeps for backward after one forward (``torch.autograd.graph.
saved_tensors_hooks``; distinct storages, parameters excluded), for the rows ``small`` 16×128,
``medium`` 16×256, ``medium`` with d_model 1024 and 2 layers at 8×256, ``medium`` 8×128 on the
activation side, and a width sweep (``--widths``, 2 layers, 8×256 tokens); goal: vector ÷ plain
≤ 1.02. On CUDA (``--device cuda``) also ``torch.cuda.max_memory_allocated`` of a train step, for
every memory and sweep row and for every timed contender (``CUDA peak memory`` rows; goal for
``vector/auto`` ≤ 1.02). The sweep also times train steps (plain, fused, unfused; interleaved,
``--sweep-steps``).

Per call: ``layer call`` rows time the forward + backward of one 16×16 multiplied ``nn.Linear`` at 8
tokens, where the arithmetic is negligible, so the extra microseconds over plain (and over the
unfused weight side) are the Python cost per layer and call; ``--forward-steps`` rounds of 100 calls.

Ratios reported: each step time ÷ ``plain`` (goal for ``vector/auto``: ≤ 1.05 on CPU), fused ÷
unfused (goal ≤ 1) and folded forward ÷ plain forward (goal ≤ 1.02, i.e. no inference cost), as a
ratio of medians (the goal is judged on it), as a paired ratio (median over rounds of the two times
taken in the same round), as a ratio of minima, and as a ratio of median process CPU times.
``plain (copy)`` is a second, identical plain model timed alongside: its ratio to ``plain`` is the
noise floor of the run. Train steps are timed on ``--instances`` fresh copies of every contender
(pooled), because where a model's tensors land in memory moves its step time by a few percent.

``--compile`` runs every contender through ``torch.compile`` (each is called once before it is
timed or measured; the saved-for-backward hooks see a compiled graph's saved tensors too) and
``--bf16`` runs every forward under bf16 autocast: together, the GPU target's setting.

Usage::

    python -m benchmarks.multiplier_overhead --out results/multiplier_overhead.json
    python -m benchmarks.multiplier_overhead --device cuda --compile --bf16 --preset medium --widths 128 256 512 1024 2048
    python -m benchmarks.multiplier_overhead --quick     # seconds; used by the smoke test
    python -m benchmarks.multiplier_overhead --widths 128 256 512 1024 --sweep-steps 5
"""

from __future__ import annotations

import argparse
import copy
import functools
import statistics
from dataclasses import dataclass
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

import optimizers
import parametrization as P
from parametrization.effective_weight import effective_weight, embedding_activation_side, linear_activation_side
from parametrization.multipliers import is_multiplied, set_compute
from benchmarks._report import machine, paired_ratio, ratio_row, run_script, time_instances, time_interleaved
from reference_models import GPT, GPTConfig

MEMORY_ROWS = (
    # name, preset, overrides, batch, seq_len, compute
    ("small 16x128", "small", {}, 16, 128, "auto"),
    ("medium 16x256", "medium", {}, 16, 256, "auto"),
    ("medium d1024 L2 8x256", "medium", {"d_model": 1024, "n_layer": 2, "n_head": 16}, 8, 256, "auto"),
    ("medium 8x128 activation side", "medium", {}, 8, 128, "activation"),
)


def _unfused_forward(module: nn.Module, compute: str, input: torch.Tensor) -> torch.Tensor:
    """A multiplied Linear/Embedding computed with plain autograd ops (the pre-fused library)."""
    params = module._parameters
    w, s, r, c = params["weight"], params.get("weight_mult_scalar"), params.get("weight_mult_row"), params.get("weight_mult_col")
    fixed = module._lrm_specs["weight"].fixed
    if isinstance(module, nn.Embedding):
        if compute == "activation":
            return embedding_activation_side(F.embedding(input, w), input, s, r, c, fixed=fixed)
        return F.embedding(input, effective_weight(w, s, r, c, fixed=fixed))
    if compute == "activation":
        return linear_activation_side(input, w, module.bias, s, r, c, fixed=fixed)
    return F.linear(input, effective_weight(w, s, r, c, fixed=fixed), module.bias)


def unfuse(model: nn.Module, compute: str = "weight") -> nn.Module:
    """Make every multiplied Linear/Embedding of ``model`` run :func:`_unfused_forward` (in place)."""
    for module in model.modules():
        if is_multiplied(module) and isinstance(module, (nn.Linear, nn.Embedding)):
            module.forward = functools.partial(_unfused_forward, module, compute)  # type: ignore[method-assign]
    return model


@dataclass(frozen=True)
class RunMode:
    """How every contender is called: ``torch.compile``-d (``--compile``) and/or under bf16 autocast
    (``--bf16``). Plain eager float32 by default."""

    compile: bool = False
    bf16: bool = False

    def call(self, model: nn.Module) -> Callable[..., Any]:
        fn = torch.compile(model) if self.compile else model
        if not self.bf16:
            return fn
        device = next(model.parameters()).device.type

        def run(*args: Any) -> Any:
            with torch.autocast(device, dtype=torch.bfloat16):
                return fn(*args)

        return run


def saved_bytes(model: nn.Module, *args: Any, call: Callable[..., Any] | None = None) -> int:
    """Bytes autograd keeps for backward after ``call(*args)`` (default ``model``): distinct storages, not
    parameters of ``model``. A compiled forward's saved tensors pass through the same hooks."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = (model if call is None else call)(*args)
    del loss
    return sum(seen.values())


def _contenders(config: GPTConfig, compute: str, device: str) -> dict[str, nn.Module]:
    torch.manual_seed(0)
    base = GPT(config).to(device)
    models: dict[str, nn.Module] = {"plain": copy.deepcopy(base)}
    P.parametrize(models["plain"], "none")
    for name in ("vector", "vector/unfused"):
        model = copy.deepcopy(base)
        P.parametrize(model, "vector", compute=compute)
        models[name] = unfuse(model, "activation" if compute == "activation" else "weight") if name.endswith("unfused") else model
    return models


def _batch(config: GPTConfig, batch: int, seq_len: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, config.vocab_size, (batch, seq_len + 1), generator=g).to(device)
    return idx[:, :-1], idx[:, 1:]


def memory_row(name: str, config: GPTConfig, batch: int, seq_len: int, compute: str, device: str, mode: RunMode = RunMode()) -> dict[str, Any]:
    """Saved-for-backward bytes (and CUDA peak memory of a train step) for plain, vector, unfused."""
    models = _contenders(config, compute, device)
    idx, targets = _batch(config, batch, seq_len, device)
    row: dict[str, Any] = {"name": name, "d_model": config.d_model, "n_layer": config.n_layer, "tokens": batch * seq_len, "compute": compute}
    for key, model in models.items():
        call = mode.call(model)
        if mode.compile:
            call(idx, targets).backward()  # compile outside the measurement
            model.zero_grad(set_to_none=True)
        row[f"saved_bytes/{key}"] = saved_bytes(model, idx, targets, call=call)
        if device.startswith("cuda"):
            row[f"cuda_peak_bytes/{key}"] = cuda_peak_bytes(lambda: call(idx, targets).backward())
            model.zero_grad(set_to_none=True)
    del models
    row["saved_ratio"] = row["saved_bytes/vector"] / row["saved_bytes/plain"]
    row["saved_ratio_unfused"] = row["saved_bytes/vector/unfused"] / row["saved_bytes/plain"]
    row["meets_goal"] = row["saved_ratio"] <= 1.02
    if device.startswith("cuda"):
        row["cuda_peak_ratio"] = row["cuda_peak_bytes/vector"] / row["cuda_peak_bytes/plain"]
    return row


def sweep_times(config: GPTConfig, batch: int, seq_len: int, steps: int, warmup: int, device: str, instances: int = 1, mode: RunMode = RunMode()) -> dict[str, Any]:
    """Interleaved train-step times of plain, vector (fused) and vector/unfused at one width, pooled
    over ``instances`` fresh copies of the three models."""
    idx, targets = _batch(config, batch, seq_len, device)

    def make_fns() -> dict[str, Callable[[], None]]:
        fns = {}
        for key, model in _contenders(config, "auto", device).items():
            opt = optimizers.AdamW([p for p in model.parameters()], lr=1e-3, weight_decay=0.1)
            fns[key] = _bare_step(mode.call(model), opt, idx, targets)
        return fns

    wall, cpu = time_instances(make_fns, instances, steps, warmup)
    med = statistics.median
    return {
        "times_s": wall,
        "ratio": med(wall["vector"]) / med(wall["plain"]),
        "ratio_unfused": med(wall["vector/unfused"]) / med(wall["plain"]),
        "paired_ratio": paired_ratio(wall, "vector", "plain"),
        "paired_ratio_unfused": paired_ratio(wall, "vector/unfused", "plain"),
        "paired_ratio_fused_vs_unfused": paired_ratio(wall, "vector", "vector/unfused"),
        "cpu_time_ratio": med(cpu["vector"]) / med(cpu["plain"]),
        "cpu_time_ratio_unfused": med(cpu["vector/unfused"]) / med(cpu["plain"]),
    }


CALL_WIDTH, CALL_TOKENS, CALLS_PER_TIMING = 16, 8, 100


def layer_call_times(rounds: int, warmup: int, device: str, cpp: bool = False) -> dict[str, list[float]]:
    """Seconds per forward + backward of one tiny multiplied ``nn.Linear`` (16×16, 8 tokens), where
    the arithmetic is negligible and the time is the per-call overhead: plain, fused, unfused.

    Each timing covers ``CALLS_PER_TIMING`` calls; the contenders are interleaved as elsewhere.
    """
    torch.manual_seed(0)
    # Two layers: "vector" leaves the last (output) layer plain; the first is the one timed.
    base = nn.Sequential(nn.Linear(CALL_WIDTH, CALL_WIDTH, bias=False), nn.Linear(CALL_WIDTH, CALL_WIDTH, bias=False)).to(device)
    x = torch.randn(CALL_TOKENS, CALL_WIDTH, device=device, requires_grad=True)
    gy = torch.randn(CALL_TOKENS, CALL_WIDTH, device=device)
    fns: dict[str, Callable[[], None]] = {}
    for name, placement in (("plain", "none"), ("vector", "vector"), ("vector/unfused", "vector")):
        model = copy.deepcopy(base)
        P.parametrize(model, placement)
        if name == "vector/unfused":
            unfuse(model)
        layer = model[0]

        def calls(layer: nn.Module = layer) -> None:
            for _ in range(CALLS_PER_TIMING):
                layer(x).backward(gy)

        fns[name] = calls
        if cpp and name == "vector":
            fns["vector/Python op"] = with_python_op(calls)  # the same layer, C++ Linear switched off
    wall, _ = time_interleaved(fns, rounds, warmup)
    return {k: [t / CALLS_PER_TIMING for t in v] for k, v in wall.items()}


def cpp_in_use(mode: RunMode) -> bool:
    """True when the default multiplied Linear of this run is the C++ op (it builds here, and the
    run is eager without autocast: otherwise every call takes the Python op). Builds it now, so
    that no timed call does."""
    return not mode.compile and not mode.bf16 and P.compiled_linear_enabled()


def with_python_op(fn: Callable[[], None]) -> Callable[[], None]:
    """``fn`` run with the C++ Linear switched off (the switch is process-wide; contenders interleave)."""

    def run() -> None:
        previous = P.use_compiled_linear(False)
        try:
            fn()
        finally:
            P.use_compiled_linear(previous)

    return run


def cuda_peak_bytes(step: Callable[[], None]) -> int:
    """``torch.cuda.max_memory_allocated`` during one call of ``step``, above what was allocated before."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    step()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def _bare_step(model: Callable[..., Any], opt: torch.optim.Optimizer, idx: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        model(idx, targets).backward()
        opt.step()

    return step


def _train_step(model: Callable[..., Any], mp: P.Parametrization, opt: torch.optim.Optimizer, idx: torch.Tensor, targets: torch.Tensor) -> Callable[[], None]:
    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = model(idx, targets)
        loss.backward()
        mp.clip_grad_norm_(1.0)
        opt.step()

    return step


def _forward(model: Callable[..., Any], idx: torch.Tensor) -> Callable[[], None]:
    def fwd() -> None:
        with torch.no_grad():
            model(idx)

    return fwd


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small", help="GPTConfig preset (default: small)")
    ap.add_argument("--batch", type=int, default=16, help="sequences per step (TrainConfig's default)")
    ap.add_argument("--steps", type=int, default=12, help="timed training steps per contender and instance")
    ap.add_argument("--instances", type=int, default=5, help="fresh copies of every contender, timed in turn and pooled")
    ap.add_argument("--forward-steps", type=int, default=30, help="timed forwards per contender")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--widths", type=int, nargs="*", default=[128, 256, 512, 1024], help="d_model of the sweep (2 layers)")
    ap.add_argument("--sweep-batch", type=int, default=8, help="sequences per step in the sweep")
    ap.add_argument("--sweep-seq", type=int, default=256, help="sequence length in the sweep")
    ap.add_argument("--sweep-steps", type=int, default=5, help="timed train steps per contender and width (0: memory only)")
    ap.add_argument("--no-memory-rows", action="store_true", help="skip the fixed memory rows (small/medium/...)")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (cuda adds max_memory_allocated)")
    ap.add_argument("--compile", action="store_true", help="torch.compile every contender (compiled before it is timed or measured)")
    ap.add_argument("--bf16", action="store_true", help="run every forward under bf16 autocast (the GPU target; slow on CPU)")
    ap.add_argument("--quick", action="store_true", help="tiny preset, batch 2, few steps (smoke test)")
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    if args.quick:
        args.preset, args.batch, args.steps, args.forward_steps, args.warmup, args.instances = "tiny", 2, 2, 2, 1, 1
        args.widths, args.sweep_batch, args.sweep_seq, args.sweep_steps, args.no_memory_rows = [32, 64], 2, 32, 1, True
    if args.sweep_steps < 0:
        raise SystemExit(f"--sweep-steps must be >= 0, got {args.sweep_steps}")
    for name in ("batch", "steps", "instances", "forward_steps", "sweep_batch", "sweep_seq"):
        if getattr(args, name) < 1:
            raise SystemExit(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.warmup < 0:
        raise SystemExit(f"--warmup must be >= 0, got {args.warmup}")
    if args.compile:
        args.warmup = max(args.warmup, 1)  # the first call compiles: never time it
    return args


def run(args: argparse.Namespace) -> dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    mode = RunMode(compile=args.compile, bf16=args.bf16)
    if args.compile:
        # Every contender and copy is a new compilation of the same forward code; past dynamo's
        # default limit it would silently fall back to eager.
        from torch import _dynamo

        _dynamo.config.recompile_limit = max(_dynamo.config.recompile_limit, 256)
        _dynamo.config.accumulated_recompile_limit = max(_dynamo.config.accumulated_recompile_limit, 4096)
        _dynamo.config.fail_on_recompile_limit_hit = True
    config = GPTConfig.preset(args.preset)
    torch.manual_seed(0)
    base = GPT(config).to(args.device)
    idx, targets = _batch(config, args.batch, config.seq_len, args.device)

    contenders = (
        ("plain", "none", "auto"),
        ("plain (copy)", "none", "auto"),  # an A/A control: its ratio to plain is the noise floor
        ("vector/auto", "vector", "auto"),
        ("vector/weight", "vector", "weight"),
        ("vector/activation", "vector", "activation"),
        ("vector/unfused", "vector", "weight"),
    )
    cpp = cpp_in_use(mode)
    if cpp:
        contenders += (("vector/Python op", "vector", "auto"),)  # vector/auto with the C++ Linear off
    models: dict[str, tuple[GPT, P.Parametrization, Callable[[], None]]] = {}  # the last instance's

    def make_steps() -> dict[str, Callable[[], None]]:
        # Fresh copies per instance: where a model's tensors land in memory moves its step time by a
        # few percent, so the pooled times average over several placements.
        steps: dict[str, Callable[[], None]] = {}
        models.clear()
        for name, placement, compute in contenders:
            model = copy.deepcopy(base)
            mp = P.parametrize(model, placement, compute=compute)
            if name == "vector/unfused":
                unfuse(model)
            opt = optimizers.AdamW(mp.param_groups("adamw", lr=1e-3, weight_decay=0.1))
            steps[name] = _train_step(mode.call(model), mp, opt, idx, targets)
            if name == "vector/Python op":
                steps[name] = with_python_op(steps[name])
            models[name] = (model, mp, steps[name])
        return steps

    step_times, step_cpu = time_instances(make_steps, args.instances, args.steps, args.warmup)
    # On CUDA, the peak memory of one train step of each (already compiled and warmed-up) contender.
    cuda_peak = {name: cuda_peak_bytes(step) for name, (_, _, step) in models.items()} if args.device.startswith("cuda") else {}

    # Forward only: the folded model against the plain model (and the unfolded one, for reference).
    vector_model, vector_mp, _ = models["vector/auto"]
    unfolded = copy.deepcopy(vector_model)
    folded = copy.deepcopy(vector_model)
    P.fold(folded)
    plain_model = models["plain"][0]
    fwd_times, fwd_cpu = time_interleaved(
        {"plain": _forward(mode.call(plain_model), idx), "folded": _forward(mode.call(folded), idx), "vector/auto": _forward(mode.call(unfolded), idx)},
        args.forward_steps,
        args.warmup,
    )
    with torch.no_grad():
        fold_error = ((folded(idx) - unfolded(idx)).abs().max() / unfolded(idx).abs().max()).item()

    med = statistics.median
    plain_step = med(step_times["plain"])
    fused = ("vector/auto",) + (("vector/Python op",) if cpp else ())  # each also compared with unfused (goal ≤ 1)
    rows = [
        ratio_row(f"train step {name}", med(step_times[name]), "plain", plain_step, 1.05 if name == "vector/auto" else None,
                  paired_ratio=paired_ratio(step_times, name, "plain"))
        for name in ("plain (copy)", "vector/auto", "vector/weight", "vector/activation", "vector/unfused") + fused[1:]
    ]
    for name in fused:
        rows.append(ratio_row(f"train step {name} vs unfused", med(step_times[name]), "vector/unfused",
                              med(step_times["vector/unfused"]), 1.0, paired_ratio=paired_ratio(step_times, name, "vector/unfused")))
    plain_fwd = med(fwd_times["plain"])
    rows.append(ratio_row("forward folded", med(fwd_times["folded"]), "plain", plain_fwd, 1.02, paired_ratio=paired_ratio(fwd_times, "folded", "plain")))
    rows.append(ratio_row("forward vector/auto", med(fwd_times["vector/auto"]), "plain", plain_fwd, None, paired_ratio=paired_ratio(fwd_times, "vector/auto", "plain")))
    mins = {("train step " + k): (min(v), min(step_times["plain"])) for k, v in step_times.items()}
    mins.update({("forward " + k): (min(v), min(fwd_times["plain"])) for k, v in fwd_times.items()})
    cpu_medians = {("train step " + k): (med(v), med(step_cpu["plain"])) for k, v in step_cpu.items()}
    cpu_medians.update({("forward " + k): (med(v), med(fwd_cpu["plain"])) for k, v in fwd_cpu.items()})
    for name in fused:
        mins[f"train step {name} vs unfused"] = (min(step_times[name]), min(step_times["vector/unfused"]))
        cpu_medians[f"train step {name} vs unfused"] = (med(step_cpu[name]), med(step_cpu["vector/unfused"]))
    for r in rows:
        if r["name"] not in mins:  # per-call rows carry their own figures
            continue
        # The fastest call is the least disturbed by other load on a shared machine.
        ours_min, peer_min = mins[r["name"]]
        r["ratio_of_minima"] = ours_min / peer_min
        ours_cpu, peer_cpu = cpu_medians[r["name"]]
        r["cpu_time_ratio"] = ours_cpu / peer_cpu
    call = layer_call_times(args.forward_steps, args.warmup, args.device, cpp)
    for name in ("vector", "vector/unfused") + (("vector/Python op",) if cpp else ()):
        rows.append(ratio_row(f"layer call {name}", med(call[name]), "plain", med(call["plain"]), None,
                              paired_ratio=paired_ratio(call, name, "plain"), extra_us=(med(call[name]) - med(call["plain"])) * 1e6))
    for name in ("vector",) + (("vector/Python op",) if cpp else ()):
        rows.append(ratio_row(f"layer call {name} vs unfused", med(call[name]), "vector/unfused", med(call["vector/unfused"]), None,
                              paired_ratio=paired_ratio(call, name, "vector/unfused"),
                              extra_us=(med(call[name]) - med(call["vector/unfused"])) * 1e6))
    for name, peak in cuda_peak.items():
        if name != "plain":
            rows.append(dict(name=f"CUDA peak memory {name}", peak_bytes=peak, plain_peak_bytes=cuda_peak["plain"],
                             ratio=peak / cuda_peak["plain"], goal=1.02 if name == "vector/auto" else None,
                             meets_goal=peak / cuda_peak["plain"] <= 1.02 if name == "vector/auto" else None))
    memory = []
    if not args.no_memory_rows:
        for name, preset, overrides, batch, seq_len, compute in MEMORY_ROWS:
            memory.append(memory_row(name, GPTConfig.preset(preset, **overrides), batch, seq_len, compute, args.device, mode))
    sweep = []
    for d in args.widths:
        cfg = GPTConfig.preset("medium", d_model=d, n_layer=2, n_head=max(2, d // 64), seq_len=max(256, args.sweep_seq))
        row = memory_row(f"sweep d={d}", cfg, args.sweep_batch, args.sweep_seq, "auto", args.device, mode)
        if args.sweep_steps:
            row.update({f"time_{k}": v for k, v in sweep_times(cfg, args.sweep_batch, args.sweep_seq, args.sweep_steps, min(args.warmup, 1), args.device, args.instances, mode).items()})
        sweep.append(row)
    n_params = sum(p.numel() for p in base.parameters())
    n_mult = sum(p.numel() for p in vector_mp.multiplier_parameters())
    return {
        "config": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "model": config.to_dict(),
        "machine": machine(args.device),
        "tokens_per_step": args.batch * config.seq_len,
        "parameters": n_params,
        "multiplier_parameters": n_mult,
        "fold_max_relative_error": fold_error,
        "default_linear_op": "C++" if cpp else "Python",  # what vector/auto's multiplied Linears ran
        "rows": rows,
        "memory_rows": memory,
        "sweep_rows": sweep,
        "raw_times_s": {"train_step": step_times, "forward": fwd_times, "layer_call": call},
        "raw_cpu_times_s": {"train_step": step_cpu, "forward": fwd_cpu},
    }


def render(result: dict[str, Any], console: Console) -> None:
    table = Table(
        title=f"Multiplier overhead: GPT {result['config']['preset']}, {result['parameters'] / 1e6:.2f} M params "
        f"(+{result['multiplier_parameters']:,} multipliers), {result['tokens_per_step']} tokens/step, "
        f"{result['machine']['threads']} threads"
    )
    for col in ("comparison", "median", "peer", "peer median", "ratio", "paired ratio", "ratio of minima", "CPU-time ratio", "goal", "ok"):
        table.add_column(col, justify="left" if col in ("comparison", "peer") else "right")
    for r in result["rows"]:
        ok = "-" if r["meets_goal"] is None else ("yes" if r["meets_goal"] else "NO")
        goal = "-" if r["goal"] is None else f"≤ {r['goal']:.2f}"
        if "extra_us" in r:  # a per-call row: microseconds per call
            table.add_row(f"{r['name']} ({r['extra_us']:+.0f} µs)", f"{r['ours_s'] * 1e6:.1f} µs", r["peer"], f"{r['peer_s'] * 1e6:.1f} µs",
                          f"{r['ratio']:.3f}", f"{r['paired_ratio']:.3f}", "-", "-", goal, ok)
            continue
        if "peak_bytes" in r:  # a CUDA memory row: bytes, not seconds
            table.add_row(r["name"], f"{r['peak_bytes'] / 2**20:.0f} MiB", "plain", f"{r['plain_peak_bytes'] / 2**20:.0f} MiB",
                          f"{r['ratio']:.3f}", "-", "-", "-", goal, ok)
            continue
        table.add_row(r["name"], f"{r['ours_s'] * 1e3:.2f} ms", r["peer"], f"{r['peer_s'] * 1e3:.2f} ms", f"{r['ratio']:.3f}",
                      f"{r['paired_ratio']:.3f}", f"{r['ratio_of_minima']:.3f}", f"{r['cpu_time_ratio']:.3f}", goal, ok)
    console.print(table)
    console.print(f"fold max relative error: {result['fold_max_relative_error']:.2e}")
    console.print(f"multiplied Linear of vector/auto and the sweep: the {result['default_linear_op']} op")
    mem = Table(title="Saved-for-backward memory (MB, parameters excluded) and sweep step-time ratios (÷ plain)")
    for col in ("row", "tokens", "plain", "vector", "ratio", "unfused", "unfused ratio", "goal ≤ 1.02", "CUDA peak ratio",
                "time ratio", "time ratio unfused", "paired", "paired unfused", "fused ÷ unfused (paired)", "CPU-time ratio",
                "CPU-time ratio unfused"):
        mem.add_column(col, justify="left" if col == "row" else "right")
    for r in result["memory_rows"] + result["sweep_rows"]:
        mb = lambda k: f"{r[k] / 1e6:.1f}"  # noqa: E731
        fmt = lambda k: f"{r[k]:.3f}" if k in r else "-"  # noqa: E731
        mem.add_row(r["name"], str(r["tokens"]), mb("saved_bytes/plain"), mb("saved_bytes/vector"), f"{r['saved_ratio']:.3f}",
                    mb("saved_bytes/vector/unfused"), f"{r['saved_ratio_unfused']:.3f}", "yes" if r["meets_goal"] else "NO",
                    fmt("cuda_peak_ratio"), fmt("time_ratio"), fmt("time_ratio_unfused"), fmt("time_paired_ratio"),
                    fmt("time_paired_ratio_unfused"), fmt("time_paired_ratio_fused_vs_unfused"), fmt("time_cpu_time_ratio"),
                    fmt("time_cpu_time_ratio_unfused"))
    console.print(mem)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    return run_script(argv, parse_args, run, render, width=160)


if __name__ == "__main__":
    main()
