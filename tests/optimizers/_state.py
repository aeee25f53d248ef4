"""Shared test helpers: snapshot an optimizer and its parameters, check nothing changed, resume a run."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from typing import Any

import torch

Snapshot = tuple[list[torch.Tensor], dict]


def snapshot(opt: torch.optim.Optimizer, ps: list[torch.Tensor]) -> Snapshot:
    """Copies of the parameters and of the optimizer's state_dict."""
    return [p.detach().clone() for p in ps], copy.deepcopy(opt.state_dict())


def assert_unchanged(opt: torch.optim.Optimizer, ps: list[torch.Tensor], snap: Snapshot) -> None:
    """Parameters, param groups and every state tensor are exactly as in ``snap``."""
    params, sd = snap
    assert all(torch.equal(p, q) for p, q in zip(ps, params))
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert now["state"].keys() == sd["state"].keys()
    for k, st in now["state"].items():
        assert all(torch.equal(v, sd["state"][k][name]) for name, v in st.items())


Make = Callable[[int], tuple[list[torch.Tensor], torch.optim.Optimizer, Any]]
Run = Callable[[torch.optim.Optimizer, Any, list[torch.Tensor], range], None]


def resumed_run(make: Make, run: Run, split: int, total: int) -> tuple[list[torch.Tensor], list[torch.Tensor], Any]:
    """Train ``make(0)`` straight for ``total`` steps, and separately for ``split`` steps, checkpoint it
    (parameters, optimizer, scheduler through ``torch.save`` bytes), load the checkpoint into ``make(1)``
    (other initial values) and run the remaining steps.

    ``make(seed)`` returns ``(params, optimizer, scheduler)``; ``run(opt, sched, params, steps)`` trains.
    Returns the straight run's params, the resumed run's params and the resumed optimizer.
    """
    ps, opt, sched = make(0)
    run(opt, sched, ps, range(total))
    ps2, opt2, sched2 = make(0)
    run(opt2, sched2, ps2, range(split))
    buf = io.BytesIO()
    torch.save({"params": [p.detach() for p in ps2], "opt": opt2.state_dict(), "sched": sched2.state_dict()}, buf)
    buf.seek(0)
    ckpt = torch.load(buf)
    ps3, opt3, sched3 = make(1)
    with torch.no_grad():
        for p, saved in zip(ps3, ckpt["params"]):
            p.copy_(saved)
    opt3.load_state_dict(ckpt["opt"])
    sched3.load_state_dict(ckpt["sched"])
    run(opt3, sched3, ps3, range(split, total))
    return ps, ps3, opt3
