"""The module-side mechanism: identity at init, checkpoints, copies, compile, autocast, layouts."""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import parametrization as P
import parametrization.roles as roles_module
from parametrization.multipliers import set_compute
from tests.parametrization._helpers import IDX, perturb_multipliers as _perturb
from tests.parametrization._models import Conv1D, ConvNet, GPT2Like, TinyLM, mlp


@settings(max_examples=10)
@given(st.sampled_from(["vector", "scalar"]), st.sampled_from(["auto", "weight", "activation"]), st.integers(0, 100))
def test_fresh_parametrized_model_is_bit_identical_to_plain(placement, compute, seed):
    torch.manual_seed(seed)
    model = TinyLM()
    plain = copy.deepcopy(model)
    P.parametrize(model, placement, compute=compute)
    assert torch.equal(model(IDX), plain(IDX))


def test_parameter_and_state_dict_keys_of_the_weights_are_unchanged():
    model = TinyLM()
    plain_keys = list(model.state_dict())
    mp = P.parametrize(model)
    keys = list(model.state_dict())
    assert [k for k in keys if "weight_mult" not in k] == plain_keys
    assert {k for k in keys if "weight_mult" in k} == {n for n, r in mp.roles.items() if r == "multiplier"}
    assert isinstance(model.blocks[0].attn.q, nn.Linear)
    assert model.blocks[0].attn.q._parameters["weight"] is P.raw_weight(model.blocks[0].attn.q)


def test_state_dict_round_trip_restores_outputs():
    torch.manual_seed(1)
    a = TinyLM()
    mp = P.parametrize(a)
    _perturb(mp)
    b = TinyLM()
    P.parametrize(b)
    b.load_state_dict(a.state_dict(), strict=True)
    assert torch.equal(a(IDX), b(IDX))


def test_plain_checkpoint_loads_strictly_and_sets_multipliers_to_one():
    plain = TinyLM()
    model = TinyLM()
    mp = P.parametrize(model)
    _perturb(mp)
    model.load_state_dict(plain.state_dict(), strict=True)
    assert all(torch.equal(p, torch.ones_like(p)) for p in mp.multiplier_parameters())
    assert torch.equal(model(IDX), plain(IDX))


def test_deepcopy_and_pickle_keep_multipliers_and_outputs():
    model = TinyLM()
    mp = P.parametrize(model)
    _perturb(mp)
    expected = model(IDX)
    clone = copy.deepcopy(model)
    assert type(clone.blocks[0].attn.q) is type(model.blocks[0].attn.q)
    assert torch.equal(clone(IDX), expected)
    with torch.no_grad():
        clone.blocks[0].attn.q.weight_mult_row.mul_(2)
    assert torch.equal(model(IDX), expected)  # independent copy
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    assert torch.equal(loaded(IDX), expected)
    mp_copy = copy.deepcopy(mp)
    assert mp_copy.roles == mp.roles and mp_copy.model is not model


def test_parametrized_forward_compiles_without_graph_breaks():
    import torch._dynamo

    torch._dynamo.reset()
    model = TinyLM(n_layer=1)
    mp = P.parametrize(model)
    _perturb(mp)
    explanation = torch._dynamo.explain(model)(IDX)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(IDX), model(IDX))


def test_bf16_autocast_runs_forward_and_backward_close_to_fp32():
    model = TinyLM()
    mp = P.parametrize(model)
    _perturb(mp)
    ref = model(IDX)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(IDX)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.1, atol=0.1)
    out.float().square().mean().backward()
    for p in mp.multiplier_parameters():
        assert p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()


@given(st.integers(0, 100))
def test_embedding_activation_and_weight_side_agree(seed):
    torch.manual_seed(seed)
    model = TinyLM()
    mp = P.parametrize(model)
    _perturb(mp, seed)
    outs = []
    for compute in ("weight", "activation"):
        set_compute(model.wte, compute)
        outs.append(model.wte(IDX))
    torch.testing.assert_close(outs[0], outs[1])


def test_conv_layouts_put_rows_on_output_channels():
    net = ConvNet()
    P.parametrize(net)
    assert net.conv1.weight_mult_row.shape == (4,) and net.conv1.weight_mult_col.shape == (3,)
    assert net.conv2.weight_mult_row.shape == (8,) and net.conv2.weight_mult_col.shape == (2,)  # groups=2
    assert net.up.weight_mult_row.shape == (4,) and net.up.weight_mult_col.shape == (8,)  # transposed conv
    assert not hasattr(net.fc, "weight_mult_row")  # the head


def test_transposed_conv1d_gets_rows_on_its_second_axis(monkeypatch):
    monkeypatch.setattr(roles_module, "_LAYOUTS", dict(roles_module._LAYOUTS))
    P.register_layout(Conv1D, row_dim=1, col_dim=0)
    model = GPT2Like()
    plain = copy.deepcopy(model)
    idx = torch.randint(0, 20, (2, 3))
    mp = P.parametrize(model)
    assert model.c_fc.weight_mult_row.shape == (32,) and model.c_fc.weight_mult_col.shape == (8,)
    assert "wte.weight" not in mp.placements  # tied head/embedding: no multipliers
    assert torch.equal(model(idx), plain(idx))
    with torch.no_grad():
        model.c_fc.weight_mult_row.uniform_(0.5, 1.5)
    x = torch.randn(3, 8)
    torch.testing.assert_close(
        model.c_fc(x), x @ (P.raw_weight(model.c_fc) * model.c_fc.weight_mult_row) + model.c_fc.bias
    )


def test_mlp_with_scalar_multipliers_trains():
    model = mlp()
    mp = P.parametrize(model, "scalar")
    opt = torch.optim.AdamW(mp.param_groups("adamw", lr=1e-2))
    x, y = torch.randn(32, 8), torch.randn(32, 4)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = (model(x) - y).pow(2).mean()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]
    assert any(not torch.equal(p, torch.ones_like(p)) for p in mp.multiplier_parameters())


def test_set_compute_rejects_plain_modules_and_bad_modes():
    with pytest.raises(ValueError, match="carries no multipliers"):
        set_compute(nn.Linear(2, 2), "weight")
    model = mlp()
    P.parametrize(model)
    with pytest.raises(ValueError, match="compute"):
        set_compute(model[0], "sideways")  # type: ignore[arg-type]


@pytest.mark.parametrize("kwargs", [dict(padding_idx=0), dict(scale_grad_by_freq=True), dict()])
def test_embedding_gradients_match_the_weight_side_formula(kwargs):
    torch.manual_seed(0)
    emb = nn.Embedding(10, 4, **kwargs)
    model = nn.Sequential(emb, nn.Linear(4, 3))
    mp = P.parametrize(model)
    _perturb(mp)
    idx = torch.tensor([[0, 1, 1, 3, 0, 9]])
    grads = []
    for compute in ("activation", "weight"):
        set_compute(emb, compute)
        model.zero_grad()
        model(idx).square().sum().backward()
        grads.append([p.grad.clone() for p in (P.raw_weight(emb), emb.weight_mult_row, emb.weight_mult_col)])
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b)


def test_meta_device_model_materializes_with_reset_multipliers():
    plain = TinyLM()
    placement = {"*.q": "rc", "lm_head": "s"}
    with torch.device("meta"):
        model = TinyLM()
    mp = P.parametrize(model, placement, base_width=8)  # width 16: lm_head's s starts at 1/2
    assert mp.multiplier_parameters()[0].is_meta
    model.to_empty(device="cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if mp.roles[name] != "multiplier":
                p.copy_(plain.state_dict()[name])
            else:
                p.fill_(float("nan"))  # what to_empty may leave behind
    mp.reset_multipliers()
    assert torch.equal(model.lm_head.weight_mult_scalar, torch.tensor([0.5]))
    reference = copy.deepcopy(plain)
    P.parametrize(reference, placement, base_width=8)
    assert torch.equal(model(IDX), reference(IDX))
