"""What both optimizers promise through their guarded base: a step that raises changes nothing, names in
errors, ``param_names``, and ``skipped_steps`` across a checkpoint."""

from __future__ import annotations

import pytest
import torch

import optimizers.muon
from optimizers import AdamW, Muon
from tests.optimizers._state import assert_unchanged, snapshot

OPTIMIZERS = {
    "adamw_fused": lambda ps: AdamW(ps, fused=True),
    "adamw_foreach": lambda ps: AdamW(ps, foreach=True),
    "adamw_single": lambda ps: AdamW(ps, foreach=False, fused=False),
    "muon": lambda ps: Muon(ps),
}


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 3))


def _backward(model: torch.nn.Module, dtype: torch.dtype = torch.float32) -> None:
    model.zero_grad()
    model(torch.randn(4, 6, dtype=dtype, generator=torch.Generator().manual_seed(1))).square().sum().backward()


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_step_after_converting_the_model_raises_and_changes_nothing(name: str) -> None:
    model = _model()
    opt = OPTIMIZERS[name](model.named_parameters())
    _backward(model)
    opt.step()
    model.to(torch.bfloat16)
    _backward(model, torch.bfloat16)
    ps = list(model.parameters())
    snap = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match=r"'0\.(weight|bias)'.*load_state_dict\(optimizer\.state_dict\(\)\)"):
        opt.step()
    assert_unchanged(opt, ps, snap)  # the AdamW `step` counters included
    # The fix the message gives works: the state is cast to the parameters and the step runs.
    opt.load_state_dict(opt.state_dict())
    opt.step()
    assert all(p.dtype == torch.bfloat16 and p.isfinite().all() for p in ps)


def test_muon_step_that_fails_in_newton_schulz_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _model()
    opt = Muon(model.parameters(), adamw_weight_decay=0.1)
    _backward(model)
    opt.step()
    _backward(model)
    ps = list(model.parameters())
    snap = snapshot(opt, ps)

    def fail(*args, **kwargs):
        raise torch.OutOfMemoryError("simulated")

    monkeypatch.setattr(optimizers.muon, "orthogonalize_distributed", fail)
    with pytest.raises(torch.OutOfMemoryError):
        opt.step()
    assert_unchanged(opt, ps, snap)  # momentum buffers and the AdamW-rule half included


@pytest.mark.parametrize("name", list(OPTIMIZERS))
def test_named_parameters_are_kept_and_name_the_bad_parameter(name: str) -> None:
    model = _model()
    opt = OPTIMIZERS[name](model.named_parameters())
    opt.nonfinite = "raise"
    names = [n for g in opt.state_dict()["param_groups"] for n in g["param_names"]]
    assert sorted(names) == sorted(n for n, _ in model.named_parameters())
    for g in opt.param_groups:  # names stay parallel to params, also across Muon's split
        assert [dict(model.named_parameters())[n] for n in g["param_names"]] == g["params"]
    _backward(model)
    model[2].weight.grad[0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match=r"parameter '2\.weight' \(shape \(3, 8\)\)"):
        opt.step()


@pytest.mark.parametrize("cls", [AdamW, Muon])
def test_param_names_key_is_accepted_and_checked(cls: type) -> None:
    w, b = torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = cls([{"params": [w, b], "param_names": ["w", "b"], "adamw_lr": 1e-3} if cls is Muon
               else {"params": [w, b], "param_names": ["w", "b"]}])
    assert sorted(n for g in opt.param_groups for n in g["param_names"]) == ["b", "w"]
    with pytest.raises(ValueError, match="param_names has 1 entries but params has 2"):
        cls([{"params": [w, b], "param_names": ["w"]}])


@pytest.mark.parametrize("cls", [AdamW, Muon])
def test_unnamed_parameter_falls_back_to_group_and_index(cls: type) -> None:
    w, b = torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = cls([w, b], nonfinite="raise")
    w.grad, b.grad = torch.zeros(4, 4), torch.full((4,), float("inf"))
    gi = len(opt.param_groups) - 1
    with pytest.raises(FloatingPointError, match=rf"parameter \(group {gi}, index \d, shape \(4,\)\)"):
        opt.step()


@pytest.mark.parametrize("cls", [AdamW, Muon])
def test_load_state_dict_restores_skipped_steps(cls: type) -> None:
    w = torch.randn(4, 4, requires_grad=True)
    opt = cls([w], nonfinite="skip")
    for _ in range(3):
        w.grad = torch.full((4, 4), float("nan"))
        opt.step()
    sd = opt.state_dict()
    fresh = cls([torch.randn(4, 4, requires_grad=True)], nonfinite="skip")
    fresh.load_state_dict(sd)
    assert fresh.skipped_steps == 3 == sd["skipped_steps"]
