"""Shared test helpers: snapshot an optimizer and its parameters, and check nothing changed."""

from __future__ import annotations

import copy

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
