"""Multipliers on any registered parameter, including stacked (expert) matrices."""

from __future__ import annotations

import copy
import io
import pickle

import torch

import parametrization as P
from parametrization.multipliers import Placement, attach, fold_module, multiplied_params, reset
from parametrization.roles import WeightLayout
from tests.parametrization._helpers import IDX, perturb_multipliers
from tests.parametrization._models import ToyExperts, ToyMoE


def test_experts_get_per_expert_row_and_column_multipliers_and_are_identity_at_init():
    torch.manual_seed(0)
    model = ToyMoE()
    plain = copy.deepcopy(model)
    mp = P.parametrize(model)
    ex = model.experts
    assert multiplied_params(ex) == ("gate_up_proj", "down_proj")
    assert ex.gate_up_proj_mult_row.shape == (3, 48) and ex.gate_up_proj_mult_col.shape == (3, 16)
    assert ex.down_proj_mult_row.shape == (3, 16) and ex.down_proj_mult_col.shape == (3, 24)
    assert mp.role_of("experts.down_proj_mult_col").value == "multiplier"
    assert mp.role_of("experts.gate_up_proj").value == "matrix"
    assert torch.equal(model(IDX), plain(IDX))
    assert [k for k in model.state_dict() if "_mult_" not in k] == list(plain.state_dict())


def test_scalar_placement_on_experts_has_one_scalar_per_expert():
    model = ToyMoE()
    P.parametrize(model, {"experts": "s"})
    assert model.experts.gate_up_proj_mult_scalar.shape == (3,)
    assert model.experts.down_proj_mult_scalar.shape == (3,)


def test_reading_the_parameter_returns_w_eff_per_expert():
    model = ToyMoE()
    mp = P.parametrize(model, {"experts": "src"})
    perturb_multipliers(mp)
    ex = model.experts
    w = P.raw_weight(ex, "down_proj")
    s, r, c = ex.down_proj_mult_scalar, ex.down_proj_mult_row, ex.down_proj_mult_col
    expected = torch.stack([s[e] * torch.diag(r[e]) @ w[e] @ torch.diag(c[e]) for e in range(3)])
    torch.testing.assert_close(ex.down_proj, expected, rtol=1e-6, atol=1e-6)


def test_fold_of_experts_is_exact_and_restores_the_plain_class_and_keys():
    torch.manual_seed(1)
    model = ToyMoE()
    plain_keys = list(model.state_dict())
    mp = P.parametrize(model)
    perturb_multipliers(mp)
    with torch.no_grad():
        before = model(IDX)
    folded = mp.fold()
    assert type(folded.experts) is ToyExperts
    assert list(folded.state_dict()) == plain_keys
    torch.testing.assert_close(folded(IDX), before, rtol=1e-5, atol=1e-6)


def test_expert_multipliers_get_the_gradient_of_w_eff():
    torch.manual_seed(2)
    model = ToyMoE()
    mp = P.parametrize(model, {"experts": "rc"})
    perturb_multipliers(mp)
    ex = model.experts
    model(IDX).square().mean().backward()
    w, r, c = P.raw_weight(ex, "gate_up_proj"), ex.gate_up_proj_mult_row, ex.gate_up_proj_mult_col
    # dL/dW_eff from the same loss on a plain copy whose weight is the current W_eff
    plain = ToyMoE()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if "_mult_" not in k}, strict=True)
    with torch.no_grad():
        plain.experts.gate_up_proj.copy_(ex.gate_up_proj)
        plain.experts.down_proj.copy_(ex.down_proj)
    plain(IDX).square().mean().backward()
    g_eff = plain.experts.gate_up_proj.grad  # [E, m, n]
    torch.testing.assert_close(w.grad, g_eff * r[:, :, None] * c[:, None, :], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(r.grad, (g_eff * w * c[:, None, :]).sum(-1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(c.grad, (g_eff * w * r[:, :, None]).sum(-2), rtol=1e-4, atol=1e-6)


def test_plain_checkpoint_loads_strict_with_expert_multipliers_set_to_one():
    torch.manual_seed(3)
    plain = ToyMoE()
    model = ToyMoE()
    mp = P.parametrize(model)
    perturb_multipliers(mp)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert torch.equal(model.experts.down_proj_mult_row, torch.ones(3, 16))
    assert torch.equal(model(IDX), plain(IDX))


def test_deepcopy_and_pickle_keep_every_multiplied_parameter():
    torch.manual_seed(4)
    model = ToyMoE()
    mp = P.parametrize(model)
    perturb_multipliers(mp)
    for clone in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        assert type(clone.experts) is type(model.experts)
        assert multiplied_params(clone.experts) == ("gate_up_proj", "down_proj")
        assert torch.equal(clone(IDX), model(IDX))
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=False)(IDX), model(IDX))


def test_attach_one_parameter_at_a_time_and_reset():
    ex = ToyExperts(4, 6, 2)
    w_up, w_down = ex.gate_up_proj.detach().clone(), ex.down_proj.detach().clone()
    layout = WeightLayout(1, 2, 0)
    assert attach(ex, Placement(row=True), layout, param="down_proj", fixed=0.5) == ["down_proj_mult_row"]
    assert torch.equal(ex.gate_up_proj, w_up)  # not multiplied: a plain parameter
    assert torch.equal(ex.down_proj, 0.5 * w_down)
    attach(ex, Placement(col=True), layout, param="gate_up_proj")
    assert multiplied_params(ex) == ("down_proj", "gate_up_proj")
    with torch.no_grad():
        ex.down_proj_mult_row.fill_(3.0)
    reset(ex)
    assert torch.equal(ex.down_proj_mult_row, torch.full((2, 4), 0.5))
    fold_module(ex)
    assert type(ex) is ToyExperts and set(dict(ex.named_parameters())) == {"gate_up_proj", "down_proj"}
    assert torch.equal(ex.down_proj, 0.5 * w_down) and torch.equal(ex.gate_up_proj, w_up)


def test_multipliers_of_a_frozen_parameter_are_frozen():
    ex = ToyExperts(4, 6, 2)
    ex.down_proj.requires_grad_(False)
    attach(ex, Placement(row=True, col=True), WeightLayout(1, 2, 0), param="down_proj")
    assert not ex.down_proj_mult_row.requires_grad and not ex.down_proj_mult_col.requires_grad
