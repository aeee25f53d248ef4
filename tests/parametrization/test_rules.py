"""param_groups: the rule table, overrides, grouping invariants; clip_grad_norm_."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import parametrization as P
from tests.parametrization._models import Conv1D, ConvNet, GPT2Like, TinyLM, ToyMoE, mlp


def _by_role(groups):
    out = {}
    for g in groups:
        out.setdefault(g["role"], []).append(g)
    return out


@given(st.sampled_from(["vector", "scalar", "none"]), st.sampled_from(["muon", "adamw"]), st.booleans(), st.integers(1, 3))
def test_groups_partition_parameters_and_keep_non_matrices_off_muon(placement, optimizer, tied, n_layer):
    model = TinyLM(n_layer=n_layer, tied=tied)
    mp = P.parametrize(model, placement)
    groups = mp.param_groups(optimizer, lr=0.02, weight_decay=0.1)
    seen = [id(p) for g in groups for p in g["params"]]
    assert len(seen) == len(set(seen)) == len(list(model.parameters()))  # every param in exactly one group
    keys = {(g["role"], g["algorithm"], g["lr"], g["weight_decay"], g["betas"], g["eps"]) for g in groups}
    assert len(keys) == len(groups)  # identical settings share a group
    assert len(groups) <= 5
    for g in groups:
        base = {"params", "param_names", "algorithm", "lr", "weight_decay", "betas", "eps", "role"}
        assert set(g) == (base | {"lr_scale", "matrix_view"} if g["algorithm"] == "muon" else base)
        assert g["param_names"] == [n for p in g["params"] for n, q in model.named_parameters() if q is p]
        if g["algorithm"] == "muon":
            assert g["role"] == "matrix" and all(p.ndim >= 2 for p in g["params"])
            assert g["lr_scale"] == "match_rms_adamw" and g["matrix_view"] == "out_in"
        if optimizer == "adamw":
            assert g["algorithm"] == "adamw"
    n_mult = sum(p.numel() for g in groups if g["role"] == "multiplier" for p in g["params"])
    assert n_mult == sum(p.numel() for p in mp.multiplier_parameters())
    expected = 0
    for fqn, pl in mp.placements.items():
        w = dict(model.named_parameters())[fqn]
        expected += (w.shape[0] if pl.row else 0) + (w.shape[1] if pl.col else 0) + (1 if pl.scalar else 0)
    assert n_mult == expected


def test_default_table():
    mp = P.parametrize(TinyLM())
    g = _by_role(mp.param_groups("muon", lr=0.02, weight_decay=0.1, adamw_lr=3e-3, multiplier_lr=1e-2))
    assert [(x["algorithm"], x["lr"], x["weight_decay"]) for x in g["matrix"]] == [("muon", 0.02, 0.1)]
    assert [(x["algorithm"], x["lr"], x["weight_decay"]) for x in g["embedding"]] == [("adamw", 3e-3, 0.1)]
    assert [(x["algorithm"], x["lr"], x["weight_decay"]) for x in g["head"]] == [("adamw", 3e-3, 0.1)]
    assert [(x["algorithm"], x["lr"], x["weight_decay"]) for x in g["vector"]] == [("adamw", 3e-3, 0.0)]
    assert [(x["algorithm"], x["lr"], x["weight_decay"]) for x in g["multiplier"]] == [("adamw", 1e-2, 2e-3)]
    d = _by_role(mp.param_groups("adamw", lr=1e-3))
    assert d["multiplier"][0]["lr"] == 1e-3 and d["vector"][0]["lr"] == 1e-3  # defaults follow lr


def test_head_gets_no_multiplier_under_vector_placement():
    mp = P.parametrize(TinyLM())
    assert "lm_head.weight" not in mp.placements
    assert not any(n.startswith("lm_head.weight_mult") for n in mp.roles)


def test_overrides_by_role_and_glob():
    mp = P.parametrize(TinyLM())
    groups = mp.param_groups(
        "muon", lr=0.02,
        rules={"vector": {"lr": 1e-4}, "*.mlp.down.weight": {"algorithm": "adamw", "lr_factor": 0.5, "betas": (0.8, 0.9)}},
    )
    g = _by_role(groups)
    assert g["vector"][0]["lr"] == 1e-4
    down = [x for x in g["matrix"] if x["algorithm"] == "adamw"]
    assert len(down) == 1 and len(down[0]["params"]) == 2 and down[0]["lr"] == 0.01 and down[0]["betas"] == (0.8, 0.9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(optimizer="sgd"), "optimizer"),
        (dict(lr=-1.0), "lr"),
        (dict(rules={"*.nothing": {"lr": 1.0}}), "matches no"),
        (dict(rules={"vector": {"momentum": 0.9}}), "unknown setting"),
        (dict(rules={"multiplier": {"algorithm": "muon"}}), "only matrices"),
        (dict(rules={"head": {"algorithm": "muon"}}), "only matrices"),
        (dict(optimizer="adamw", rules={"matrix": {"algorithm": "muon"}}), "AdamW-only"),
        (dict(betas=(0.9, 1.5)), "betas"),
    ],
)
def test_bad_param_group_arguments_raise(kwargs, match):
    mp = P.parametrize(TinyLM())
    with pytest.raises(ValueError, match=match):
        mp.param_groups(**{"lr": 0.02, **kwargs})


def test_groups_work_with_torch_adamw_and_sgd():
    model = TinyLM()
    mp = P.parametrize(model)
    opt = torch.optim.AdamW(mp.param_groups("adamw", lr=1e-3))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randint(0, 32, (2, 5))).square().mean().backward()
    opt.step()
    assert all(not torch.equal(before[n], p) for n, p in model.named_parameters() if p.grad is not None)
    groups = mp.param_groups("adamw", lr=1e-3, weight_decay=0.0, rules={"vector": {"lr": 1e-2}})
    sgd = torch.optim.SGD(groups, lr=1.0)
    before = {id(p): p.detach().clone() for p in model.parameters()}
    sgd.step()  # plain SGD: p ← p − lr·grad with each group's own lr
    for g in groups:
        for p in g["params"]:
            torch.testing.assert_close(p, before[id(p)] - g["lr"] * p.grad)
    assert {g["role"]: g["lr"] for g in sgd.param_groups}["vector"] == 1e-2


def _grads(model: nn.Module, seed: int) -> None:
    torch.manual_seed(seed)
    model.zero_grad()
    model(torch.randint(0, 32, (2, 6))).square().mean().backward()


@settings(max_examples=8)
@given(st.integers(0, 1000), st.floats(1e-3, 1.0))
def test_inflating_a_multiplier_grad_changes_neither_clip_coefficient_nor_other_updates(seed, max_norm):
    torch.manual_seed(seed)
    model = TinyLM()
    mp = P.parametrize(model)
    _grads(model, seed)
    mult = mp.multiplier_parameters()[seed % len(mp.multiplier_parameters())]
    ref_total = torch.nn.utils.get_total_norm([p.grad for n, p in model.named_parameters() if mp.roles[n] != "multiplier"])
    mult.grad.mul_(1e6)
    inflated = mult.grad.clone()
    others = {n: p.grad.clone() for n, p in model.named_parameters() if mp.roles[n] != "multiplier"}
    total = mp.clip_grad_norm_(max_norm)
    torch.testing.assert_close(total, ref_total)
    coef = min(1.0, max_norm / (ref_total.item() + 1e-6))
    for n, p in model.named_parameters():
        if mp.roles[n] != "multiplier":
            torch.testing.assert_close(p.grad, others[n] * coef)
    assert torch.equal(mult.grad, inflated)  # not rescaled


def test_clip_rejects_bad_max_norm():
    mp = P.parametrize(mlp())
    with pytest.raises(ValueError, match="max_norm"):
        mp.clip_grad_norm_(0.0)


def test_summary_lists_every_group_and_the_multiplier_share():
    from rich.console import Console

    mp = P.parametrize(TinyLM())
    table = mp.summary(print_table=False, optimizer="muon", lr=0.02)
    assert table.row_count == len(mp.param_groups("muon", lr=0.02))
    console = Console(width=200, record=True)
    console.print(table)
    text = console.export_text()
    assert "multiplier" in text and "muon" in text
    total = sum(p.numel() for p in mp.model.parameters())
    share = 100 * sum(p.numel() for p in mp.multiplier_parameters()) / total
    assert f"({share:.3f}%)" in text


def test_summary_without_arguments_works_under_mup():
    mp = P.parametrize(TinyLM(d=32), base_width=16)
    assert mp.summary(print_table=False).row_count == len(mp.param_groups("muon", adamw_lr=0.02))


def test_role_entries_apply_before_glob_entries_whatever_the_dict_order():
    mp = P.parametrize(TinyLM())
    for rules in ({"*.mlp.down.weight": {"lr": 1e-4}, "matrix": {"lr": 5e-3}}, {"matrix": {"lr": 5e-3}, "*.mlp.down.weight": {"lr": 1e-4}}):
        lrs = {n: g["lr"] for g in mp.param_groups("adamw", lr=1e-3, rules=rules) for n in g["param_names"]}
        assert lrs["blocks.0.mlp.down.weight"] == 1e-4
        assert lrs["blocks.0.mlp.up.weight"] == 5e-3


def test_a_later_glob_entry_wins_over_an_earlier_one():
    mp = P.parametrize(TinyLM())
    rules = {"*.mlp.*.weight": {"lr": 1e-4, "weight_decay": 0.3}, "*.mlp.down.weight": {"lr": 2e-4}}
    got = {n: (g["lr"], g["weight_decay"]) for g in mp.param_groups("adamw", lr=1e-3, rules=rules) for n in g["param_names"]}
    assert got["blocks.1.mlp.down.weight"] == (2e-4, 0.3) and got["blocks.1.mlp.up.weight"] == (1e-4, 0.3)


def test_defaults_follow_lr_and_every_adamw_group_has_the_documented_betas_and_eps():
    mp = P.parametrize(TinyLM())
    groups = mp.param_groups("muon", lr=0.01)
    got = {g["role"]: (g["algorithm"], g["lr"], g["weight_decay"]) for g in groups}
    assert got == {
        "matrix": ("muon", 0.01, 0.1), "embedding": ("adamw", 0.01, 0.1), "head": ("adamw", 0.01, 0.1),
        "vector": ("adamw", 0.01, 0.0), "multiplier": ("adamw", 0.01, 2e-3),
    }
    assert all((g["betas"], g["eps"]) == ((0.9, 0.95), 1e-8) for g in groups if g["algorithm"] == "adamw")
    assert {g["role"]: g["lr"] for g in mp.param_groups("muon", lr=0.01, adamw_lr=3e-3)}["multiplier"] == 3e-3


def test_muon_groups_carry_match_rms_adamw_by_default_and_the_lr_scale_asked_for():
    mp = P.parametrize(TinyLM())
    assert {g.get("lr_scale") for g in mp.param_groups("muon", lr=0.01) if g["algorithm"] == "muon"} == {"match_rms_adamw"}
    groups = mp.param_groups("muon", lr=0.02, lr_scale="spectral", adamw_lr=3e-3)
    assert {g["lr_scale"] for g in groups if g["algorithm"] == "muon"} == {"spectral"}
    assert all("lr_scale" not in g and "matrix_view" not in g for g in groups if g["algorithm"] == "adamw")


@pytest.mark.parametrize("lr_scale", ["spectral", "none"])
def test_an_lr_scale_other_than_match_rms_adamw_requires_adamw_lr(lr_scale):
    mp = P.parametrize(TinyLM())
    with pytest.raises(ValueError, match="adamw_lr"):
        mp.param_groups("muon", lr=0.02, lr_scale=lr_scale)


@pytest.mark.parametrize("kwargs, match", [(dict(optimizer="adamw", lr_scale="spectral"), "lr_scale"), (dict(lr_scale="muP"), "lr_scale")])
def test_bad_lr_scale_raises(kwargs, match):
    mp = P.parametrize(TinyLM())
    with pytest.raises(ValueError, match=match):
        mp.param_groups(lr=0.02, adamw_lr=1e-3, **kwargs)


def test_old_lr_scale_rules_key_raises_pointing_to_lr_factor():
    mp = P.parametrize(TinyLM())
    with pytest.raises(ValueError, match="lr_factor"):
        mp.param_groups("adamw", lr=1e-3, rules={"vector": {"lr_scale": 0.5}})


def _views(mp) -> dict[str, str]:
    return {n: g["matrix_view"] for g in mp.param_groups("muon", lr=0.02) if g["algorithm"] == "muon" for n in g["param_names"]}


def test_muon_groups_say_how_each_layout_is_read_as_matrices(monkeypatch):
    import parametrization.roles as roles_module

    monkeypatch.setitem(roles_module._LAYOUTS, (Conv1D, "weight"), P.WeightLayout(1, 0))
    assert set(_views(P.parametrize(GPT2Like())).items()) == {("c_fc.weight", "in_out"), ("c_proj.weight", "in_out")}
    assert _views(P.parametrize(ConvNet())) == {"conv1.weight": "conv", "conv2.weight": "conv", "up.weight": "conv_transposed"}
    assert _views(P.parametrize(TinyLM(n_layer=1)))["blocks.0.attn.q.weight"] == "out_in"


def test_parameters_of_different_matrix_views_land_in_different_groups():
    mp = P.parametrize(ToyMoE())
    groups = [g for g in mp.param_groups("muon", lr=0.02) if g["algorithm"] == "muon"]
    assert sorted((g["matrix_view"], tuple(g["param_names"])) for g in groups) == [
        ("batch_out_in", ("experts.gate_up_proj", "experts.down_proj")),
        ("out_in", ("router.weight",)),
    ]


def test_a_matrix_of_unknown_layout_gets_the_shape_rule_view():
    class Raw(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w3 = nn.Parameter(torch.ones(2, 3, 4))
            self.w2 = nn.Parameter(torch.ones(3, 4))

    mp = P.parametrize(Raw(), roles={"w*": "matrix"})
    assert _views(mp) == {"w3": "batch_out_in", "w2": "out_in"}
