"""Distributed checkpoints (torch.distributed.checkpoint) of model + Muon state under FSDP2, run inside the
spawned gloo processes (see ``_harness.py``)."""

from __future__ import annotations

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh

from tests.distributed._harness import Context
from tests.distributed._model import batches, build, full_state, make_optimizer, max_diff, shard_fsdp, train

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
