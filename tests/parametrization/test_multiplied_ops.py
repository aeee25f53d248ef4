"""The fused multiplier ops: exact gradients (gradcheck), plain-layer equality, and what they save."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import parametrization as P
from parametrization.effective_weight import effective_weight, effective_weight_grads
from parametrization.multiplied_ops import multiplied_conv, multiplied_embedding, multiplied_linear, multiplied_weight
from tests.parametrization._helpers import SavedBytes

SUBSETS = [tuple(k in letters for k in "src") for letters in ("src", "rc", "sc", "sr", "s", "r", "c", "")]


@pytest.fixture(autouse=True)
def python_ops():
    """These are tests of the Python ops: the C++ Linear (on by default where it builds, and
    tested in test_compiled_linear.py) is switched off around each."""
    previous = P.use_compiled_linear(False)
    yield
    P.use_compiled_linear(previous)


def _mults(rows: int, cols: int, present: tuple[bool, bool, bool], g: torch.Generator, batch: tuple[int, ...] = ()):
    s, r, c = (
        torch.rand(*batch, k, generator=g, dtype=torch.float64).add(0.5).requires_grad_() if want else None
        for want, k in zip(present, (1 if not batch else None, rows, cols))
    ) if not batch else (
        torch.rand(batch[0], generator=g, dtype=torch.float64).add(0.5).requires_grad_() if present[0] else None,
        torch.rand(batch[0], rows, generator=g, dtype=torch.float64).add(0.5).requires_grad_() if present[1] else None,
        torch.rand(batch[0], cols, generator=g, dtype=torch.float64).add(0.5).requires_grad_() if present[2] else None,
    )
    return s, r, c


def _inputs(*tensors):
    return tuple(t for t in tensors if t is not None)


@pytest.mark.parametrize("present", SUBSETS, ids=lambda p: "".join(k for k, w in zip("src", p) if w) or "none")
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("activation_side", [False, True])
@pytest.mark.parametrize("m, n", [(5, 4), (4, 5)], ids=["f·s-into-c", "f·s-into-r"])
def test_linear_gradcheck_every_input(present, bias, activation_side, m, n):
    """Both shapes: the backward folds f·s into the shorter of r and c and shares that fold between
    the W_eff rebuild and ∂W, so each fold is its own code path."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, n, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(m, n, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(m, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    s, r, c = _mults(m, n, present, g)

    def fn(x, w, *rest):
        it = iter(rest)
        b_, s_, r_, c_ = (next(it) if t is not None else None for t in (b, s, r, c))
        return multiplied_linear(x, w, b_, s_, r_, c_, fixed=0.75, activation_side=activation_side)

    assert torch.autograd.gradcheck(fn, (x, w, *_inputs(b, s, r, c)))


@pytest.mark.parametrize("present", SUBSETS, ids=lambda p: "".join(k for k, w in zip("src", p) if w) or "none")
@pytest.mark.parametrize("activation_side", [False, True])
def test_linear_equals_plain_linear_on_effective_weight(present, activation_side):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(7, 4, generator=g, dtype=torch.float64)
    w, b = torch.randn(5, 4, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    s, r, c = _mults(5, 4, present, g)
    for fixed in (1.0, 0.25):
        got = multiplied_linear(x, w, b, s, r, c, fixed=fixed, activation_side=activation_side)
        torch.testing.assert_close(got, F.linear(x, effective_weight(w, s, r, c, fixed=fixed), b))


@pytest.mark.parametrize("present", SUBSETS[:1] + SUBSETS[-1:] + SUBSETS[5:6], ids=["src", "none", "r"])
@pytest.mark.parametrize(
    "kind", ["conv1d", "conv2d", "conv3d", "conv2d_groups", "conv_transpose2d", "conv_transpose1d_groups"]
)
def test_conv_gradcheck_every_input(present, kind):
    g = torch.Generator().manual_seed(2)
    dims = {"conv1d": 1, "conv2d": 2, "conv3d": 3, "conv2d_groups": 2, "conv_transpose2d": 2, "conv_transpose1d_groups": 1}[kind]
    groups = 2 if "groups" in kind else 1
    transposed = "transpose" in kind
    cin, cout = 4, 6
    # Conv weight [out, in/groups, *k]; transposed conv weight [in, out/groups, *k].
    wshape = (cin, cout // groups) if transposed else (cout, cin // groups)
    row_dim, col_dim = (1, 0) if transposed else (0, 1)
    w = torch.randn(*wshape, *([2] * dims), generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(2, cin, *([3] * dims), generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(cout, generator=g, dtype=torch.float64, requires_grad=True)
    s, r, c = _mults(w.shape[row_dim], w.shape[col_dim], present, g)
    kw = dict(stride=(2,) * dims if not transposed else (1,) * dims, padding=(1,) * dims, dilation=(1,) * dims,
              transposed=transposed, output_padding=(0,) * dims, groups=groups, row_dim=row_dim, col_dim=col_dim)

    def fn(x, w, b, *rest):
        it = iter(rest)
        s_, r_, c_ = (next(it) if t is not None else None for t in (s, r, c))
        return multiplied_conv(x, w, b, s_, r_, c_, fixed=0.5, **kw)

    assert torch.autograd.gradcheck(fn, (x, w, b, *_inputs(s, r, c)), fast_mode=True)  # full mode: minutes for the 3-D case
    plain = torch.convolution(x, effective_weight(w, s, r, c, row_dim=row_dim, col_dim=col_dim, fixed=0.5), b,
                              kw["stride"], kw["padding"], kw["dilation"], transposed, kw["output_padding"], groups)
    torch.testing.assert_close(fn(x, w, b, *_inputs(s, r, c)), plain)


@pytest.mark.parametrize(
    "present,padding_idx,freq",
    [(p, None, False) for p in SUBSETS] + [(SUBSETS[0], 2, False), (SUBSETS[0], None, True), (SUBSETS[5], 2, True)],
)
@pytest.mark.parametrize("activation_side", [False, True])
def test_embedding_gradcheck_and_equality(present, activation_side, padding_idx, freq):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.tensor([[0, 2, 5, 2], [1, 1, 3, 4]])
    s, r, c = _mults(6, 3, present, g)

    def fn(w, *rest):
        it = iter(rest)
        s_, r_, c_ = (next(it) if t is not None else None for t in (s, r, c))
        return multiplied_embedding(idx, w, s_, r_, c_, fixed=0.5, padding_idx=padding_idx, scale_grad_by_freq=freq,
                                    activation_side=activation_side)

    if padding_idx is None and not freq:  # those two change the gradient on purpose: not a Jacobian
        assert torch.autograd.gradcheck(fn, (w, *_inputs(s, r, c)))
    # Gradients equal those of the plain embedding of W_eff (padding row and frequency scaling included).
    ins = (w, *_inputs(s, r, c))
    got = torch.autograd.grad(fn(*ins).square().sum(), ins)
    ref_out = F.embedding(idx, effective_weight(w, s, r, c, fixed=0.5), padding_idx=padding_idx, scale_grad_by_freq=freq)
    ref = torch.autograd.grad(ref_out.square().sum(), ins)
    torch.testing.assert_close(fn(*ins), ref_out)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("present", SUBSETS, ids=lambda p: "".join(k for k, w in zip("src", p) if w) or "none")
@pytest.mark.parametrize("layout", [(1, 2, 0), (2, 1, 0), (0, 1, None), (1, 0, None)], ids=["batch_out_in", "batch_in_out", "out_in", "in_out"])
def test_weight_gradcheck_stacked_and_plain(present, layout):
    row_dim, col_dim, batch_dim = layout
    g = torch.Generator().manual_seed(4)
    shape = [3, 4, 5] if batch_dim is not None else [4, 5]
    w = torch.randn(*shape, generator=g, dtype=torch.float64, requires_grad=True)
    s, r, c = _mults(shape[row_dim], shape[col_dim], present, g, batch=(3,) if batch_dim is not None else ())

    def fn(w, *rest):
        it = iter(rest)
        s_, r_, c_ = (next(it) if t is not None else None for t in (s, r, c))
        return multiplied_weight(w, s_, r_, c_, fixed=0.5, row_dim=row_dim, col_dim=col_dim, batch_dim=batch_dim)

    assert torch.autograd.gradcheck(fn, (w, *_inputs(s, r, c)))
    torch.testing.assert_close(
        fn(w, *_inputs(s, r, c)), effective_weight(w, s, r, c, fixed=0.5, row_dim=row_dim, col_dim=col_dim, batch_dim=batch_dim)
    )


def test_eq4_grads_match_autograd_of_the_formula_on_a_conv_kernel():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64, requires_grad=True)
    s, r, c = _mults(3, 4, (True, True, True), g)
    grad = torch.randn(3, 4, 2, 2, generator=g, dtype=torch.float64)
    expected = torch.autograd.grad(effective_weight(w, s, r, c, fixed=0.3), (w, s, r, c), grad)
    got = effective_weight_grads(w.detach(), grad, s.detach(), r.detach(), c.detach(), fixed=0.3)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("activation_side", [False, True])
def test_linear_saves_no_more_than_the_plain_linear(activation_side):
    x = torch.randn(8, 64, requires_grad=True)
    w = torch.randn(32, 64, requires_grad=True)
    s, r, c = torch.ones(1, requires_grad=True), torch.ones(32, requires_grad=True), torch.ones(64, requires_grad=True)
    with SavedBytes([w, s, r, c]) as fused:
        multiplied_linear(x.tanh(), w, None, s, r, c, activation_side=activation_side).sum()
    with SavedBytes([w]) as plain:
        F.linear(x.tanh(), w).sum()
    with SavedBytes([w, s, r, c]) as autograd_weight_side:
        F.linear(x.tanh(), effective_weight(w, s, r, c)).sum()
    assert fused.bytes == plain.bytes
    assert autograd_weight_side.bytes > plain.bytes  # the cost the fused op removes


def test_weight_op_keeps_no_intermediate():
    w = torch.randn(3, 16, 8, requires_grad=True)
    s, r, c = (torch.ones(*shape, requires_grad=True) for shape in ((3,), (3, 16), (3, 8)))
    with SavedBytes([w, s, r, c]) as fused:
        multiplied_weight(w, s, r, c, row_dim=1, col_dim=2, batch_dim=0)
    with SavedBytes([w, s, r, c]) as autograd:
        effective_weight(w, s, r, c, row_dim=1, col_dim=2, batch_dim=0)
    assert fused.bytes == 0 < autograd.bytes


def test_ops_compile_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    w, wc = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, 3, requires_grad=True)
    s, r, c = torch.ones(1, requires_grad=True), torch.ones(6, requires_grad=True), torch.ones(4, requires_grad=True)

    def f(x, xc, idx):
        return (
            multiplied_linear(x, w, None, s, r, c, fixed=0.5).sum()
            + multiplied_linear(x, w, None, s, r, c, activation_side=True).sum()
            + multiplied_conv(xc, wc, None, s, r, c, padding=(1,)).sum()
            + multiplied_embedding(idx, w, s, r, None).sum()
            + (multiplied_weight(w, s, r, c) * x[:1].T.sum()).sum()
        )

    args = (torch.randn(3, 4, requires_grad=True), torch.randn(2, 4, 5, requires_grad=True), torch.tensor([0, 3, 5]))
    explanation = torch._dynamo.explain(f)(*args)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1


@pytest.mark.parametrize("present", SUBSETS, ids=lambda p: "".join(k for k, w in zip("src", p) if w) or "none")
@pytest.mark.parametrize("fixed", [1.0, 0.5])
def test_in_place_products_never_touch_their_inputs(present, fixed):
    # Outside autograd the products after the first run in place; W and (unless asked) G stay as given.
    g = torch.Generator().manual_seed(4)
    w, grad = torch.randn(2, 5, 4, generator=g, dtype=torch.float64).unbind(0)
    s, r, c = (t.detach() if t is not None else None for t in _mults(5, 4, present, g))
    w0, grad0 = w.clone(), grad.clone()
    expected = effective_weight(w, s, r, c, fixed=fixed)
    expected_grads = effective_weight_grads(w, grad, s, r, c, fixed=fixed)
    with torch.no_grad():
        torch.testing.assert_close(effective_weight(w, s, r, c, fixed=fixed), expected, rtol=0, atol=0)
        kept = effective_weight_grads(w, grad, s, r, c, fixed=fixed)
        assert torch.equal(w, w0) and torch.equal(grad, grad0)
        overwritten = effective_weight_grads(w, grad, s, r, c, fixed=fixed, overwrite_grad=True)
    for got, want in itertools.chain(zip(kept, expected_grads), zip(overwritten, expected_grads)):
        assert (got is None) == (want is None)
        if want is not None:
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert torch.equal(w, w0)
    assert overwritten[0].data_ptr() == grad.data_ptr()  # ∂W reuses G's memory


@pytest.mark.parametrize("activation_side", [False, True])
def test_linear_second_order_gradients(activation_side):
    # With create_graph the backward records its ops, so nothing may be done in place there.
    g = torch.Generator().manual_seed(5)
    x = torch.randn(3, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s, r, c = _mults(5, 4, (True, True, True), g)
    fn = lambda *a: multiplied_linear(*a[:2], None, *a[2:], fixed=0.5, activation_side=activation_side)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x, w, s, r, c))


@pytest.mark.parametrize("activation_side", [False, True])
@pytest.mark.parametrize("autocast", [False, True])
def test_linear_without_grad_skips_the_function_and_gives_the_same_output(monkeypatch, activation_side, autocast):
    from parametrization import multiplied_ops

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 6, 8, generator=g)
    w, b = torch.randn(5, 8, generator=g, requires_grad=True), torch.randn(5, generator=g, requires_grad=True)
    s, r, c = (torch.rand(k, generator=g).add(0.5).requires_grad_() for k in (1, 5, 8))
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else torch.autocast("cpu", enabled=False)
    with ctx:
        y_grad = multiplied_linear(x, w, b, s, r, c, fixed=0.5, activation_side=activation_side)
        assert y_grad.grad_fn is not None

        def refuse(*args):
            raise AssertionError("the autograd.Function ran under no_grad")

        monkeypatch.setattr(multiplied_ops, "_apply", refuse)
        monkeypatch.setattr(multiplied_ops._LinearFn, "apply", refuse)
        with torch.no_grad():
            y = multiplied_linear(x, w, b, s, r, c, fixed=0.5, activation_side=activation_side)
        with torch.inference_mode():
            y_inf = multiplied_linear(x, w, b, s, r, c, fixed=0.5, activation_side=activation_side)
    assert y.dtype == y_grad.dtype == (torch.bfloat16 if autocast else torch.float32)
    assert torch.equal(y, y_grad.detach()) and torch.equal(y_inf, y)


@pytest.mark.parametrize("present", SUBSETS, ids=lambda p: "".join(k for k, w in zip("src", p) if w) or "none")
@pytest.mark.parametrize("layout", [(0, 1, (5, 7)), (1, 0, (7, 5)), (0, 1, (5, 7, 3)), (1, 0, (7, 5, 2, 2))])
def test_backward_rebuild_of_w_eff_is_bitwise_the_forward_one(present, layout):
    """The rebuild runs on a transposed view (so torch.compile does not merge it with the forward's)
    but must give exactly the forward's values, or ∂x would not match the forward."""
    from parametrization.effective_weight import absorbed_factors
    from parametrization.multiplied_ops import _rebuilt_effective_weight

    rd, cd, shape = layout
    g = torch.Generator().manual_seed(7)
    w = torch.randn(*shape, generator=g)
    s, r, c = (torch.rand(k, generator=g).add(0.5) if want else None for want, k in zip(present, (1, shape[rd], shape[cd])))
    for fixed in (1.0, 0.37):
        expected = effective_weight(w, s, r, c, row_dim=rd, col_dim=cd, fixed=fixed)
        got = _rebuilt_effective_weight(w, absorbed_factors(s, r, c, fixed), rd, cd)
        assert got.shape == expected.shape and torch.equal(got, expected)


def _all_ops(x, w, s, r, c):
    """Every fused op once, on the same small inputs (conv on a 1-D kernel view of ``w``)."""
    idx = torch.tensor([[0, 3, 1]])
    return [
        multiplied_linear(x, w, None, s, r, c, fixed=0.5),
        multiplied_conv(x.unsqueeze(-1), w.unsqueeze(-1), None, s, r, c, fixed=0.5),
        multiplied_embedding(idx, w, s, r, c, fixed=0.5),
        multiplied_weight(w, s, r, c, fixed=0.5),
    ]


def test_eager_ops_skip_the_python_apply_wrapper_with_identical_results(monkeypatch):
    """In eager mode the ops enter the autograd.Function through its C entry point, never through
    ``Function.apply`` (which torch.compile and functorch use); outputs and every gradient are
    bitwise the same either way."""
    from parametrization import multiplied_ops

    assert multiplied_ops._FUNCTION_APPLY is not None, "this torch no longer has the C entry point"
    fns = (multiplied_ops._LinearFn, multiplied_ops._ConvFn, multiplied_ops._EmbeddingFn, multiplied_ops._WeightFn)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(3, 6, generator=g, requires_grad=True)
    w = torch.randn(5, 6, generator=g, requires_grad=True)
    s, r, c = (torch.rand(k, generator=g).add(0.5).requires_grad_() for k in (1, 5, 6))
    leaves = (x, w, s, r, c)
    called = []

    def run():
        outs = _all_ops(*leaves)
        assert sorted(type(o.grad_fn).__name__ for o in outs) == sorted(f"{fn.__name__}Backward" for fn in fns)
        grads = torch.autograd.grad(sum(o.square().sum() for o in outs), leaves)
        return [o.detach() for o in outs] + list(grads)

    for fn in fns:
        original = fn.apply
        monkeypatch.setattr(fn, "apply", lambda *a, _o=original, _n=fn.__name__: (called.append(_n), _o(*a))[1])
    direct = run()
    assert called == []  # eager: the wrapper never ran
    monkeypatch.setattr(multiplied_ops, "_FUNCTION_APPLY", None)  # as on a torch without the entry point
    wrapped = run()
    assert sorted(called) == sorted(fn.__name__ for fn in fns)
    for a, b in zip(direct, wrapped, strict=True):
        assert torch.equal(a, b)


def test_direct_apply_unwraps_nothing_it_should_not(monkeypatch):
    """The wrapper skipped in eager mode unwraps tensors leaked out of a finished functorch
    transform; the direct path must give the same values and gradients for one."""
    from parametrization import multiplied_ops

    leaked = []

    def f(t):
        leaked.append(t * 2)
        return t.sum()

    torch.func.grad(f)(torch.randn(3, 6))
    x = leaked[0]
    assert torch._C._functorch.is_functorch_wrapped_tensor(x)
    g = torch.Generator().manual_seed(12)
    w = torch.randn(5, 6, generator=g, requires_grad=True)
    r, c = torch.rand(5, generator=g).requires_grad_(), torch.rand(6, generator=g).requires_grad_()
    y_direct = multiplied_linear(x, w, None, None, r, c)
    grads_direct = torch.autograd.grad(y_direct.square().sum(), (w, r, c))
    monkeypatch.setattr(multiplied_ops, "_FUNCTION_APPLY", None)
    y_wrapper = multiplied_linear(x, w, None, None, r, c)
    grads_wrapper = torch.autograd.grad(y_wrapper.square().sum(), (w, r, c))
    assert torch.equal(y_direct, y_wrapper)
    for a, b in zip(grads_direct, grads_wrapper):
        assert torch.equal(a, b)
