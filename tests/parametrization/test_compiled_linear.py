"""The opt-in C++ multiplied Linear: exact gradients, bitwise equal to the Python op, and used only
where it can serve the call. Skipped (with the build error) on a machine without a C++ compiler."""

from __future__ import annotations

import copy
import itertools

import pytest
import torch
import torch.nn.functional as F

import parametrization as P
from parametrization import compiled_linear, multiplied_ops
from parametrization.effective_weight import effective_weight
from parametrization.multiplied_ops import multiplied_linear


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
    y_cpp = multiplied_linear(*args32, fixed=fixed)
    grads_cpp = torch.autograd.grad(y_cpp.square().sum(), given32)
    P.use_compiled_linear(False)
    y_py = multiplied_linear(*args32, fixed=fixed)
    assert not _is_cpp(y_py)
    grads_py = torch.autograd.grad(y_py.square().sum(), given32)
    assert torch.equal(y_cpp, y_py)
    for a, b in zip(grads_cpp, grads_py, strict=True):
        assert torch.equal(a, b)
    assert torch.allclose(y_py, F.linear(args32[0], effective_weight(args32[1], *args32[3:], fixed=fixed), args32[2]))


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
    assert _is_cpp(multiplied_linear(x, w, b, s, r, c))
    assert not _is_cpp(multiplied_linear(x, w, b, s, r, c, activation_side=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not _is_cpp(multiplied_linear(x, w, b, s, r, c))
    with torch.no_grad():
        assert multiplied_linear(x, w, b, s, r, c).grad_fn is None


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
    assert P.use_compiled_linear(True) is False
    assert P.compiled_linear_enabled()


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
