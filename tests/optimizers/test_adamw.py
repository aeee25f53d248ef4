"""optimizers.AdamW against torch.optim.AdamW, state handling, and bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from torch.optim.optimizer import _get_foreach_kernels_supported_devices

from optimizers import AdamW
from optimizers.adamw import choose_path
from tests.optimizers._state import assert_unchanged, resumed_run, snapshot

SHAPES = [(16, 8), (8,), (3, 4, 5), ()]


def _params(seed: int = 0, dtype: torch.dtype = torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=dtype).requires_grad_() for s in SHAPES]


def _grads(step: int, params: list[torch.Tensor]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]


def _groups(params: list[torch.Tensor], overrides: bool) -> list[dict]:
    if not overrides:
        return [{"params": params}]
    return [
        {"params": params[:2]},
        {"params": params[2:], "lr": 3e-3, "weight_decay": 0.0, "betas": (0.8, 0.99), "eps": 1e-6},
    ]


def _run(opt: torch.optim.Optimizer, params: list[torch.Tensor], steps: range) -> None:
    for t in steps:
        for p, g in zip(params, _grads(t, params)):
            p.grad = g
        opt.step()


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


PATHS = {
    "fused": dict(fused=True),
    "foreach": dict(foreach=True),
    "single": dict(foreach=False, fused=False),
    "auto": dict(),
}
SETTINGS = {  # name: (keyword arguments, per-group overrides?)
    "defaults": (dict(lr=1e-2), False),
    "amsgrad_maximize_wd_groups": (dict(lr=1e-2, amsgrad=True, maximize=True, weight_decay=0.3), True),
    "tensor_lr": (dict(lr=torch.tensor(1e-2), weight_decay=0.1), False),
}


@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("path", list(PATHS))
def test_adamw_matches_torch_adamw_over_100_steps(path: str, setting: str) -> None:
    ours_p, ref_p, same_p = _params(), _params(), _params()
    kw, overrides = SETTINGS[setting]
    ours = AdamW(_groups(ours_p, overrides), **kw, **PATHS[path])
    # Reference: torch's per-tensor path (supports every setting, tensor lr included).
    ref = torch.optim.AdamW(_groups(ref_p, overrides), **kw, foreach=False)
    _run(ours, ours_p, range(100))
    _run(ref, ref_p, range(100))
    for a, b in zip(ours_p, ref_p):
        assert _rel(a.detach(), b.detach()) <= 1e-6
    # On the same implementation path we run torch's own kernel, so the match is exact.
    torch_path = {"auto": dict(fused=True)}.get(path, PATHS[path])
    if setting == "tensor_lr" and torch_path.get("foreach"):
        return  # torch's foreach path rejects a tensor lr (ours passes it as a float)
    same = torch.optim.AdamW(_groups(same_p, overrides), **kw, **torch_path)
    _run(same, same_p, range(100))
    for a, b in zip(ours_p, same_p):
        assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_adamw_fused_path_matches_torch_for_other_dtypes(dtype: torch.dtype) -> None:
    ours_p, ref_p = _params(dtype=dtype), _params(dtype=dtype)
    ours, ref = AdamW(ours_p, lr=1e-2), torch.optim.AdamW(ref_p, lr=1e-2, fused=True)
    _run(ours, ours_p, range(10))
    _run(ref, ref_p, range(10))
    assert all(torch.equal(a, b) for a, b in zip(ours_p, ref_p))


def test_independent_decay_is_lr_free_and_applied_before_the_update() -> None:
    wd, lr = 0.05, 1e-2
    ours_p, ref_p = _params(), _params()
    ours = AdamW(ours_p, lr=lr, weight_decay=wd, decay="independent")
    ref = torch.optim.AdamW(ref_p, lr=lr, weight_decay=0.0, fused=True)
    for t in range(20):
        for p, q, g in zip(ours_p, ref_p, _grads(t, ours_p)):
            p.grad, q.grad = g, g.clone()
        ours.step()
        with torch.no_grad():
            for q in ref_p:
                q.mul_(1 - wd)
        ref.step()
    for a, b in zip(ours_p, ref_p):
        assert _rel(a.detach(), b.detach()) <= 1e-6
    # The decay does not follow the lr: with lr=0 the parameters still shrink by (1 - wd) per step.
    p = torch.ones(3, requires_grad=True)
    opt = AdamW([p], lr=0.0, weight_decay=wd, decay="independent")
    p.grad = torch.ones(3)
    opt.step()
    assert torch.allclose(p.detach(), torch.full((3,), 1 - wd))


def test_first_step_moves_each_entry_by_lr() -> None:
    lr = 1e-3
    gen = torch.Generator().manual_seed(0)
    p = torch.randn(64, 32, generator=gen, dtype=torch.float64, requires_grad=True)
    start = p.detach().clone()
    opt = AdamW([p], lr=lr, weight_decay=0.0)
    p.grad = torch.randn(64, 32, generator=gen, dtype=torch.float64)
    opt.step()
    # m̂ = g, v̂ = g², so the step is lr·g/(|g| + eps) ≈ lr·sign(g) (float64: no rounding in p − lr).
    assert torch.allclose(start - p.detach(), lr * p.grad.sign(), rtol=1e-4, atol=0)


def test_zero_gradient_only_decays_and_no_gradient_leaves_untouched() -> None:
    lr, wd = 1e-2, 0.1
    a, b = torch.randn(5, 4, requires_grad=True), torch.randn(7, requires_grad=True)
    a0, b0 = a.detach().clone(), b.detach().clone()
    opt = AdamW([a, b], lr=lr, weight_decay=wd)
    a.grad = torch.zeros_like(a)  # b.grad stays None
    opt.step()
    assert torch.allclose(a.detach(), a0 * (1 - lr * wd), rtol=1e-6, atol=0)
    assert torch.equal(b.detach(), b0) and len(opt.state[b]) == 0


def test_state_uses_torch_keys_and_two_buffers_per_parameter() -> None:
    ps = _params()
    opt = AdamW(ps)
    _run(opt, ps, range(1))
    for p in ps:
        assert set(opt.state[p]) == {"step", "exp_avg", "exp_avg_sq"}
    opt2 = AdamW(ps, amsgrad=True)
    _run(opt2, ps, range(1))
    assert set(opt2.state[ps[0]]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}


def _make(seed: int = 0) -> tuple[list[torch.Tensor], AdamW, torch.optim.lr_scheduler.LRScheduler]:
    ps = _params(seed)
    opt = AdamW(_groups(ps, overrides=True), lr=1e-2, weight_decay=0.1, amsgrad=True)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.1 * t))
    return ps, opt, sched


def _run_sched(opt: AdamW, sched: torch.optim.lr_scheduler.LRScheduler, ps: list[torch.Tensor], steps: range) -> None:
    for t in steps:
        for p, g in zip(ps, _grads(t, ps)):
            p.grad = g
        opt.step()
        sched.step()


def test_state_dict_resume_is_bit_identical_with_lr_scheduler() -> None:
    straight, resumed, opt3 = resumed_run(_make, _run_sched, split=12, total=30)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    assert opt3.param_groups[1]["lr"] == pytest.approx(3e-3 / (1 + 0.1 * 30))  # the scheduler drove every group


def test_deepcopy_of_optimizer_continues_identically() -> None:
    ps = _params()
    opt = AdamW(ps, lr=1e-2)
    _run(opt, ps, range(5))
    ps2, opt2 = copy.deepcopy((ps, opt))
    assert opt2.param_groups[0]["params"][0] is ps2[0]
    _run(opt, ps, range(5, 10))
    _run(opt2, ps2, range(5, 10))
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))


def test_state_moves_to_torch_adamw_and_back_mid_run() -> None:
    ps = _params()
    opt = AdamW(ps, lr=1e-2, weight_decay=0.1, fused=True)
    _run(opt, ps, range(30))

    ps2 = _params()
    ours = AdamW(ps2, lr=1e-2, weight_decay=0.1, fused=True)
    _run(ours, ps2, range(10))
    theirs = torch.optim.AdamW(ps2, lr=1e-2, weight_decay=0.1, fused=True)
    theirs.load_state_dict(ours.state_dict())
    _run(theirs, ps2, range(10, 20))
    back = AdamW(ps2, lr=5.0)  # hyperparameters come from the loaded state
    back.load_state_dict(theirs.state_dict())
    assert back.param_groups[0]["lr"] == 1e-2 and back.param_groups[0]["decay"] == "lr"
    _run(back, ps2, range(20, 30))
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))


# ---- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-1e-3), "lr: -0.001"),
        (dict(lr=float("nan")), "lr: nan"),
        (dict(eps=-1.0), "eps: -1.0"),
        (dict(weight_decay=-0.1), "weight_decay: -0.1"),
        (dict(betas=(1.0, 0.999)), "betas[0]: 1.0"),
        (dict(betas=(0.9, -0.1)), "betas[1]: -0.1"),
        (dict(betas=(0.9,)), "betas"),
        (dict(decay="cosine"), "decay: 'cosine'"),
        (dict(nonfinite="ignore"), "nonfinite: 'ignore'"),
        (dict(foreach=True, fused=True), "foreach"),
        (dict(decay="independent", weight_decay=2.0), "weight_decay: 2.0"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        AdamW(_params(), **kwargs)
    assert needle in str(info.value)


def test_bad_param_group_raises_and_leaves_optimizer_unchanged() -> None:
    ps = _params()
    opt = AdamW(ps[:2])
    _run(opt, ps[:2], range(2))
    snap = snapshot(opt, ps[:2])
    for bad in ({"lr": -1.0}, {"betas": (0.9, 1.5)}, {"eps": -1e-8}, {"decay": "nope"}, {"algorithm": "muon"}):
        with pytest.raises(ValueError):
            opt.add_param_group({"params": ps[2:], **bad})
        assert len(opt.param_groups) == 1
        assert_unchanged(opt, ps[:2], snap)


def test_group_marked_muon_raises() -> None:
    ps = _params()
    with pytest.raises(ValueError, match="algorithm: 'muon'"):
        AdamW([{"params": ps, "algorithm": "muon"}])
    AdamW([{"params": ps, "algorithm": "adamw"}])  # the AdamW rule itself is accepted


def test_sparse_gradient_raises_before_anything_changes() -> None:
    ps = _params()
    opt = AdamW(ps)
    _run(opt, ps, range(2))
    snap = snapshot(opt, ps)
    for p, g in zip(ps, _grads(5, ps)):
        p.grad = g
    ps[0].grad = ps[0].grad.to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert_unchanged(opt, ps, snap)


def test_complex_parameter_raises() -> None:
    p = torch.randn(3, dtype=torch.complex64, requires_grad=True)
    opt = AdamW([p])
    p.grad = torch.ones_like(p)
    before = p.detach().clone()
    with pytest.raises(TypeError, match="complex"):
        opt.step()
    assert torch.equal(p.detach(), before) and len(opt.state) == 0


@pytest.mark.parametrize("bad_value", [float("nan"), float("inf"), -float("inf")])
def test_nonfinite_raise_names_parameter_and_changes_nothing(bad_value: float) -> None:
    named = [(f"w{i}", p) for i, p in enumerate(_params())]
    ps = [p for _, p in named]
    opt = AdamW(named, nonfinite="raise")
    _run(opt, ps, range(3))
    snap = snapshot(opt, ps)
    for p, g in zip(ps, _grads(3, ps)):
        p.grad = g
    ps[2].grad.view(-1)[4] = bad_value
    with pytest.raises(FloatingPointError, match="'w2'"):
        opt.step()
    assert_unchanged(opt, ps, snap)


def test_nonfinite_skip_skips_the_whole_step_and_counts_it() -> None:
    ps = _params()
    opt = AdamW(ps, nonfinite="skip")
    _run(opt, ps, range(3))
    snap = snapshot(opt, ps)
    for p, g in zip(ps, _grads(3, ps)):
        p.grad = g
    ps[1].grad[0] = float("nan")
    opt.step()
    assert opt.skipped_steps == 1
    assert_unchanged(opt, ps, snap)
    _run(opt, ps, range(4, 5))  # finite again: steps resume
    assert not torch.equal(ps[0].detach(), snap[0][0])
    assert opt.state_dict()["skipped_steps"] == 1


def test_nonfinite_default_is_off_like_torch() -> None:
    p = torch.ones(3, requires_grad=True)
    opt = AdamW([p])
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    opt.step()
    assert p.detach().isnan().any()


# ---- CUDA (skipped without a GPU) ----------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw_on_cuda_runs_torch_fused_kernel(dtype: torch.dtype) -> None:
    ours_p = [p.detach().cuda().requires_grad_() for p in _params(dtype=dtype)]
    ref_p = [p.detach().clone().requires_grad_() for p in ours_p]
    ours, ref = AdamW(ours_p, lr=1e-2), torch.optim.AdamW(ref_p, lr=1e-2, fused=True)
    _run(ours, ours_p, range(10))
    _run(ref, ref_p, range(10))
    assert all(torch.equal(a, b) for a, b in zip(ours_p, ref_p))
    assert ours.state[ours_p[0]]["step"].device.type == "cuda"


@cuda
def test_cpu_state_dict_from_foreach_run_resumes_fused_on_cuda() -> None:
    cpu_p = _params()
    opt = AdamW(cpu_p, foreach=True)
    _run(opt, cpu_p, range(3))
    gpu_p = [p.detach().cuda().requires_grad_() for p in cpu_p]
    opt2 = AdamW(gpu_p)
    sd = opt.state_dict()
    for group in sd["param_groups"]:
        group["foreach"] = None  # let the loaded groups pick the fused path again
    opt2.load_state_dict(sd)
    _run(opt2, gpu_p, range(3, 6))
    _run(opt, cpu_p, range(3, 6))
    for a, b in zip(gpu_p, cpu_p):
        assert _rel(a.detach().cpu(), b.detach()) <= 1e-6


def test_fused_refusal_in_a_later_group_leaves_earlier_groups_untouched() -> None:
    ps = _params()
    ints = torch.zeros(3, dtype=torch.int64)
    ints.grad = torch.zeros(3, dtype=torch.int64)
    opt = AdamW([{"params": ps}, {"params": [ints], "fused": True}])
    for p, g in zip(ps, _grads(0, ps)):
        p.grad = g
    snap = snapshot(opt, ps)
    with pytest.raises(RuntimeError, match="fused=True"):
        opt.step()
    assert_unchanged(opt, ps, snap)


def test_kernel_choice_is_fused_where_allowed_then_foreach_then_single() -> None:
    f32, i64 = [torch.zeros(2)], [torch.zeros(2, dtype=torch.int64)]
    # torch has foreach kernels for accelerators only; on a CPU "foreach" falls through to the loop.
    foreach = "foreach" if "cpu" in _get_foreach_kernels_supported_devices() else "single"
    assert choose_path(f32, None, None) == "fused"  # the README's default, CPU included
    assert choose_path(f32, False, None) == "fused"  # foreach=False alone refuses foreach, not fused
    assert choose_path(f32, True, None) == foreach
    assert choose_path(f32, None, False) == foreach
    assert choose_path(f32, False, False) == "single"
    assert choose_path(i64, None, None) == foreach  # no fused kernel for integer tensors
    with pytest.raises(RuntimeError, match="fused=True"):
        choose_path(i64, None, True)


def test_defaults_are_the_documented_values() -> None:
    opt = AdamW([torch.zeros(2, requires_grad=True)])
    assert opt.defaults == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                                maximize=False, decay="lr", foreach=None, fused=None)
    assert (opt.nonfinite, opt.skipped_steps) == (None, 0)
