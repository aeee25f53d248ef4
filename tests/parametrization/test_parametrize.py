"""parametrize(): bad input raises a clear error and leaves the model unchanged; muP rules."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn as nn

import parametrization as P
from tests.parametrization._helpers import IDX, perturb_multipliers
from tests.parametrization._models import NeoXLike, TinyLM, mlp


def _snapshot(model: nn.Module):
    return [type(m) for m in model.modules()], {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(multipliers="vectors"), ValueError, "not a placement"),
        (dict(multipliers={"*.q": "rx"}), ValueError, "not a placement"),
        (dict(multipliers={"*.nothing": "r"}), ValueError, "matches no"),
        (dict(multipliers={"lm_head": "r"}, tied=True), ValueError, "tied"),
        (dict(multipliers=3), TypeError, "multipliers"),
        (dict(roles={"*.q.weight": "weights"}), ValueError, "not a role"),
        (dict(roles={"*.nothing": "matrix"}), ValueError, "matches no parameter"),
        (dict(compute="gpu"), ValueError, "compute"),
        (dict(base_width=0), ValueError, "base_width"),
        (dict(init_std=0.02), ValueError, "init_std"),
    ],
)
def test_bad_input_raises_and_leaves_model_unchanged(kwargs, error, match):
    tied = kwargs.pop("tied", False)
    model = TinyLM(tied=tied)
    types, state = _snapshot(model)
    with pytest.raises(error, match=match):
        P.parametrize(model, **kwargs)
    new_types, new_state = _snapshot(model)
    assert new_types == types and new_state.keys() == state.keys()
    assert all(torch.equal(state[k], new_state[k]) for k in state)
    P.parametrize(model)  # still parametrizable


def test_parametrizing_twice_raises_and_leaves_model_unchanged():
    model = TinyLM()
    P.parametrize(model)
    types, state = _snapshot(model)
    with pytest.raises(ValueError, match="already parametrized"):
        P.parametrize(model)
    with pytest.raises(ValueError, match="already parametrized"):
        P.parametrize(model, "none")
    assert _snapshot(model)[0] == types and _snapshot(model)[1].keys() == state.keys()


def test_parametrizing_with_none_twice_also_raises():
    model = mlp()
    P.parametrize(model, "none")
    with pytest.raises(ValueError, match="already parametrized"):
        P.parametrize(model, "none")


@pytest.mark.parametrize("width", [16, 64])
def test_mup_adamw_matrices_get_lr_over_m_and_muon_matrices_no_factor(width):
    model = TinyLM(d=width, n_head=2)
    mp = P.parametrize(model, base_width=16)
    m = width / 16
    adamw = {g["role"]: g["lr"] for g in mp.param_groups("adamw", lr=1e-3)}
    assert math.isclose(adamw["matrix"], 1e-3 / m)
    assert adamw["embedding"] == adamw["head"] == adamw["vector"] == adamw["multiplier"] == 1e-3
    with pytest.raises(ValueError, match="adamw_lr"):  # muP's default lr_scale is "spectral"
        mp.param_groups("muon", lr=0.02)
    muon = {g["role"]: (g["lr"], g.get("lr_scale")) for g in mp.param_groups("muon", lr=0.02, adamw_lr=1e-3)}
    assert muon["matrix"] == (0.02, "spectral") and muon["vector"] == (1e-3, None)


def test_mup_output_factor_becomes_initial_value_of_a_learnable_head_multiplier():
    model = TinyLM(d=32)
    mp = P.parametrize(model, {"*.q": "rc", "lm_head": "s"}, base_width=8)
    assert torch.equal(model.lm_head.weight_mult_scalar, torch.tensor([0.25]))
    assert mp.width is not None and mp.width.head == 4.0


def test_base_model_gives_per_matrix_fan_in_ratios():
    model, base = mlp(d_in=8, width=64), mlp(d_in=8, width=16)
    mp = P.parametrize(model, base_width=base)
    assert mp.width.matrices == {"0.weight": 1.0, "2.weight": 4.0}
    lrs = {id(p): g["lr"] for g in mp.param_groups("adamw", lr=1.0) for p in g["params"]}
    assert lrs[id(model[0]._parameters["weight"])] == 1.0 and lrs[id(model[2]._parameters["weight"])] == 0.25


def test_init_std_redraws_hidden_matrices_with_std_over_sqrt_m():
    torch.manual_seed(0)
    model = TinyLM(d=256, n_head=2, n_layer=1)
    emb_before = model.wte.weight.detach().clone()
    P.parametrize(model, base_width=64, init_std=0.02)
    std = P.raw_weight(model.blocks[0].mlp.up).std().item()
    assert abs(std - 0.02 / 2) < 0.1 * 0.01
    assert torch.equal(P.raw_weight(model.wte), emb_before)


def test_handle_reads_fqns_through_wrapper_prefixes():
    model = mlp()
    mp = P.parametrize(model)
    assert mp.role_of("_orig_mod.0.weight_mult_row").value == "multiplier"
    assert mp.role_of("module.2.weight").value == "matrix"
    with pytest.raises(ValueError, match="added after"):
        mp.role_of("new.weight")


def test_optimizers_package_steps_with_built_groups():
    optimizers = pytest.importorskip("optimizers")
    model = TinyLM()
    mp = P.parametrize(model)
    muon = optimizers.Muon(mp.param_groups("muon", lr=0.02, weight_decay=0.1, adamw_lr=1e-3))
    adamw = optimizers.AdamW(mp.param_groups("adamw", lr=1e-3))
    idx = torch.randint(0, 32, (2, 6))
    for opt in (muon, adamw):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        model(idx).square().mean().backward()
        mp.clip_grad_norm_(1.0)
        opt.step()
        assert all(not torch.equal(before[n], p) for n, p in model.named_parameters())
    with pytest.raises(ValueError):
        optimizers.AdamW(mp.param_groups("muon", lr=0.02))  # a Muon group must not run as AdamW


@pytest.mark.parametrize("tied", [False, True])
def test_reference_gpt_roles_identity_and_fold(tied):
    from reference_models import GPT, GPTConfig

    torch.manual_seed(0)
    model = GPT(GPTConfig.preset("tiny", tie_embeddings=tied))
    plain = copy.deepcopy(model)
    idx = torch.randint(0, 256, (2, 16))
    mp = P.parametrize(model)
    assert mp.roles["wte.weight"] == ("head" if tied else "embedding")
    assert mp.roles["lm_head.weight"] == "head"
    for name in ("attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"):
        assert mp.roles[f"blocks.1.{name}.weight"] == "matrix"
        assert mp.placements[f"blocks.1.{name}.weight"] == P.Placement(row=True, col=True)
    assert mp.roles["blocks.0.attn_norm.weight"] == "vector"
    assert torch.equal(model(idx), plain(idx))
    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.uniform_(0.5, 1.5)
    expected = model(idx)
    mp.fold()
    torch.testing.assert_close(model(idx), expected, rtol=1e-5, atol=1e-5)
    assert list(model.state_dict()) == list(plain.state_dict())


@pytest.mark.parametrize("compute", ["weight", "activation"])
@pytest.mark.parametrize("head", ["", "s", "r", "c", "rc", "src"])
def test_mup_scales_the_logits_by_one_over_m_exactly_once_whatever_the_head_multipliers(head, compute):
    torch.manual_seed(0)
    model = TinyLM(d=32)
    plain = copy.deepcopy(model)
    mp = P.parametrize(model, {"*.q": "rc", "lm_head": head or "none"}, base_width=8, compute=compute)
    assert mp.width.head == 4.0
    torch.testing.assert_close(model(IDX), plain(IDX) / 4.0, rtol=1e-5, atol=1e-6)


def _muon_steps(model: nn.Module, mp: P.Parametrization, steps: int = 3) -> None:
    optimizers = pytest.importorskip("optimizers")
    opt = optimizers.Muon(mp.param_groups("muon", lr=0.02, weight_decay=0.1))
    for step in range(steps):
        torch.manual_seed(step)
        opt.zero_grad()
        model(torch.randint(0, 32, (2, 6))).square().mean().backward()
        mp.clip_grad_norm_(1.0)
        opt.step()


def test_a_layer_frozen_before_parametrize_gets_frozen_multipliers_and_keeps_its_w_eff():
    torch.manual_seed(0)
    model = NeoXLike()
    qkv = model.layers[0].attention.query_key_value
    qkv.requires_grad_(False)
    mp = P.parametrize(model)
    assert not qkv.weight_mult_row.requires_grad and not qkv.weight_mult_col.requires_grad
    names = [n for g in mp.param_groups("muon", lr=0.02) for n in g["param_names"]]
    assert not any(n.startswith("layers.0.attention.query_key_value.") for n in names)
    before = qkv.weight.detach().clone()
    other = model.layers[1].attention.query_key_value.weight.detach().clone()
    _muon_steps(model, mp)
    assert torch.equal(qkv.weight, before)
    assert not torch.equal(model.layers[1].attention.query_key_value.weight, other)


def test_a_weight_frozen_after_parametrize_keeps_its_w_eff_because_its_multipliers_leave_the_groups():
    torch.manual_seed(0)
    model = NeoXLike()
    mp = P.parametrize(model)
    qkv = model.layers[0].attention.query_key_value
    P.raw_weight(qkv).requires_grad_(False)  # module.weight is W_eff, a computed tensor
    names = [n for g in mp.param_groups("muon", lr=0.02) for n in g["param_names"]]
    assert "layers.0.attention.query_key_value.weight_mult_row" not in names
    assert "layers.0.attention.query_key_value.bias" in names  # only the frozen weight's own multipliers leave
    before = qkv.weight.detach().clone()
    _muon_steps(model, mp)
    assert torch.equal(qkv.weight, before)


def test_deepcopy_of_the_handle_is_bound_to_a_copy_of_the_model():
    torch.manual_seed(0)
    model = TinyLM()
    mp = P.parametrize(model)
    perturb_multipliers(mp)
    mp2 = copy.deepcopy(mp)
    assert mp2.model is not model and torch.equal(mp2.model(IDX), model(IDX))
    own = {id(p) for p in mp2.model.parameters()}
    assert all(id(p) in own for g in mp2.param_groups("muon", lr=0.02) for p in g["params"])
    assert mp2.roles == mp.roles and mp2.placements == mp.placements
    with torch.no_grad():
        mp2.multiplier_parameters()[0].mul_(2.0)
    assert not torch.equal(mp2.model(IDX), model(IDX))  # independent
    mp2.fold()
    assert P.is_multiplied(model.blocks[0].attn.q) and not P.is_multiplied(mp2.model.blocks[0].attn.q)


def test_parametrizing_a_copy_of_a_parametrized_model_says_to_deepcopy_the_handle():
    model = TinyLM()
    P.parametrize(model)
    with pytest.raises(ValueError, match=r"copy\.deepcopy\(mp\)"):
        P.parametrize(copy.deepcopy(model))
