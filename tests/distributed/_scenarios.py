"""Scenarios run inside the spawned gloo processes (see ``_harness.py``); each returns a dict.

Every scenario builds its inputs from a fixed seed, so all ranks hold the same full tensors and
the single-process reference is computed on each rank for comparison.
"""

from __future__ import annotations

import torch
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Replicate, Shard, distribute_tensor

from optimizers import _distributed
from tests.distributed._harness import Context


def polar(x: torch.Tensor) -> torch.Tensor:
    """Exact orthogonal polar factor ``U Vᵀ`` of a (batch of) matrices (a stand-in for Newton–Schulz)."""
    u, _, vh = torch.linalg.svd(x.double(), full_matrices=False)
    return (u @ vh).to(x.dtype)


class Counting:
    """An orthogonalizer (list of whole matrices → list) that records the shapes it is given."""

    def __init__(self, fn=polar):
        self.fn, self.shapes = fn, []

    def __call__(self, mats: list[torch.Tensor]) -> list[torch.Tensor]:
        self.shapes.extend(tuple(m.shape) for m in mats)
        return [self.fn(m) for m in mats]


# Shapes chosen for uneven shards over 2 and 3 ranks (7, 5, 2 rows), an empty shard (2 rows on 3
# ranks), a column-sharded matrix, a 3-D stack sharded on its batch dim, and a replicated matrix;
# 6 dim-sharded matrices, so the count is not divisible by 4 or 5 and uneven over 4.
PRIMITIVE_CASES = [
    ((7, 5), Shard(0)),
    ((5, 7), Shard(0)),
    ((7, 5), Shard(0)),
    ((2, 9), Shard(0)),
    ((6, 6), Shard(1)),
    ((7, 5), Shard(0)),
    ((3, 4, 6), Shard(0)),
    ((5, 3), Replicate()),
]


def orthogonalize_primitive(ctx: Context) -> dict:
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    gen = torch.Generator().manual_seed(0)
    fulls = [torch.randn(shape, generator=gen) for shape, _ in PRIMITIVE_CASES]
    dts = [distribute_tensor(f, mesh, [pl]) for f, (_, pl) in zip(fulls, PRIMITIVE_CASES)]
    counter = Counting()
    outs = _distributed.orthogonalize_dtensors(dts, orthogonalize=counter)
    shapes_main = list(counter.shapes)
    errors, kept = [], []
    for f, o, d in zip(fulls, outs, dts):
        kept.append(isinstance(o, DTensor) and o.placements == d.placements and o.shape == d.shape
                    and o.to_local().shape == d.to_local().shape)
        errors.append((o.full_tensor() - polar(f)).abs().max().item())
    # What a naive implementation would get: the local shard orthogonalized alone.
    first = dts[0]
    shard_alone = polar(first.to_local())
    rows = torch.chunk(polar(fulls[0]), ctx.world_size, dim=0)[ctx.rank]
    # Other dtypes go through their own collectives; a 2-D mesh (HSDP-like) takes the full_tensor path.
    mesh2d = init_device_mesh("cpu", (1, ctx.world_size), mesh_dim_names=("replicate", "shard"))
    extra_fulls = [torch.randn(7, 3, generator=gen, dtype=torch.float64), torch.randn(5, 6, generator=gen)]
    extra = [
        distribute_tensor(extra_fulls[0], mesh, [Shard(0)]),
        distribute_tensor(extra_fulls[1], mesh2d, [Replicate(), Shard(0)]),
    ]
    extra_outs = _distributed.orthogonalize_dtensors(extra, orthogonalize=counter)
    extra_errors = [(o.full_tensor() - polar(f)).abs().max().item() for f, o in zip(extra_fulls, extra_outs)]
    return {
        "errors": errors,
        "extra_errors": extra_errors,
        "extra_kept": [o.dtype == e.dtype and o.placements == e.placements for o, e in zip(extra_outs, extra)],
        "placements_kept": kept,
        "shapes_orthogonalized": shapes_main,
        "shard_alone_error": (shard_alone - rows).abs().max().item(),
    }


def orthogonalize_replicated(ctx: Context) -> dict:
    gen = torch.Generator().manual_seed(1)
    shapes = [(6, 4), (4, 6), (6, 4), (5, 5), (6, 4), (3, 2, 5)]
    fulls = [torch.randn(s, generator=gen) for s in shapes]
    counter = Counting()
    outs = _distributed.orthogonalize_replicated(fulls, orthogonalize=counter)
    return {
        "errors": [(o - polar(f)).abs().max().item() for o, f in zip(outs, fulls)],
        "shapes_orthogonalized": counter.shapes,
        "n": len(shapes),
    }


# ---------------------------------------------------------------------------------------------
# Muon + parametrization on the reference GPT under FSDP2 / DDP
# ---------------------------------------------------------------------------------------------

import contextlib  # noqa: E402

import torch.distributed as dist  # noqa: E402
from torch.distributed.fsdp import fully_shard  # noqa: E402

import optimizers  # noqa: E402
import optimizers.muon as muon_module  # noqa: E402
import parametrization as P  # noqa: E402
from reference_models import GPT, GPTConfig  # noqa: E402

GLOBAL_BATCH = 6  # divisible by 2 and 3 ranks
STEPS = 3


def tiny_config() -> GPTConfig:
    # d_mlp = 37 and vocab 255 give uneven FSDP2 shards on 2 and on 3 ranks (gate/up/down, wte, lm_head).
    return GPTConfig(vocab_size=255, seq_len=16, n_layer=2, d_model=48, n_head=4, n_kv_head=2, d_mlp=37)


def batches(steps: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (steps, GLOBAL_BATCH, 17), generator=gen)


def build(multipliers: str):
    torch.manual_seed(0)
    model = GPT(tiny_config())
    mp = P.parametrize(model, multipliers=multipliers)
    return model, mp


def make_optimizer(mp, **kw) -> optimizers.Muon:
    groups = mp.param_groups("muon", lr=0.02, weight_decay=0.1, lr_scale="spectral", adamw_lr=3e-3)
    return optimizers.Muon(groups, **kw)


def shard_fsdp(model: torch.nn.Module, mesh) -> None:
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        out[k.removeprefix("module.")] = v.detach().clone()
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise KeyError(f"state keys differ: {sorted(a.keys() ^ b.keys())}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def train(model, opt, mp, data: torch.Tensor, rank: int, world: int, clip: float | None) -> list[float]:
    """``len(data)`` steps; this rank takes its slice of every global batch. Returns clip norms."""
    per = data.shape[1] // world
    norms = []
    for batch in data:
        x = batch[rank * per : (rank + 1) * per]
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        if clip is not None:
            norm = mp.clip_grad_norm_(clip)
            norms.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return norms


def reference(multipliers: str, data: torch.Tensor, clip: float | None, **opt_kw):
    model, mp = build(multipliers)
    opt = make_optimizer(mp, **opt_kw)
    norms = train(model, opt, mp, data, 0, 1, clip)
    return model, mp, norms, group_summary(opt)


def group_summary(opt) -> list[tuple]:
    return [(g.get("role"), g["algorithm"], len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups]


@contextlib.contextmanager
def count_newton_schulz(counts: list[int], methods: set | None = None):
    """Count the whole matrices this rank hands to Newton–Schulz (through Muon's local path)."""
    original = muon_module.newton_schulz

    def counting(x, *args, **kwargs):
        counts.append(x.shape[0] if x.ndim == 3 else 1)
        if methods is not None:
            methods.add(kwargs.get("method"))
        return original(x, *args, **kwargs)

    muon_module.newton_schulz = counting
    try:
        yield
    finally:
        muon_module.newton_schulz = original


def _n_muon_matrices(opt) -> int:
    return sum(len(g["params"]) for g in opt.param_groups if g["algorithm"] == "muon")


def _fsdp_parity(ctx: Context, multipliers: str, clip: float | None, **opt_kw) -> dict:
    data = batches(STEPS)
    ref_model, ref_mp, ref_norms, ref_groups = reference(multipliers, data, clip, **opt_kw)
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    model, mp = build(multipliers)
    roles_before = mp.roles
    shard_fsdp(model, mesh)
    opt = make_optimizer(mp, **opt_kw)
    counts: list[int] = []
    methods: set = set()
    with count_newton_schulz(counts, methods):
        norms = train(model, opt, mp, data, ctx.rank, ctx.world_size, clip)
    uneven = [n for n, p in model.named_parameters() if p.shape[0] % ctx.world_size]
    return {
        "max_diff": max_diff(full_state(model), full_state(ref_model)),
        "norms": norms,
        "ref_norms": ref_norms,
        "ns_matrices_per_step": sum(counts) / STEPS,
        "n_muon_matrices": _n_muon_matrices(opt),
        "uneven_params": uneven,
        "all_dtensor": all(isinstance(p, DTensor) for p in model.parameters()),
        "roles_kept": mp.roles == roles_before == ref_mp.roles,
        "n_multipliers": len(mp.multiplier_parameters()),
        "groups_match": group_summary(opt) == ref_groups,
        "ns_methods": sorted(map(str, methods)),
    }


def fsdp_muon_gram(ctx: Context) -> dict:
    return _fsdp_parity(ctx, "none", clip=None, ns_method="gram")


@contextlib.contextmanager
def orthogonalize_local_shards():
    """The common bug this library must not have: Newton–Schulz on each rank's local shard alone."""
    original = _distributed.orthogonalize_dtensors

    def naive(updates, **ns_kwargs):
        locals_ = muon_module.orthogonalize_updates([u.to_local() for u in updates], **ns_kwargs)
        return [
            DTensor.from_local(o, u.device_mesh, u.placements, shape=u.shape, stride=u.stride())
            for o, u in zip(locals_, updates)
        ]

    _distributed.orthogonalize_dtensors = naive
    try:
        yield
    finally:
        _distributed.orthogonalize_dtensors = original


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
    opt = make_optimizer(mp, process_group=dist.group.WORLD)
    counts: list[int] = []
    with count_newton_schulz(counts):
        norms = train(ddp, opt, mp, data, ctx.rank, ctx.world_size, clip=0.05)
    return {
        "max_diff": max_diff(full_state(model), full_state(ref_model)),
        "norms": norms,
        "ref_norms": ref_norms,
        "ns_matrices_per_step": sum(counts) / STEPS,
        "n_muon_matrices": _n_muon_matrices(opt),
        "groups_match": group_summary(opt) == ref_groups,
    }


# ---------------------------------------------------------------------------------------------
# Distributed checkpoints (torch.distributed.checkpoint) of model + optimizer under FSDP2
# ---------------------------------------------------------------------------------------------

import torch.distributed.checkpoint as dcp  # noqa: E402
from torch.distributed.checkpoint.state_dict import (  # noqa: E402
    StateDictOptions,
    get_optimizer_state_dict,
    get_state_dict,
    set_state_dict,
)

CKPT_STEPS, RESUME_STEPS = 2, 2


def _sharded_setup(ctx: Context):
    mesh = init_device_mesh("cpu", (ctx.world_size,))
    model, mp = build("vector")
    shard_fsdp(model, mesh)
    return model, mp, make_optimizer(mp)


def _full_optimizer_state(model, opt) -> dict[str, torch.Tensor]:
    """Optimizer state as full tensors keyed ``fqn/state_key`` (collective: every rank calls it)."""
    osd = get_optimizer_state_dict(model, opt, options=StateDictOptions(full_state_dict=True))
    return {f"{fqn}/{k}": torch.as_tensor(v).detach().clone() for fqn, st in osd["state"].items() for k, v in st.items()}


def _save(model, opt, path) -> None:
    msd, osd = get_state_dict(model, opt)
    dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(path))


def _load(model, opt, path) -> None:
    msd, osd = get_state_dict(model, opt)
    state = {"model": msd, "optim": osd}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])


def fsdp_checkpoint_resume(ctx: Context) -> dict:
    """Save after CKPT_STEPS, continue; then load into a fresh model/optimizer and continue the same."""
    data = batches(CKPT_STEPS + RESUME_STEPS, seed=1)
    path = ctx.workdir / f"ckpt-{ctx.world_size}"
    model, mp, opt = _sharded_setup(ctx)
    train(model, opt, mp, data[:CKPT_STEPS], ctx.rank, ctx.world_size, clip=None)
    _save(model, opt, path)
    at_ckpt = full_state(model), _full_optimizer_state(model, opt)
    train(model, opt, mp, data[CKPT_STEPS:], ctx.rank, ctx.world_size, clip=None)
    uninterrupted = full_state(model), _full_optimizer_state(model, opt)

    model2, mp2, opt2 = _sharded_setup(ctx)
    _load(model2, opt2, path)
    loaded = full_state(model2), _full_optimizer_state(model2, opt2)
    train(model2, opt2, mp2, data[CKPT_STEPS:], ctx.rank, ctx.world_size, clip=None)
    resumed = full_state(model2), _full_optimizer_state(model2, opt2)
    if ctx.rank == 0:
        torch.save({"at_ckpt": at_ckpt, "uninterrupted": uninterrupted}, ctx.workdir / f"states-{ctx.world_size}.pt")
    return {
        "n_optimizer_state": len(at_ckpt[1]),
        "load_diff": max(max_diff(loaded[0], at_ckpt[0]), max_diff(loaded[1], at_ckpt[1])),
        "resume_diff": max(max_diff(resumed[0], uninterrupted[0]), max_diff(resumed[1], uninterrupted[1])),
        "moved": max_diff(uninterrupted[0], at_ckpt[0]),
    }


def fsdp_checkpoint_reshard_from_2(ctx: Context) -> dict:
    """Load the 2-rank checkpoint on this world size and continue the same global batches."""
    data = batches(CKPT_STEPS + RESUME_STEPS, seed=1)
    saved = torch.load(ctx.workdir / "states-2.pt", weights_only=False)
    model, mp, opt = _sharded_setup(ctx)
    _load(model, opt, ctx.workdir / "ckpt-2")
    loaded = full_state(model), _full_optimizer_state(model, opt)
    train(model, opt, mp, data[CKPT_STEPS:], ctx.rank, ctx.world_size, clip=None)
    resumed = full_state(model), _full_optimizer_state(model, opt)
    return {
        "load_diff": max(max_diff(loaded[0], saved["at_ckpt"][0]), max_diff(loaded[1], saved["at_ckpt"][1])),
        "resume_diff": max(max_diff(resumed[0], saved["uninterrupted"][0]), max_diff(resumed[1], saved["uninterrupted"][1])),
    }


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
