"""Every scheduler in ``torch.optim.lr_scheduler`` drives our optimizers as it drives torch's: AdamW against
``torch.optim.AdamW``; Muon's Muon-rule groups against ``torch.optim.Muon`` and its AdamW-rule groups against
``torch.optim.AdamW`` (for ``cycle_momentum`` schedulers: μ for the first, β₁ for the second)."""

from __future__ import annotations

import inspect
from collections.abc import Callable

import pytest
import torch
from torch.optim import lr_scheduler as S

from optimizers import AdamW, Muon

Factory = Callable[[torch.optim.Optimizer, list[float]], object]

# One constructor per scheduler class; ``lrs`` are the optimizer's base lrs, one per group.
SCHEDULERS: dict[str, Factory] = {
    "LambdaLR": lambda o, lrs: S.LambdaLR(o, lambda t: 1 / (1 + t)),
    "MultiplicativeLR": lambda o, lrs: S.MultiplicativeLR(o, lambda t: 0.9),
    "StepLR": lambda o, lrs: S.StepLR(o, step_size=2, gamma=0.5),
    "MultiStepLR": lambda o, lrs: S.MultiStepLR(o, milestones=[1, 3]),
    "ConstantLR": lambda o, lrs: S.ConstantLR(o, factor=0.5, total_iters=2),
    "LinearLR": lambda o, lrs: S.LinearLR(o, total_iters=3),
    "ExponentialLR": lambda o, lrs: S.ExponentialLR(o, gamma=0.8),
    "SequentialLR": lambda o, lrs: S.SequentialLR(
        o, [S.ConstantLR(o, factor=0.5, total_iters=2), S.ExponentialLR(o, gamma=0.8)], milestones=[2]),
    "PolynomialLR": lambda o, lrs: S.PolynomialLR(o, total_iters=4, power=2.0),
    "CosineAnnealingLR": lambda o, lrs: S.CosineAnnealingLR(o, T_max=4),
    "ChainedScheduler": lambda o, lrs: S.ChainedScheduler([S.ConstantLR(o, factor=0.5, total_iters=2),
                                                           S.ExponentialLR(o, gamma=0.8)]),
    "ReduceLROnPlateau": lambda o, lrs: S.ReduceLROnPlateau(o, patience=0, factor=0.5),
    "CyclicLR": lambda o, lrs: S.CyclicLR(o, base_lr=[lr / 10 for lr in lrs], max_lr=lrs, step_size_up=2),
    "CosineAnnealingWarmRestarts": lambda o, lrs: S.CosineAnnealingWarmRestarts(o, T_0=2),
    "OneCycleLR": lambda o, lrs: S.OneCycleLR(o, max_lr=lrs, total_steps=8),
}
STEPS = 6


def test_every_scheduler_class_is_covered() -> None:
    classes = {
        name for name, obj in vars(S).items()
        if inspect.isclass(obj) and obj.__module__ == S.__name__ and not name.startswith("_")
        and (issubclass(obj, S.LRScheduler) or obj is S.ReduceLROnPlateau) and obj is not S.LRScheduler
        and obj.__name__ == name
    }
    assert classes - set(SCHEDULERS) == set(), "a new torch scheduler: add it to SCHEDULERS"


def _step(scheduler: object) -> None:
    if isinstance(scheduler, S.ReduceLROnPlateau):
        scheduler.step(1.0)  # a flat metric: the lr is cut every step once patience runs out
    else:
        scheduler.step()


def _grads(t: int, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(t)
    return [torch.randn(s, generator=g) for s in shapes]


def _beta1(group: dict) -> float:
    return group.get("momentum", group["betas"][0])


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_drives_adamw_like_torch_adamw(name: str) -> None:
    start = [torch.randn(5, 4), torch.randn(4)]
    ours = [t.clone().requires_grad_() for t in start]
    theirs = [t.clone().requires_grad_() for t in start]
    lrs = [1e-2, 3e-3]
    groups = lambda ps: [{"params": [ps[0]]}, {"params": [ps[1]], "lr": lrs[1]}]  # noqa: E731
    opt, ref = AdamW(groups(ours), lr=lrs[0], fused=True), torch.optim.AdamW(groups(theirs), lr=lrs[0], fused=True)
    sched, ref_sched = SCHEDULERS[name](opt, lrs), SCHEDULERS[name](ref, lrs)
    for t in range(STEPS):
        for p, q, g in zip(ours, theirs, _grads(t, [(5, 4), (4,)])):
            p.grad, q.grad = g, g.clone()
        opt.step()
        ref.step()
        _step(sched)
        _step(ref_sched)
        for mine, torch_group in zip(opt.param_groups, ref.param_groups):
            assert (mine["lr"], mine["betas"]) == (torch_group["lr"], torch_group["betas"])
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_scheduler_drives_each_muon_group_like_the_torch_optimizer_of_its_rule(name: str) -> None:
    w0, b0 = torch.randn(6, 4), torch.randn(4)
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    tw, tb = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    opt = Muon([w, b])  # split: a Muon group (lr 0.02, μ 0.95) and an AdamW-rule group (lr 3e-4, β 0.9/0.95)
    ref_muon = torch.optim.Muon([tw], lr=0.02, momentum=0.95, weight_decay=0.1)
    ref_adamw = torch.optim.AdamW([tb], lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)
    sched = SCHEDULERS[name](opt, [0.02, 3e-4])
    ref_scheds = [SCHEDULERS[name](ref_muon, [0.02]), SCHEDULERS[name](ref_adamw, [3e-4])]
    muon_g, adamw_g = opt.param_groups
    for t in range(STEPS):
        gw, gb = _grads(t, [(6, 4), (4,)])
        w.grad, tw.grad, b.grad, tb.grad = gw, gw.clone(), gb, gb.clone()
        opt.step()
        ref_muon.step()
        ref_adamw.step()
        _step(sched)
        for s in ref_scheds:
            _step(s)
        assert (muon_g["lr"], muon_g["momentum"]) == (ref_muon.param_groups[0]["lr"], ref_muon.param_groups[0]["momentum"])
        assert (adamw_g["lr"], _beta1(adamw_g)) == (ref_adamw.param_groups[0]["lr"], ref_adamw.param_groups[0]["betas"][0])
    assert torch.equal(b, tb)  # the AdamW-rule half stepped with the scheduled lr and β₁
    assert not torch.equal(w, w0)


def test_one_cycle_momentum_reaches_adamw_rule_groups_as_beta1() -> None:
    b = torch.randn(4, requires_grad=True)
    opt = Muon([{"params": [b], "algorithm": "adamw"}])
    S.OneCycleLR(opt, max_lr=1e-3, total_steps=10, base_momentum=0.5, max_momentum=0.6)
    assert opt.param_groups[0]["momentum"] == 0.6 and opt.param_groups[0]["betas"] == (0.9, 0.95)
    b.grad = torch.ones(4)
    opt.step()
    # First AdamW step with bias correction: m̂ = g whatever β₁, so check the stored moment instead.
    assert torch.allclose(opt.state[b]["exp_avg"], torch.full((4,), 1 - 0.6))
