"""optimizers.matrix_view and Muon's ``matrix_view`` group key: which matrices Newton–Schulz sees and the
(fan_out, fan_in) of the lr-scale rule."""

from __future__ import annotations

import pytest
import torch

from optimizers import LR_SCALE_RULES, Muon, newton_schulz
from optimizers.matrix_view import MATRIX_VIEWS, as_matrices, check_matrix_view, default_matrix_view, matrix_fans


def test_matrix_view_names_match_the_parametrization() -> None:
    from parametrization.roles import MATRIX_VIEWS as P_VIEWS

    assert MATRIX_VIEWS == P_VIEWS


@pytest.mark.parametrize(
    ("shape", "view", "fans", "matrices"),
    [
        ((128, 32), None, (128, 32), (128, 32)),
        ((128, 32), "out_in", (128, 32), (128, 32)),
        ((32, 128), "in_out", (128, 32), (32, 128)),
        ((3, 8, 12), None, (8, 12), (3, 8, 12)),
        ((2, 3, 8, 12), "batch_out_in", (8, 12), (6, 8, 12)),
        ((3, 12, 8), "batch_in_out", (8, 12), (3, 12, 8)),
        ((16, 4, 3), "conv", (16, 12), (16, 12)),
        ((16, 4, 3, 3), None, (16, 36), (16, 36)),
        ((4, 16, 3, 3), "conv_transposed", (144, 4), (4, 144)),
    ],
)
def test_view_table(shape: tuple, view: str | None, fans: tuple, matrices: tuple) -> None:
    assert matrix_fans(shape, view) == fans
    assert tuple(as_matrices(torch.zeros(shape), view).shape) == matrices


def test_default_view_is_the_documented_shape_rule() -> None:
    assert [default_matrix_view(n) for n in (2, 3, 4, 5)] == ["out_in", "batch_out_in", "conv", "conv"]


@pytest.mark.parametrize(
    ("view", "ndim", "needle"),
    [("rows_cols", 2, "Invalid matrix_view: 'rows_cols'"), ("out_in", 3, "'batch_out_in'"),
     ("conv", 2, "'out_in', 'in_out'"), ("batch_in_out", 2, "needs 3-D or more")],
)
def test_check_matrix_view_names_value_parameter_and_fix(view: str, ndim: int, needle: str) -> None:
    with pytest.raises(ValueError, match="'blocks.0.w'") as info:
        check_matrix_view(view, ndim, "parameter 'blocks.0.w'")
    assert needle in str(info.value)


def test_muon_rejects_a_view_that_does_not_fit_at_construction_and_add_param_group() -> None:
    w3 = torch.randn(4, 3, 2, requires_grad=True)
    with pytest.raises(ValueError, match="'experts'.*3-D"):
        Muon([{"params": [("experts", w3)], "matrix_view": "out_in"}])
    opt = Muon([torch.randn(4, 4, requires_grad=True)])
    for bad in ({"params": [w3], "matrix_view": "in_out"}, {"params": [w3], "matrix_view": "transposed"}):
        with pytest.raises(ValueError, match="matrix_view"):
            opt.add_param_group(bad)
    assert len(opt.param_groups) == 1


def _one_step(p0: torch.Tensor, g: torch.Tensor, **group) -> torch.Tensor:
    p = p0.clone().requires_grad_()
    opt = Muon([{"params": [p], **group}], weight_decay=0.0)
    p.grad = g.clone()
    opt.step()
    return (p - p0).detach()


@pytest.mark.parametrize("rule", list(LR_SCALE_RULES))
def test_linear_and_transposed_conv1d_weight_get_the_transposed_update(rule: str) -> None:
    # One Linear(32, 128) and the same layer as a Hugging Face Conv1D, whose weight is stored (in, out):
    # the same input and loss give transposed gradients, and with matrix_view="in_out" transposed updates.
    torch.manual_seed(0)
    lin = torch.nn.Linear(32, 128, bias=False)
    w_t = lin.weight.detach().T.clone().requires_grad_()
    x = torch.randn(16, 32)
    lin(x).square().mean().backward()
    (x @ w_t).square().mean().backward()
    d_lin = _one_step(lin.weight.detach(), lin.weight.grad, lr_scale=rule)
    d_conv1d = _one_step(w_t.detach(), w_t.grad, lr_scale=rule, matrix_view="in_out")
    assert torch.allclose(d_conv1d, d_lin.T, rtol=0, atol=1e-7)
    # Without the view the fans are read from the stored shape and the step size is wrong (2x under spectral).
    if rule == "spectral":
        d_shape = _one_step(w_t.detach(), w_t.grad, lr_scale=rule)
        assert torch.linalg.norm(d_lin) / torch.linalg.norm(d_shape) == pytest.approx(2.0, rel=1e-5)


def test_3d_conv_kernel_with_conv_view_is_orthogonalized_as_one_flat_matrix() -> None:
    g = torch.randn(16, 4, 3, generator=torch.Generator().manual_seed(0))
    d = _one_step(torch.zeros(16, 4, 3), g, matrix_view="conv", lr=1.0, lr_scale="none", nesterov=False, momentum=0.0)
    expected = -newton_schulz(g.reshape(16, 12), steps=5, coefficients="quintic", dtype=torch.float32)
    assert torch.allclose(d.reshape(16, 12), expected, atol=1e-6)
    # The default (no key) treats it as 16 separate 4×3 matrices: a different update.
    d_default = _one_step(torch.zeros(16, 4, 3), g, lr=1.0, lr_scale="none", nesterov=False, momentum=0.0)
    assert not torch.allclose(d_default, d, atol=1e-3)


def test_conv_transposed_view_uses_out_times_kernel_as_fan_out() -> None:
    # ConvTranspose2d(in=4, out=16, k=3): weight [4, 16, 3, 3]; fan_out = 144, fan_in = 4 → spectral scale 6.
    g = torch.randn(4, 16, 3, 3, generator=torch.Generator().manual_seed(0))
    d = _one_step(torch.zeros(4, 16, 3, 3), g, matrix_view="conv_transposed", lr=1.0, nesterov=False, momentum=0.0)
    expected = -6.0 * newton_schulz(g.reshape(4, 144), steps=5, coefficients="quintic", dtype=torch.float32)
    assert torch.allclose(d.reshape(4, 144), expected, atol=1e-5)


def test_batch_view_with_several_leading_axes_is_one_matrix_per_entry() -> None:
    g = torch.randn(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    d = _one_step(torch.zeros(2, 3, 8, 12), g, matrix_view="batch_out_in", lr=1.0, nesterov=False, momentum=0.0,
                  lr_scale="none")
    for i in range(2):
        for j in range(3):
            expected = -newton_schulz(g[i, j], steps=5, coefficients="quintic", dtype=torch.float32)
            assert torch.allclose(d[i, j], expected, atol=1e-6)


def test_a_view_edited_after_construction_is_checked_before_the_step_writes_anything() -> None:
    from tests.optimizers._state import assert_unchanged, snapshot

    w, b = torch.randn(6, 4, requires_grad=True), torch.randn(4, requires_grad=True)
    opt = Muon([{"params": [("w", w)], "algorithm": "muon"}, {"params": [("b", b)], "algorithm": "adamw", "weight_decay": 0.1}])
    w.grad, b.grad = torch.randn(6, 4), torch.randn(4)
    snap = snapshot(opt, [w, b])
    opt.param_groups[0]["matrix_view"] = "conv"
    with pytest.raises(ValueError, match="'w'"):
        opt.step()
    del opt.param_groups[0]["matrix_view"]  # the snapshot's groups have no such key
    assert_unchanged(opt, [w, b], snap)
