"""The C++ multiplied Linear (on by default where it builds): exact gradients, bitwise equal to the
Python op, no more saved than a plain Linear, used only where it can serve the call, and a default
that builds on first use or falls back with a warning. Tests that need the build skip (with the
build error) on a machine without a C++ compiler."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import parametrization as P
from parametrization import compiled_linear, multiplied_ops
from parametrization.effective_weight import effective_weight
from parametrization.multiplied_ops import compiled_linear_call, multiplied_linear
from tests.parametrization._helpers import SavedBytes


@pytest.fixture(scope="module")
def cpp_op():
    try:
        return compiled_linear._op()
    except RuntimeError as err:
        pytest.skip(f"C++ build unavailable here: {err}")


@pytest.fixture
def compiled(cpp_op):
    previous = P.use_compiled_linear(True)
    yield cpp_op
    P.use_compiled_linear(previous)


def _is_cpp(y: torch.Tensor) -> bool:
    return "MultipliedLinear" in y.grad_fn.name() and "CppNode" in y.grad_fn.name()


def _tensors(m, n, present, dtype, g):
    ps, pr, pc, pb = present
    x = torch.randn(2, 3, n, dtype=dtype, generator=g, requires_grad=True)
    w = torch.randn(m, n, dtype=dtype, generator=g, requires_grad=True)
    b = torch.randn(m, dtype=dtype, generator=g, requires_grad=True) if pb else None
    s = torch.rand(1, dtype=dtype, generator=g).add(0.5).requires_grad_() if ps else None
    r = torch.rand(m, dtype=dtype, generator=g).add(0.5).requires_grad_() if pr else None
    c = torch.rand(n, dtype=dtype, generator=g).add(0.5).requires_grad_() if pc else None
    return x, w, b, s, r, c


PRESENT = list(itertools.product([False, True], repeat=4))


@pytest.mark.parametrize("present", PRESENT, ids=lambda p: "".join(k for k, on in zip("srcb", p) if on) or "none")
@pytest.mark.parametrize("m, n", [(5, 4), (4, 5)], ids=["f·s-into-c", "f·s-into-r"])
@pytest.mark.parametrize("fixed", [1.0, 0.5])
def test_gradcheck_and_bitwise_equal_to_the_python_op(compiled, present, m, n, fixed):
    g = torch.Generator().manual_seed(sum(present) * 10 + m + int(fixed * 4))
    args = _tensors(m, n, present, torch.float64, g)
    given = [t for t in args if t is not None]

    def op(*inputs):
        it = iter(inputs)
        return multiplied_linear(*(next(it) if t is not None else None for t in args), fixed=fixed)

    assert _is_cpp(op(*given))
    assert torch.autograd.gradcheck(op, given)
    # float32: every output and gradient bitwise those of the Python Function
    args32 = [None if t is None else t.detach().float().requires_grad_() for t in args]
    given32 = [t for t in args32 if t is not None]
    before = [t.detach().clone() for t in given32]
    y_cpp = multiplied_linear(*args32, fixed=fixed)
    grads_cpp = torch.autograd.grad(y_cpp.square().sum(), given32)
    for t, t0 in zip(given32, before, strict=True):  # its in-place products touch only its own temporaries
        assert torch.equal(t, t0)
    P.use_compiled_linear(False)
    y_py = multiplied_linear(*args32, fixed=fixed)
    assert not _is_cpp(y_py)
    grads_py = torch.autograd.grad(y_py.square().sum(), given32)
    assert torch.equal(y_cpp, y_py)
    for a, b in zip(grads_cpp, grads_py, strict=True):
        assert torch.equal(a, b)
    assert torch.allclose(y_py, F.linear(args32[0], effective_weight(args32[1], *args32[3:], fixed=fixed), args32[2]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_model_is_bitwise_the_python_op(compiled, dtype):
    # A model cast to bf16/fp16 (no autocast) runs the C++ op; its products match the Python op's.
    g = torch.Generator().manual_seed(5)
    args = [None if t is None else t.detach().to(dtype).requires_grad_() for t in _tensors(6, 5, (True, True, True, True), torch.float32, g)]
    y = multiplied_linear(*args, fixed=0.5)
    assert _is_cpp(y) and y.dtype == dtype
    grads = torch.autograd.grad(y.float().square().sum(), args)
    P.use_compiled_linear(False)
    y_py = multiplied_linear(*args, fixed=0.5)
    grads_py = torch.autograd.grad(y_py.float().square().sum(), args)
    assert torch.equal(y, y_py)
    for a, b in zip(grads, grads_py, strict=True):
        assert a.dtype == dtype and torch.equal(a, b)


def test_only_the_gradients_asked_for(compiled):
    g = torch.Generator().manual_seed(1)
    x, w, b, s, r, c = _tensors(4, 5, (True, True, True, True), torch.float32, g)
    x.requires_grad_(False)
    w.requires_grad_(False)
    y = multiplied_linear(x, w, b, s, r, c)
    assert _is_cpp(y)
    gb, gs, gr, gc = torch.autograd.grad(y.sum(), (b, s, r, c))
    assert gb.shape == b.shape and gs.shape == s.shape and gr.shape == r.shape and gc.shape == c.shape


def test_second_order_gradients(compiled):
    g = torch.Generator().manual_seed(2)
    args = _tensors(4, 5, (True, True, True, False), torch.float64, g)
    given = [t for t in args if t is not None]
    assert _is_cpp(multiplied_linear(*args))
    assert torch.autograd.gradgradcheck(lambda *a: multiplied_linear(a[0], a[1], None, a[2], a[3], a[4]), given)


def test_the_python_op_serves_what_the_cpp_op_cannot(compiled):
    g = torch.Generator().manual_seed(3)
    x, w, b, s, r, c = _tensors(4, 5, (True, True, True, True), torch.float32, g)
    y = multiplied_linear(x, w, b, s, r, c)
    assert _is_cpp(y)
    assert not _is_cpp(multiplied_linear(x, w, b, s, r, c, activation_side=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _is_cpp(multiplied_linear(x, w, b, s, r, c))
    with torch.no_grad():  # served by the C++ forward alone, bitwise the same
        y_ng = multiplied_linear(x, w, b, s, r, c)
    with torch.inference_mode():
        y_inf = multiplied_linear(x, w, b, s, r, c)
    assert y_ng.grad_fn is None and torch.equal(y_ng, y.detach()) and torch.equal(y_inf, y_ng)
    # multipliers that do not fit the weight: the C++ op declines, so they never broadcast silently
    for bad in (torch.ones(1), torch.ones(5), torch.ones(4, dtype=torch.float64), torch.ones(1, 4), torch.ones(4, device="meta")):
        assert compiled_linear_call(x, w, b, s, bad, c, 1.0, 0, 0) is None
    assert compiled_linear_call(x, w, b, torch.ones(2), r, c, 1.0, 0, 0) is None
    assert compiled_linear_call(x, w, b, s, r, torch.ones(4), 1.0, 0, 0) is None
    # the compute modes: weight side served, activation side declined, auto by the token count
    assert _is_cpp(compiled_linear_call(x, w, b, s, r, c, 1.0, 0, 0))
    assert compiled_linear_call(x, w, b, s, r, c, 1.0, 0, 1) is None
    wide = torch.randn(64, 64)
    assert compiled_linear_call(torch.randn(1, 64), wide, None, None, None, None, 1.0, 0, 2) is None  # 1·128 < 64·64
    assert compiled_linear_call(torch.randn(64, 64), wide, None, None, None, None, 1.0, 0, 2) is not None


def test_a_misfit_multiplier_raises_the_layer_naming_error(compiled):
    lin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    P.parametrize(lin, "vector")
    with torch.no_grad():
        lin[0].weight_mult_row.data = torch.ones(4)
    with pytest.raises(ValueError, match=r"Linear\.weight"):
        lin(torch.randn(2, 6))


def test_modules_use_it_with_their_layout_and_compute_setting(compiled):
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(4)
    for make in (lambda: torch.nn.Linear(6, 5), lambda: Conv1D(5, 6)):  # Conv1D stores W as (in, out)
        layer = make()
        P.parametrize(torch.nn.ModuleList([layer, torch.nn.Linear(2, 2)]), {"0": "src"})  # not the head
        assert P.is_multiplied(layer)
        with torch.no_grad():
            for p in layer.parameters():
                p.mul_(1.01)
        x = torch.randn(3, 4, 6, generator=g, requires_grad=True)
        y = layer(x)
        assert _is_cpp(y)
        grads = torch.autograd.grad(y.square().sum(), [x, *layer.parameters()])
        P.use_compiled_linear(False)
        y_py = layer(x)
        grads_py = torch.autograd.grad(y_py.square().sum(), [x, *layer.parameters()])
        P.use_compiled_linear(True)
        assert torch.equal(y, y_py)
        for a, b in zip(grads, grads_py, strict=True):
            assert torch.equal(a, b)
        P.set_compute(layer, "activation")
        assert not _is_cpp(layer(x))


def test_it_saves_no_more_than_the_plain_linear(compiled):
    x = torch.randn(8, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    s, r, c = torch.ones(1, requires_grad=True), torch.ones(32, requires_grad=True), torch.ones(64, requires_grad=True)
    with SavedBytes([w, s, r, c]) as fused:
        y = multiplied_linear(x.tanh(), w, None, s, r, c)
    assert _is_cpp(y)
    with SavedBytes([w]) as plain:
        F.linear(x.tanh(), w)
    with SavedBytes([w, s, r, c]) as autograd_weight_side:
        F.linear(x.tanh(), effective_weight(w, s, r, c))
    assert fused.bytes == plain.bytes
    assert autograd_weight_side.bytes > plain.bytes  # the cost the fused op removes


def test_compiled_model_has_no_graph_breaks_with_the_cpp_op_on(compiled):
    lin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    P.parametrize(lin, "vector")
    x = torch.randn(4, 6)
    explained = torch._dynamo.explain(lin)(x)
    assert explained.graph_break_count == 0


def test_gpt_train_step_is_bitwise_the_python_ops(compiled):
    from reference_models import GPT, GPTConfig

    torch.manual_seed(0)
    cfg = GPTConfig.preset("tiny")
    a = GPT(cfg)
    P.parametrize(a, "vector")
    with torch.no_grad():  # multipliers away from 1, so every factor matters
        for p in a.parameters():
            p.mul_(1.01)
    b = copy.deepcopy(a)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.seq_len + 1))
    linears = [m for m in a.modules() if isinstance(m, torch.nn.Linear) and P.is_multiplied(m)]
    seen = []
    for m in linears:
        m.register_forward_hook(lambda mod, inputs, out: seen.append(_is_cpp(out)))
    loss_cpp = a(idx[:, :-1], idx[:, 1:])
    assert len(seen) == len(linears) > 0 and all(seen)  # every multiplied Linear ran the C++ op
    loss_cpp.backward()
    P.use_compiled_linear(False)
    loss_py = b(idx[:, :-1], idx[:, 1:])
    loss_py.backward()
    assert torch.equal(loss_cpp, loss_py)
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        assert torch.equal(pa.grad, pb.grad), name


def test_switch_reports_and_restores(compiled):
    assert P.compiled_linear_enabled()
    assert P.use_compiled_linear(False) is True
    assert not P.compiled_linear_enabled() and multiplied_ops._compiled_linear is None
    assert P.use_compiled_linear("auto") is False
    assert P.compiled_linear_enabled()  # built already: "auto" is the op itself
    assert P.use_compiled_linear(True) is True
    with pytest.raises(ValueError, match="enabled must be True, False or 'auto'"):
        P.use_compiled_linear("yes")
    assert P.compiled_linear_enabled()


def _layer():
    lin = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Linear(5, 3))
    P.parametrize(lin, "vector")
    return lin


def test_auto_builds_on_the_first_call_only(cpp_op, monkeypatch):
    import torch.utils.cpp_extension as cpp

    built = compiled_linear._module
    loads = []
    monkeypatch.setattr(compiled_linear, "_module", None)
    monkeypatch.setattr(cpp, "load", lambda *a, **k: loads.append(a[0]) or built)
    previous = P.use_compiled_linear("auto")
    try:
        lin, x = _layer(), torch.randn(4, 6)
        assert multiplied_ops._compiled_linear is compiled_linear._build_on_first_call and not loads
        y = lin[0](x)
        assert _is_cpp(y) and loads == [compiled_linear._NAME]
        assert multiplied_ops._compiled_linear is built.multiplied_linear
        lin[0](x)
        assert len(loads) == 1
    finally:
        P.use_compiled_linear(previous)


def test_auto_falls_back_to_the_python_op_with_one_warning(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def fail(*args, **kwargs):
        raise OSError("no compiler here")

    monkeypatch.setattr(compiled_linear, "_module", None)
    monkeypatch.setattr(cpp, "load", fail)
    monkeypatch.setattr(multiplied_ops, "_compiled_linear", compiled_linear._build_on_first_call)
    lin, x = _layer(), torch.randn(4, 6, requires_grad=True)
    with pytest.warns(RuntimeWarning, match=r"Python op is used.*no compiler here.*LRM_COMPILED_LINEAR=0"):
        y = lin(x)
    assert not _is_cpp(lin[0](x)) and multiplied_ops._compiled_linear is None
    y.sum().backward()  # the call that tried the build still ran, through the Python op
    assert x.grad is not None
    assert not P.compiled_linear_enabled()


def test_the_environment_variable_sets_the_start(monkeypatch):
    monkeypatch.setenv("LRM_COMPILED_LINEAR", "0")
    assert compiled_linear.initial_op() is None
    monkeypatch.setenv("LRM_COMPILED_LINEAR", "auto")
    assert compiled_linear.initial_op() is compiled_linear._build_on_first_call
    monkeypatch.delenv("LRM_COMPILED_LINEAR")
    assert compiled_linear.initial_op() is compiled_linear._build_on_first_call
    monkeypatch.setenv("LRM_COMPILED_LINEAR", "fast")
    with pytest.raises(ValueError, match="LRM_COMPILED_LINEAR='fast'"):
        compiled_linear.initial_op()


def test_a_failed_build_changes_nothing_and_names_the_file(monkeypatch):
    import torch.utils.cpp_extension as cpp

    def fail(*args, **kwargs):
        raise OSError("no compiler here")

    monkeypatch.setattr(compiled_linear, "_module", None)
    monkeypatch.setattr(cpp, "load", fail)
    before = multiplied_ops._compiled_linear
    with pytest.raises(RuntimeError, match=r"multiplied_linear\.cpp.*no compiler here"):
        P.use_compiled_linear(True)
    assert multiplied_ops._compiled_linear is before
