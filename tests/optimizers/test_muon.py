"""optimizers.Muon: the matrix update against a float64 reference, routing, state, and bad input."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from optimizers import Muon
from tests.optimizers._state import assert_unchanged, resumed_run, snapshot

# ---- a plain float64 reference of the documented math (one tensor at a time) ----------------------------

REF_COEFFICIENTS = {
    "quintic": ([(3.4445, -4.7750, 2.0315)], (3.4445, -4.7750, 2.0315), 1.0),
    "polar_express": (
        [
            (8.156554524902461, -22.48329292557795, 15.878769915207462),
            (4.042929935166739, -2.808917465908714, 0.5000178451051316),
            (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
            (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
            (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
        ],
        (15 / 8, -10 / 8, 3 / 8),
        1.02,
    ),
}


def ref_orthogonalize(M: torch.Tensor, steps: int, coefficients: str) -> torch.Tensor:
    """Newton–Schulz on one 2-D float64 matrix."""
    schedule, tail, norm_scale = REF_COEFFICIENTS[coefficients]
    tall = M.shape[0] > M.shape[1]
    X = M.T if tall else M
    X = X / max(norm_scale * torch.linalg.matrix_norm(X).item(), 1e-7)
    for k in range(steps):
        a, b, c = schedule[k] if k < len(schedule) else tail
        A = X @ X.T
        X = a * X + (b * A + c * A @ A) @ X
    return X.T if tall else X


def ref_muon_step(p, buf, g, *, lr, momentum, nesterov, weight_decay, decay, ns_steps, ns_coefficients, lr_scale):
    """Returns the new (p, buf), all float64."""
    buf = momentum * buf + (1 - momentum) * g
    u = (1 - momentum) * g + momentum * buf if nesterov else buf
    if p.ndim == 2:
        mats, fan_out, fan_in = [u], p.shape[0], p.shape[1]
    elif p.ndim == 3:  # a batch of independent matrices
        mats, fan_out, fan_in = list(u), p.shape[1], p.shape[2]
    else:  # conv kernel as (out, in·kh·kw)
        mats, fan_out, fan_in = [u.reshape(p.shape[0], -1)], p.shape[0], math.prod(p.shape[1:])
    O = torch.stack([ref_orthogonalize(m, ns_steps, ns_coefficients) for m in mats]).reshape(p.shape)
    scale = {
        "spectral": math.sqrt(max(1.0, fan_out / fan_in)),
        "match_rms_adamw": 0.2 * math.sqrt(max(fan_out, fan_in)),
        "none": 1.0,
    }[lr_scale]
    shrink = 1 - (weight_decay if decay == "independent" else lr * weight_decay)
    return p * shrink - lr * scale * O, buf


MATRIX_SHAPES = [(16, 24), (24, 16), (16, 16), (16, 24), (3, 8, 12), (6, 3, 3, 3), (12, 5, 1, 1)]
OTHER_SHAPES = [(16,), ()]


def _tensors(shapes, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=g, dtype=torch.float64) for s in shapes]


def _set_grads(ps: list[torch.Tensor], step: int) -> list[torch.Tensor]:
    grads = _tensors([p.shape for p in ps], 1000 + step)
    for p, g in zip(ps, grads):
        p.grad = g.to(p.dtype)
    return grads


# The defaults the README and the docstring state, written out: the reference never reads them back from Muon.
DOCUMENTED_DEFAULTS = dict(lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, decay="lr", ns_steps=5,
                           ns_coefficients="quintic", lr_scale="spectral")

MUON_SETTINGS = {
    "defaults": dict(),
    "polar_express_rms_no_nesterov": dict(ns_coefficients="polar_express", lr_scale="match_rms_adamw", nesterov=False, lr=0.005),
    "independent_decay_3_steps": dict(decay="independent", weight_decay=0.01, ns_steps=3, lr_scale="none", momentum=0.8),
}


@pytest.mark.parametrize("setting", list(MUON_SETTINGS))
def test_muon_matches_float64_reference(setting: str) -> None:
    kw = MUON_SETTINGS[setting]
    start = _tensors(MATRIX_SHAPES + OTHER_SHAPES, seed=0)
    ps = [t.float().requires_grad_() for t in start]
    opt = Muon(ps, **kw)
    adam_ps = [t.float().requires_grad_() for t in start[len(MATRIX_SHAPES):]]
    adam = torch.optim.AdamW(adam_ps, lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True)
    if kw.get("decay") == "independent":
        adam = None  # covered below: the AdamW-rule half uses the same decay mode
    group = {**DOCUMENTED_DEFAULTS, **kw}
    ref = [t.clone() for t in start[: len(MATRIX_SHAPES)]]
    bufs = [torch.zeros_like(t) for t in ref]
    for step in range(8):
        grads = _set_grads(ps, step)
        opt.step()
        for i, g in enumerate(grads[: len(MATRIX_SHAPES)]):
            ref[i], bufs[i] = ref_muon_step(ref[i], bufs[i], g.float().double(), **group)
        if adam is not None:
            for p, g in zip(adam_ps, grads[len(MATRIX_SHAPES):]):
                p.grad = g.float()
            adam.step()
    for p, r, shape in zip(ps, ref, MATRIX_SHAPES):
        assert torch.allclose(p.detach().double(), r, rtol=1e-5, atol=1e-6), shape
        assert not torch.equal(p.detach().double(), start[MATRIX_SHAPES.index(shape)])
    if adam is not None:
        for p, q in zip(ps[len(MATRIX_SHAPES):], adam_ps):
            assert torch.equal(p, q)


def test_defaults_are_the_documented_values() -> None:
    opt = Muon([torch.randn(4, 4, requires_grad=True)])
    assert opt.muon_defaults == DOCUMENTED_DEFAULTS
    assert opt.adamw_defaults == dict(lr=3e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, amsgrad=False,
                                      maximize=False, decay="lr")
    assert (opt.ns_dtype, opt.ns_method, opt.nonfinite, opt.process_group) == (None, "standard", None, None)
    assert opt.orthogonalize is None
    assert opt.defaults == dict(lr=0.02, weight_decay=0.1, momentum=0.95)


def test_orthogonalize_hook_replaces_newton_schulz_and_stays_out_of_state_dict() -> None:
    """The hook gets every Muon matrix once per step (as [..., m, n] matrices) and its output is what
    the step applies: an exact polar factor (SVD) gives an update whose singular values are all lr."""
    torch.manual_seed(0)
    shapes = [(6, 4), (4, 6), (3, 5, 2)]
    seen: list[tuple[int, ...]] = []

    def polar(mats: list[torch.Tensor]) -> list[torch.Tensor]:
        seen.extend(tuple(m.shape) for m in mats)
        out = []
        for m in mats:
            u, _, vh = torch.linalg.svd(m, full_matrices=False)
            out.append(u @ vh)
        return out

    ps = [torch.randn(s, requires_grad=True) for s in shapes]
    start = [p.detach().clone() for p in ps]
    opt = Muon(ps, lr=0.1, weight_decay=0.0, lr_scale="none", orthogonalize=polar)
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert sorted(seen) == sorted(shapes)
    for p, w in zip(ps, start):
        sv = torch.linalg.svdvals(p.detach() - w)
        assert torch.allclose(sv, torch.full_like(sv, 0.1), atol=1e-5)
    assert "orthogonalize" not in repr(opt.state_dict()["param_groups"])
    assert copy.deepcopy(opt).orthogonalize is polar


def test_orthogonalize_must_be_callable_or_none() -> None:
    with pytest.raises(TypeError, match="orthogonalize must be a callable.*got str"):
        Muon([torch.randn(4, 4, requires_grad=True)], orthogonalize="svd")  # type: ignore[arg-type]


@pytest.mark.parametrize("ns_method", ["gram", "auto"])
def test_muon_gram_newton_schulz_matches_float64_reference(ns_method: str) -> None:
    start = _tensors(MATRIX_SHAPES, seed=0)
    ps = [t.float().requires_grad_() for t in start]
    opt = Muon(ps, ns_method=ns_method)
    ref, bufs = [t.clone() for t in start], [torch.zeros_like(t) for t in start]
    for step in range(5):
        grads = _set_grads(ps, step)
        opt.step()
        for i, g in enumerate(grads):
            ref[i], bufs[i] = ref_muon_step(ref[i], bufs[i], g.float().double(), **DOCUMENTED_DEFAULTS)
    for p, r in zip(ps, ref):
        assert torch.allclose(p.detach().double(), r, rtol=1e-4, atol=2e-5)


def test_per_group_muon_settings_override_defaults() -> None:
    start = _tensors(MATRIX_SHAPES, seed=0)
    ps = [t.float().requires_grad_() for t in start]
    overrides = dict(lr=0.01, momentum=0.8, nesterov=False, weight_decay=0.3, ns_steps=3,
                     ns_coefficients="polar_express", lr_scale="match_rms_adamw", decay="independent")
    opt = Muon([{"params": ps[:3]}, {"params": ps[3:], **overrides}])
    settings = [DOCUMENTED_DEFAULTS] * 3 + [{**DOCUMENTED_DEFAULTS, **overrides}] * (len(ps) - 3)
    ref, bufs = [t.clone() for t in start], [torch.zeros_like(t) for t in start]
    for step in range(4):
        grads = _set_grads(ps, step)
        opt.step()
        for i, g in enumerate(grads):
            ref[i], bufs[i] = ref_muon_step(ref[i], bufs[i], g.float().double(), **settings[i])
    for p, r in zip(ps, ref):
        assert torch.allclose(p.detach().double(), r, rtol=1e-5, atol=1e-6)


def test_tensor_lr_gives_the_same_steps_as_float_lr() -> None:
    start = _tensors(MATRIX_SHAPES + OTHER_SHAPES, seed=0)
    a = [t.float().requires_grad_() for t in start]
    b = [t.float().requires_grad_() for t in start]
    opt_a = Muon(a, lr=0.02, adamw_lr=1e-3, adamw_weight_decay=0.1)
    opt_b = Muon(b, lr=torch.tensor(0.02), adamw_lr=torch.tensor(1e-3), adamw_weight_decay=0.1)
    for step in range(3):
        grads = _set_grads(a, step)
        for p, g in zip(b, grads):
            p.grad = g.float()
        opt_a.step()
        opt_b.step()
    assert all(torch.allclose(x, y, rtol=0, atol=1e-6) for x, y in zip(a, b))  # fp32 scalar rounding
    assert not torch.equal(a[0].detach(), start[0].float())


def test_group_without_algorithm_is_split_by_ndim() -> None:
    w, b = torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True)
    opt = Muon([{"params": [w, b], "lr": 0.01, "weight_decay": 0.2, "betas": (0.8, 0.9),
                 "adamw_lr": 1e-3, "adamw_weight_decay": 0.05}])
    muon_g, adam_g = opt.param_groups
    assert (muon_g["algorithm"], muon_g["params"], muon_g["lr"], muon_g["weight_decay"]) == ("muon", [w], 0.01, 0.2)
    assert (adam_g["algorithm"], adam_g["params"], adam_g["lr"], adam_g["weight_decay"]) == ("adamw", [b], 1e-3, 0.05)
    assert adam_g["betas"] == (0.8, 0.9) and adam_g["eps"] == 1e-8
    assert "adamw_lr" not in muon_g and "betas" not in muon_g and "momentum" not in adam_g
    # Without lr/weight_decay in the group, the AdamW half takes the optimizer's adamw_* defaults.
    opt2 = Muon([{"params": [w, b]}], adamw_lr=2e-3, adamw_weight_decay=0.01)
    assert (opt2.param_groups[1]["lr"], opt2.param_groups[1]["weight_decay"]) == (2e-3, 0.01)


def test_vector_only_group_without_algorithm_uses_its_lr_and_weight_decay() -> None:
    b = torch.randn(8, requires_grad=True)
    b_ref = b.detach().clone().requires_grad_()
    opt = Muon([{"params": [b], "lr": 0.1, "weight_decay": 0.5}])
    assert (opt.param_groups[0]["algorithm"], opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (
        "adamw", 0.1, 0.5)
    ref = torch.optim.AdamW([b_ref], lr=0.1, weight_decay=0.5, betas=(0.9, 0.95), eps=1e-8)
    for t in range(3):
        g = torch.randn(8, generator=torch.Generator().manual_seed(t))
        b.grad, b_ref.grad = g, g.clone()
        opt.step()
        ref.step()
    assert torch.allclose(b, b_ref, rtol=0, atol=1e-7)


@pytest.mark.parametrize(
    ("group", "needle"),
    [
        ({"lr": 0.1}, "adamw_lr="),  # a Muon lr is not an AdamW lr
        ({"weight_decay": 0.5}, "adamw_weight_decay="),
    ],
)
def test_mixed_group_setting_lr_or_wd_without_adamw_key_raises(group: dict, needle: str) -> None:
    w, b = torch.randn(8, 4, requires_grad=True), torch.randn(8, requires_grad=True)
    with pytest.raises(ValueError, match=needle) as info:
        Muon([{"params": [w, b], **group}])
    assert "algorithm='adamw'" in str(info.value)


@pytest.mark.parametrize(
    ("params", "group", "pattern"),
    [
        ("vector", {"momentum": 0.9}, "momentum.*drop"),
        ("vector", {"matrix_view": "out_in"}, "matrix_view.*drop"),
        ("vector", {"lr": 0.1, "adamw_lr": 0.2}, "sets lr.*drop"),
        ("matrix", {"betas": (0.8, 0.9)}, "betas.*drop"),
        ("matrix", {"adamw_lr": 1e-3}, "adamw_lr.*drop"),
        ("vector", {"betas": (0.8, 0.9), "adamw_betas": (0.9, 0.9)}, "betas and adamw_betas.*write one"),
    ],
)
def test_group_key_no_parameter_would_use_raises(params: str, group: dict, pattern: str) -> None:
    p = torch.randn(8, requires_grad=True) if params == "vector" else torch.randn(8, 4, requires_grad=True)
    with pytest.raises(ValueError, match=pattern):
        Muon([{"params": [p], **group}])


@pytest.mark.parametrize("algorithm", ["muon", "adamw"])
def test_adamw_prefixed_key_in_a_group_with_algorithm_raises(algorithm: str) -> None:
    p = torch.randn(8, 4, requires_grad=True)
    with pytest.raises(ValueError, match="adamw_lr.*Write lr"):
        Muon([{"params": [p], "algorithm": algorithm, "adamw_lr": 1e-3}])


def test_add_param_group_validates_every_value_and_keeps_the_callers_dict() -> None:
    opt = Muon([torch.randn(4, 4, requires_grad=True)])
    b = torch.randn(4, requires_grad=True)
    for bad in ({"params": [b], "lr": -1.0}, {"params": [b], "algorithm": "adamw", "eps": -1.0},
                {"params": [b], "algorithm": "adamw", "momentum": 1.0}):
        with pytest.raises(ValueError):
            opt.add_param_group(bad)
    assert len(opt.param_groups) == 1
    group = {"params": [b], "lr": 0.1}
    opt.add_param_group(group)
    assert group == {"params": [b], "lr": 0.1}
    assert opt.param_groups[-1]["lr"] == 0.1


def test_explicit_adamw_group_uses_its_own_settings_and_torch_math() -> None:
    w = torch.randn(8, 4, requires_grad=True)
    w_ref = w.detach().clone().requires_grad_()
    opt = Muon([{"params": [w], "algorithm": "adamw", "lr": 1e-2, "betas": (0.8, 0.9), "weight_decay": 0.1}],
               adamw_eps=1e-6)
    ref = torch.optim.AdamW([w_ref], lr=1e-2, betas=(0.8, 0.9), eps=1e-6, weight_decay=0.1, fused=True)
    for t in range(5):
        g = torch.randn(8, 4, generator=torch.Generator().manual_seed(t))
        w.grad, w_ref.grad = g, g.clone()
        opt.step()
        ref.step()
    assert torch.equal(w, w_ref)
    assert set(opt.state[w]) == {"step", "exp_avg", "exp_avg_sq"}


def test_muon_group_with_a_vector_raises() -> None:
    with pytest.raises(ValueError, match="algorithm='muon'.*1-D"):
        Muon([{"params": [torch.randn(4, requires_grad=True)], "algorithm": "muon"}])


def test_stacked_3d_parameter_is_a_batch_of_independent_matrices() -> None:
    E = torch.randn(3, 8, 12)
    stacked = E.clone().requires_grad_()
    singles = [E[i].clone().requires_grad_() for i in range(3)]
    opt_a, opt_b = Muon([stacked]), Muon(singles)
    for t in range(3):
        g = torch.randn(3, 8, 12, generator=torch.Generator().manual_seed(t))
        stacked.grad = g
        for i, s in enumerate(singles):
            s.grad = g[i].clone()
        opt_a.step()
        opt_b.step()
    assert torch.allclose(stacked.detach(), torch.stack([s.detach() for s in singles]), atol=1e-6)


def test_conv_kernel_is_orthogonalized_as_flattened_matrix_with_its_lr_scale() -> None:
    # A 256×16×1×1 conv: the flattened 256×16 matrix gets sqrt(256/16) = 4× the lr (not kh/kw = 1×).
    K = torch.randn(256, 16, 1, 1)
    conv, flat = K.clone().requires_grad_(), K.reshape(256, 16).clone().requires_grad_()
    opt_c, opt_f = Muon([conv], weight_decay=0.0), Muon([flat], weight_decay=0.0)
    g = torch.randn(256, 16)
    conv.grad, flat.grad = g.reshape(256, 16, 1, 1).clone(), g.clone()
    opt_c.step()
    opt_f.step()
    assert torch.allclose(conv.detach().reshape(256, 16), flat.detach(), atol=1e-7)
    step_norm = torch.linalg.matrix_norm(conv.detach().reshape(256, 16) - K.reshape(256, 16), ord=2)
    assert step_norm.item() == pytest.approx(0.02 * 4.0, rel=0.15)  # σ_max(O) ∈ [0.68, 1.14], near 1


@pytest.mark.parametrize("nesterov", [True, False])
def test_step_never_mutates_grad(nesterov: bool) -> None:
    ps = [t.float().requires_grad_() for t in _tensors(MATRIX_SHAPES + OTHER_SHAPES, 0)]
    opt = Muon(ps, nesterov=nesterov)
    for t in range(2):
        _set_grads(ps, t)
        before = [p.grad.clone() for p in ps]
        opt.step()
        assert all(torch.equal(p.grad, b) for p, b in zip(ps, before))


def test_bf16_momentum_buffer_is_not_normalized_in_place() -> None:
    # torch 2.13's Muon normalizes its bf16 momentum buffer in place when nesterov=False.
    p = torch.randn(32, 16, dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(32, 16, dtype=torch.bfloat16) * 3
    opt = Muon([p], nesterov=False, momentum=0.9)
    p.grad = g
    opt.step()
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(g).lerp_(g, 0.1))


def test_zero_gradient_only_decays_and_no_gradient_leaves_untouched() -> None:
    lr, wd = 0.02, 0.1
    w, v, u = torch.randn(8, 4, requires_grad=True), torch.randn(8, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    w0, v0, u0 = (t.detach().clone() for t in (w, v, u))
    opt = Muon([w, v, u], lr=lr, weight_decay=wd)
    w.grad = torch.zeros_like(w)
    u.grad = torch.zeros_like(u)
    opt.step()
    assert torch.allclose(w.detach(), w0 * (1 - lr * wd), rtol=1e-6, atol=0)
    assert torch.equal(v.detach(), v0) and len(opt.state[v]) == 0
    assert torch.equal(u.detach(), u0)  # AdamW rule, adamw_weight_decay = 0: no change at all


def test_state_is_one_buffer_per_matrix_and_two_per_adamw_param() -> None:
    ps = [t.float().requires_grad_() for t in _tensors(MATRIX_SHAPES + OTHER_SHAPES, 0)]
    opt = Muon(ps)
    _set_grads(ps, 0)
    opt.step()
    for p in ps:
        expected = {"momentum_buffer"} if p.ndim >= 2 else {"step", "exp_avg", "exp_avg_sq"}
        assert set(opt.state[p]) == expected


def _make(seed: int):
    ps = [t.float().requires_grad_() for t in _tensors(MATRIX_SHAPES + OTHER_SHAPES, seed)]
    opt = Muon(ps, adamw_weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.2 * t))
    return ps, opt, sched


def _run(opt, sched, ps, steps) -> None:
    for t in steps:
        _set_grads(ps, t)
        opt.step()
        sched.step()


def test_state_dict_resume_is_bit_identical_with_lr_scheduler() -> None:
    straight, resumed, opt3 = resumed_run(_make, _run, split=3, total=8)
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed))
    # The scheduler drives both rules' lrs.
    assert opt3.param_groups[0]["lr"] == pytest.approx(0.02 / (1 + 0.2 * 8))
    assert opt3.param_groups[1]["lr"] == pytest.approx(3e-4 / (1 + 0.2 * 8))


def test_deepcopy_continues_identically() -> None:
    ps, opt, sched = _make(0)
    _run(opt, sched, ps, range(2))
    opt.nonfinite, opt.ns_dtype = "skip", torch.float32
    ps2, opt2, sched2 = copy.deepcopy((ps, opt, sched))
    assert (opt2.nonfinite, opt2.ns_dtype, opt2.muon_defaults) == ("skip", torch.float32, opt.muon_defaults)
    _run(opt, sched, ps, range(2, 4))
    _run(opt2, sched2, ps2, range(2, 4))
    assert all(torch.equal(a, b) for a, b in zip(ps, ps2))


# ---- bad input -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        (dict(lr=-0.02), "lr: -0.02"),
        (dict(momentum=1.0), "momentum: 1.0"),
        (dict(weight_decay=-1.0), "weight_decay: -1.0"),
        (dict(ns_steps=0), "ns_steps: 0"),
        (dict(ns_coefficients="cubic"), "'cubic'"),
        (dict(lr_scale="muP"), "lr_scale: 'muP'"),
        (dict(adamw_lr=-1.0), "adamw_lr: -1.0"),
        (dict(adamw_betas=(0.9, 1.0)), "adamw_betas[1]: 1.0"),
        (dict(adamw_eps=-1e-8), "adamw_eps: -1e-08"),
        (dict(adamw_weight_decay=-0.1), "adamw_weight_decay: -0.1"),
        (dict(ns_dtype=torch.int32), "ns_dtype: torch.int32"),
        (dict(nonfinite="warn"), "nonfinite: 'warn'"),
        (dict(decay="cosine"), "decay: 'cosine'"),
        (dict(ns_method="svd"), "ns_method: 'svd'"),
    ],
)
def test_bad_hyperparameters_raise_value_error_naming_them(kwargs: dict, needle: str) -> None:
    with pytest.raises(ValueError) as info:
        Muon([torch.randn(4, 4, requires_grad=True)], **kwargs)
    assert needle in str(info.value)


def test_bad_param_group_raises_and_leaves_optimizer_unchanged() -> None:
    ps, opt, _ = _make(0)
    _run(opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0), ps, range(1))
    snap = snapshot(opt, ps)
    w, b = torch.randn(4, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    n_groups = len(opt.param_groups)
    for bad in (
        {"params": [w, b], "adamw_lr": -1.0},  # the AdamW half is bad: the Muon half must not be added either
        {"params": [w], "momentum": 1.5},
        {"params": [w], "algorithm": "sgd"},
        {"params": [w], "algorithm": "muon", "ns_steps": 0},
        {"params": [b], "algorithm": "adamw", "betas": (1.2, 0.9)},
        {"params": [w, ps[0]]},  # ps[0] is already optimized
    ):
        with pytest.raises(ValueError):
            opt.add_param_group(bad)
        assert len(opt.param_groups) == n_groups
        assert_unchanged(opt, ps, snap)


def test_sparse_gradient_raises_before_anything_changes() -> None:
    ps, opt, sched = _make(0)
    _run(opt, sched, ps, range(1))
    snap = snapshot(opt, ps)
    _set_grads(ps, 5)
    ps[-2].grad = ps[-2].grad.to_sparse()
    with pytest.raises(TypeError, match="sparse"):
        opt.step()
    assert_unchanged(opt, ps, snap)


def test_nonfinite_raise_names_parameter_and_changes_nothing() -> None:
    named = [(f"p{i}", t.float().requires_grad_()) for i, t in enumerate(_tensors(MATRIX_SHAPES + OTHER_SHAPES, 0))]
    ps = [p for _, p in named]
    opt = Muon(named, nonfinite="raise")
    _set_grads(ps, 0)
    opt.step()
    snap = snapshot(opt, ps)
    _set_grads(ps, 1)
    ps[4].grad[1, 2, 3] = float("inf")
    with pytest.raises(FloatingPointError, match="'p4'"):
        opt.step()
    assert_unchanged(opt, ps, snap)


def test_nonfinite_skip_skips_every_group_and_counts() -> None:
    ps = [t.float().requires_grad_() for t in _tensors(MATRIX_SHAPES + OTHER_SHAPES, 0)]
    opt = Muon(ps, nonfinite="skip")
    _set_grads(ps, 0)
    opt.step()
    snap = snapshot(opt, ps)
    _set_grads(ps, 1)
    ps[-1].grad.fill_(float("nan"))  # only an AdamW-rule scalar is bad: the Muon half is skipped too
    opt.step()
    assert opt.skipped_steps == 1
    assert_unchanged(opt, ps, snap)


def test_ns_dtype_override_is_used() -> None:
    # float64 parameters: the default computes Newton–Schulz in fp32 (error ~1e-7 relative), an
    # ns_dtype=float64 override in float64 (~1e-16). The expected update is built from an explicit
    # float64 Newton–Schulz, so ignoring the override fails by orders of magnitude.
    from optimizers import newton_schulz

    g = torch.Generator().manual_seed(3)
    w0, grad = torch.randn(8, 6, generator=g, dtype=torch.float64), torch.randn(8, 6, generator=g, dtype=torch.float64)
    lr, momentum = 0.02, 0.95
    update = (1 - momentum) * grad + momentum * (1 - momentum) * grad  # Nesterov, first step
    scale = math.sqrt(max(1.0, 8 / 6))
    expected = w0 * (1 - lr * 0.1) - lr * scale * newton_schulz(update, dtype=torch.float64)
    results = {}
    for ns_dtype in (torch.float64, None):
        p = w0.clone().requires_grad_()
        p.grad = grad.clone()
        Muon([p], lr=lr, momentum=momentum, ns_dtype=ns_dtype).step()
        assert p.dtype == torch.float64
        results[ns_dtype] = (p.detach() - expected).abs().max().item()
    assert results[torch.float64] < 1e-14, results
    assert results[None] > 1e-10, results  # fp32 compute is visibly different, so the check can fail


# ---- CUDA (skipped without a GPU) ----------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_muon_on_cuda_uses_bf16_newton_schulz_close_to_fp32() -> None:
    start = _tensors(MATRIX_SHAPES + OTHER_SHAPES, seed=0)
    gpu = [t.float().cuda().requires_grad_() for t in start]
    cpu = [t.float().requires_grad_() for t in start]
    opt_gpu, opt_cpu = Muon(gpu, weight_decay=0.0), Muon(cpu, weight_decay=0.0)
    for step in range(3):
        grads = _set_grads(cpu, step)
        for p, g in zip(gpu, grads):
            p.grad = g.float().cuda()
        opt_gpu.step()
        opt_cpu.step()
    for a, b, t in zip(gpu, cpu, start):
        if t.ndim >= 2:  # bf16 NS: the step (not the weight) agrees to bf16 precision
            da, db = a.detach().cpu().double() - t, b.detach().double() - t
            assert (da - db).norm() <= 0.05 * db.norm()


@cuda
def test_muon_on_cuda_bf16_params_keep_momentum_and_grad_intact() -> None:
    p = torch.randn(64, 32, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    g = torch.randn(64, 32, dtype=torch.bfloat16, device="cuda") * 3
    opt = Muon([p], nesterov=False, momentum=0.9)
    p.grad = g.clone()
    opt.step()
    assert torch.equal(p.grad, g)
    assert torch.equal(opt.state[p]["momentum_buffer"], torch.zeros_like(g).lerp_(g, 0.1))


def test_one_orthogonalization_call_per_ns_setting_over_all_groups(monkeypatch: pytest.MonkeyPatch) -> None:
    import optimizers.muon as muon_module

    # The one entry point Muon's step calls for all its orthogonalization work.
    entry = next(n for n in ("orthogonalize_distributed", "orthogonalize_updates") if hasattr(muon_module, n))
    calls = []
    real = getattr(muon_module, entry)

    def spy(updates, **kw):
        calls.append(([tuple(u.shape) for u in updates], kw["steps"]))
        return real(updates, **kw)

    monkeypatch.setattr(muon_module, entry, spy)
    ps = [torch.randn(8, 4, requires_grad=True) for _ in range(4)] + [torch.randn(4, 8, requires_grad=True)]
    opt = Muon([{"params": ps[:2]}, {"params": ps[2:4], "lr": 0.01}, {"params": ps[4:], "ns_steps": 3}])
    for p in ps:
        p.grad = torch.randn_like(p)
    opt.step()
    assert sorted(calls, key=lambda c: c[1]) == [([(4, 8)], 3), ([(8, 4)] * 4, 5)]
