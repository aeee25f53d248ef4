"""Muon / AdamW (± learnable multipliers) on the tiny GPT under FSDP2 and DDP against one process, run
inside the spawned gloo processes (see ``_harness.py``); each scenario returns a dict."""

from __future__ import annotations

import contextlib
import math
from unittest import mock

import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor

import optimizers
from optimizers import distributed, orthogonalize
from optimizers.orthogonalize import Orthogonalize
from reference_models import GPT
from tests.distributed._harness import Context
from tests.distributed._model import (
    GLOBAL_BATCH,
    STEPS,
    batches,
    build,
    full_state,
    group_summary,
    make_optimizer,
    max_diff,
    reference,
    shard_fsdp,
    tiny_config,
    train,
)


def counting_orthogonalize(counts: list[int], method: str = "standard") -> Orthogonalize:
    """A ``Muon(orthogonalize=...)`` hook that counts the whole matrices this rank orthogonalizes, then
    does what Muon's default does (5 quintic Newton–Schulz steps, ``method``)."""

    def orth(matrices: list) -> list:
        counts.append(sum(math.prod(m.shape[:-2]) for m in matrices))
        return orthogonalize.orthogonalize_updates(matrices, steps=5, coefficients="quintic", dtype=None, method=method)

    return orth


# The two context managers below patch library functions on purpose: the first observes which
# Newton–Schulz method is reached (the hook above replaces the method, so it cannot show it); the
# second injects a bug into the communication path, which the hook (whole matrices in, whole
# matrices out) cannot reach.


@contextlib.contextmanager
def record_newton_schulz_methods(methods: set):
    """Record the ``method`` of every Newton–Schulz call made on Muon's default local path."""
    original = orthogonalize.newton_schulz

    def recording(x, *args, **kwargs):
        methods.add(kwargs.get("method"))
        return original(x, *args, **kwargs)

    with mock.patch.object(orthogonalize, "newton_schulz", recording):
        yield


@contextlib.contextmanager
def orthogonalize_local_shards():
    """The common bug this library must not have: Newton–Schulz on each rank's local shard alone."""

    def naive(updates, **ns_kwargs):
        ns_kwargs.pop("orthogonalize", None)
        locals_ = orthogonalize.orthogonalize_updates([u.to_local() for u in updates], **ns_kwargs)
        return [
            DTensor.from_local(o, u.device_mesh, u.placements, shape=u.shape, stride=u.stride())
            for o, u in zip(locals_, updates)
        ]

    with mock.patch.object(distributed, "orthogonalize_dtensors", naive):
        yield


def _n_muon_matrices(opt) -> int:
    return sum(len(g["params"]) for g in opt.param_groups if g["algorithm"] == "muon")


def _parity(model, ref_model, norms, ref_norms, counts: list[int] | None, opt, ref_groups) -> dict:
    """What every Muon scenario reports against its single-process reference."""
    out = {
        "max_diff": max_diff(full_state(model), full_state(ref_model)),
        "norms": norms,
        "ref_norms": ref_norms,
        "n_muon_matrices": _n_muon_matrices(opt),
        "groups_match": group_summary(opt) == ref_groups,
    }
    if counts is not None:
        out["ns_matrices_per_step"] = sum(counts) / STEPS
    return out


def _fsdp_parity(ctx: Context, multipliers: str, clip: float | None, count: bool = True, **opt_kw) -> dict:
    """FSDP2 run vs one process; with ``count`` Muon gets :func:`counting_orthogonalize` as its hook."""
    data = batches(STEPS)
    ref_model, ref_mp, ref_norms, ref_groups = reference(multipliers, data, clip, **opt_kw)
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    model, mp = build(multipliers)
    roles_before = mp.roles
    shard_fsdp(model, mesh)
    counts: list[int] | None = [] if count else None
    if counts is not None:
        opt_kw["orthogonalize"] = counting_orthogonalize(counts, opt_kw.get("ns_method", "standard"))
    opt = make_optimizer(mp, **opt_kw)
    norms = train(model, opt, mp, data, ctx.rank, ctx.world_size, clip)
    uneven = [n for n, p in model.named_parameters() if p.shape[0] % ctx.world_size]
    return {
        **_parity(model, ref_model, norms, ref_norms, counts, opt, ref_groups),
        "uneven_params": uneven,
        "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "roles_kept": mp.roles == roles_before == ref_mp.roles,
        "n_multipliers": len(mp.multiplier_parameters()),
    }


def fsdp_muon_gram(ctx: Context) -> dict:
    methods: set = set()
    with record_newton_schulz_methods(methods):
        result = _fsdp_parity(ctx, "none", clip=None, count=False, ns_method="gram")
    return {**result, "ns_methods": sorted(map(str, methods))}


def fsdp_muon_plain(ctx: Context) -> dict:
    result = _fsdp_parity(ctx, "none", clip=None)
    with orthogonalize_local_shards():
        result["shard_alone_max_diff"] = _fsdp_parity(ctx, "none", clip=None)["max_diff"]
    return result


def fsdp_muon_multipliers(ctx: Context) -> dict:
    return _fsdp_parity(ctx, "vector", clip=0.05)


def fsdp_adamw_multipliers(ctx: Context) -> dict:
    """optimizers.AdamW (elementwise on the DTensor shards) under FSDP2 vs one process."""
    data = batches(STEPS)

    def adamw(mp):
        return optimizers.AdamW(mp.param_groups("adamw", lr=3e-3, weight_decay=0.1))

    ref_model, ref_mp = build("vector")
    train(ref_model, adamw(ref_mp), ref_mp, data, 0, 1, clip=None)
    model, mp = build("vector")
    shard_fsdp(model, init_device_mesh("cpu", (ctx.world_size,)))
    train(model, adamw(mp), mp, data, ctx.rank, ctx.world_size, clip=None)
    return {"max_diff": max_diff(full_state(model), full_state(ref_model))}


def ddp_muon_multipliers(ctx: Context) -> dict:
    from torch.nn.parallel import DistributedDataParallel

    data = batches(STEPS)
    ref_model, _, ref_norms, ref_groups = reference("vector", data, clip=0.05)
    model, mp = build("vector")
    ddp = DistributedDataParallel(model)
    counts: list[int] = []
    opt = make_optimizer(mp, process_group=dist.group.WORLD, orthogonalize=counting_orthogonalize(counts))
    norms = train(ddp, opt, mp, data, ctx.rank, ctx.world_size, clip=0.05)
    return _parity(model, ref_model, norms, ref_norms, counts, opt, ref_groups)



def fsdp_fold(ctx: Context) -> dict:
    """Fold the multipliers of an FSDP2-trained model; its full state dict is the folded reference's."""
    data = batches(STEPS)
    ref_model, ref_mp, _, _ = reference("vector", data, clip=None)
    ref_mp.fold()
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    model, mp = build("vector")
    shard_fsdp(model, mesh)
    train(model, make_optimizer(mp), mp, data, ctx.rank, ctx.world_size, clip=None)
    mp.fold()
    folded = full_state(model)
    plain = GPT(tiny_config())
    plain.load_state_dict(folded)  # strict: exactly the plain model's keys
    x = data[0, :, :-1]
    return {
        "state_diff": max_diff(folded, full_state(ref_model)),
        "logits_diff": (plain(x) - ref_model(x)).abs().max().item(),
        "multiplier_keys": [k for k in folded if "weight_mult" in k],
    }


def benchmark_smoke(ctx: Context) -> dict:
    """``benchmarks/distributed.py`` end to end (FSDP2 and DDP), a few steps of the tiny GPT."""
    from benchmarks import distributed as bench

    common = ["--preset", "tiny", "--steps", "3", "--warmup-steps", "1", "--batch-size", "2", "--eval-batches", "1"]
    out = {}
    for parallel in ("fsdp2", "ddp"):
        path = ctx.workdir / f"bench-{parallel}-{ctx.world_size}.json"
        summary = bench.main(common + ["--parallel", parallel, "--json", str(path)])
        out[parallel] = {"summary": summary, "json_written": path.exists() if ctx.rank == 0 else None}
    return out


def fsdp_nonfinite_shard(ctx: Context) -> dict:
    """A NaN in one rank's gradient shard: every rank skips the step (or every rank raises)."""
    data = batches(1)
    out = {}
    for mode in ("skip", "raise"):
        model, mp = build("none")
        shard_fsdp(model, init_device_mesh("cpu", (ctx.world_size,)))
        opt = make_optimizer(mp, nonfinite=mode)
        before = full_state(model)
        per = GLOBAL_BATCH // ctx.world_size
        x = data[0, ctx.rank * per : (ctx.rank + 1) * per]
        model(x[:, :-1], x[:, 1:]).backward()
        if ctx.rank == 0:
            model.blocks[0].mlp.up_proj.weight.grad.to_local().view(-1)[0] = float("nan")
        try:
            opt.step()
            out[mode] = {"raised": False, "skipped_steps": opt.skipped_steps}
        except FloatingPointError:
            out[mode] = {"raised": True, "skipped_steps": opt.skipped_steps}
        out[mode]["unchanged"] = max_diff(full_state(model), before) == 0.0
    return out
