"""fold(): exactness, idempotence, plain structure, and its errors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import parametrization as P
from tests.parametrization._helpers import IDX, perturb_multipliers as _perturb
from tests.parametrization._models import ConvNet, TinyLM, mlp


@settings(max_examples=10)
@given(st.sampled_from(["vector", "scalar", {"*.q": "r", "*.o": "rc", "*.mlp.gate": "r", "*.mlp.down": "src", "wte": "c"}]), st.booleans(), st.integers(0, 100))
def test_fold_matches_unfolded_outputs_and_plain_structure(placement, tied, seed):
    torch.manual_seed(seed)
    model = TinyLM(tied=tied)
    plain = copy.deepcopy(model)
    if tied and isinstance(placement, dict):
        placement = {k: v for k, v in placement.items() if k != "wte"}  # no multipliers on a tied weight
    mp = P.parametrize(model, placement)
    _perturb(mp, seed)
    expected = model(IDX)
    folded = mp.fold()
    assert folded is model
    torch.testing.assert_close(folded(IDX), expected, rtol=1e-5, atol=1e-6)
    assert list(folded.state_dict()) == list(plain.state_dict())
    assert [(n, p.shape) for n, p in folded.named_parameters()] == [(n, p.shape) for n, p in plain.named_parameters()]
    assert [type(m) for m in folded.modules()] == [type(m) for m in plain.modules()]
    plain.load_state_dict(folded.state_dict(), strict=True)  # a plain model takes the folded weights
    torch.testing.assert_close(plain(IDX), expected, rtol=1e-5, atol=1e-6)


def test_fold_is_idempotent():
    model = TinyLM()
    mp = P.parametrize(model)
    _perturb(mp, 0)
    once = {k: v.clone() for k, v in mp.fold().state_dict().items()}
    twice = mp.fold().state_dict()
    assert once.keys() == twice.keys() and all(torch.equal(once[k], twice[k]) for k in once)
    assert mp.multiplier_parameters() == []
    assert all(g["role"] != "multiplier" for g in mp.param_groups("adamw", lr=1e-3))


def test_fold_of_conv_net_is_exact():
    torch.manual_seed(0)
    net = ConvNet().eval()
    mp = P.parametrize(net)
    _perturb(mp, 1)
    x = torch.randn(2, 3, 6, 6)
    expected = net(x)
    torch.testing.assert_close(mp.fold()(x), expected, rtol=1e-5, atol=1e-6)
    assert all(type(m).__module__.startswith("torch.nn") or m is net for m in net.modules())


def test_fold_of_unparametrized_model_raises_and_leaves_it_unchanged():
    model = mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="no multipliers to fold"):
        P.fold(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_fold_of_tied_head_with_mup_output_factor_raises():
    model = TinyLM(tied=True)
    mp = P.parametrize(model, base_width=8)  # width 16: the head output gets a fixed 1/2
    with pytest.raises(ValueError, match="shared"):
        mp.fold()


def test_mup_output_factor_folds_into_an_untied_head():
    model = TinyLM()
    plain = copy.deepcopy(model)
    mp = P.parametrize(model, "none", base_width=4)  # m = 16 / 4
    expected = model(IDX)
    torch.testing.assert_close(expected, plain.lm_head(plain.norm(_trunk(plain, IDX))) / 4)
    mp.fold()
    torch.testing.assert_close(model(IDX), expected)
    assert type(model.lm_head) is nn.Linear


def _trunk(model: TinyLM, idx: torch.Tensor) -> torch.Tensor:
    x = model.wte(idx)
    for b in model.blocks:
        x = b(x)
    return x


_FOLD_LAYERS = ["wte", "blocks.0.attn.q", "blocks.0.attn.k", "blocks.0.attn.v", "blocks.0.attn.o", "blocks.0.mlp.gate", "blocks.0.mlp.up", "blocks.0.mlp.down", "lm_head"]


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.sampled_from(["s", "r", "c", "sr", "sc", "rc", "src"]), min_size=len(_FOLD_LAYERS), max_size=len(_FOLD_LAYERS)),
    st.integers(0, 2**31 - 1),
    st.sampled_from(["weight", "activation"]),
)
def test_fold_equals_the_parametrized_forward_for_any_placement_and_positive_multipliers(letters, seed, compute):
    torch.manual_seed(seed)
    model = TinyLM(n_layer=1)
    mp = P.parametrize(model, dict(zip(_FOLD_LAYERS, letters)), compute=compute)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.copy_(torch.exp(torch.randn(p.shape, generator=g)))  # any positive value, spread over e^±3
    expected = model(IDX)
    torch.testing.assert_close(mp.fold()(IDX), expected, rtol=1e-4, atol=1e-5)
