"""Multiplicative symmetries of the multipliers, and the weight decay that keeps them from drifting."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from hypothesis import given, settings
from hypothesis import strategies as st

import optimizers
import parametrization as P
from tests.parametrization._helpers import IDX, perturb_multipliers
from tests.parametrization._models import MLP, Attention, TinyLM

seeds = st.integers(0, 2**31 - 1)


def _qk_attention(seed: int, d: int = 8, n_head: int = 2) -> Attention:
    torch.manual_seed(seed)
    att = Attention(d, n_head)
    P.parametrize(nn.Sequential(att), {"*.q": "r", "*.k": "r"})
    with torch.no_grad():
        att.q.weight_mult_row.uniform_(0.5, 1.5)
        att.k.weight_mult_row.uniform_(0.5, 1.5)
    return att


def _scale_qk(att: Attention, alpha: torch.Tensor) -> None:
    """r_Q ← α ⊙ r_Q, r_K ← r_K / α, α per output dimension (the same for every head)."""
    n_head = att.n_head
    with torch.no_grad():
        att.q.weight_mult_row.mul_(alpha.repeat(n_head))
        att.k.weight_mult_row.div_(alpha.repeat(n_head))


@given(seeds, st.floats(0.2, 5.0))
def test_qk_row_multipliers_scaled_by_alpha_per_head_leave_scores_unchanged(seed, a):
    att = _qk_attention(seed)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(seed))
    before = att.scores(x)
    _scale_qk(att, torch.full((att.hd,), a))
    torch.testing.assert_close(att.scores(x), before, rtol=1e-4, atol=1e-5)


@given(seeds, st.lists(st.floats(0.2, 5.0), min_size=2, max_size=2))
def test_qk_scaling_equal_within_each_rotary_pair_leaves_scores_unchanged(seed, pair_alphas):
    att = _qk_attention(seed)  # head_dim 4: rotary pairs (0, 2) and (1, 3)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(seed))
    before = att.scores(x)
    alpha = torch.tensor(pair_alphas * 2)  # dims i and i + hd/2 share a factor
    _scale_qk(att, alpha)
    torch.testing.assert_close(att.scores(x), before, rtol=1e-4, atol=1e-5)


@given(seeds, st.floats(1.5, 5.0))
def test_qk_scaling_unequal_within_a_rotary_pair_changes_scores(seed, a):
    att = _qk_attention(seed)
    x = torch.randn(2, 5, 8, generator=torch.Generator().manual_seed(seed))
    before = att.scores(x)
    _scale_qk(att, torch.tensor([a, 1.0, 1.0, 1.0]))  # dim 0 scaled, its partner dim 2 not
    assert not torch.allclose(att.scores(x), before, rtol=1e-3, atol=1e-4)


@given(seeds, st.floats(0.2, 5.0))
def test_up_rows_and_down_columns_trade_scale(seed, a):
    torch.manual_seed(seed)
    mlp = MLP(4)
    P.parametrize(nn.Sequential(mlp, nn.Linear(4, 2)), {"*.up": "r", "*.down": "c"})
    x = torch.randn(3, 4)
    before = mlp(x)
    with torch.no_grad():
        mlp.up.weight_mult_row.mul_(a)
        mlp.down.weight_mult_col.div_(a)
    torch.testing.assert_close(mlp(x), before, rtol=1e-4, atol=1e-5)


class _SharedKeyScores(nn.Module):
    """Four query heads share one key head (as in GQA): score_h = <r_Q,h ⊙ W_Q,h x, r_K ⊙ W_K x>.

    Only r_Q,h ⊙ r_K enters the output, so (r_Q, r_K) → (α r_Q, r_K/α) is an exact symmetry.
    """

    heads = 4

    def __init__(self, d: int) -> None:
        super().__init__()
        self.d = d
        self.q = nn.Linear(d, self.heads * d, bias=False)
        self.k = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.q(x).view(-1, self.heads, self.d) * self.k(x).unsqueeze(1)).sum(-1)


def _drift_trace(multiplier_weight_decay: float, steps: int = 500, d: int = 4, seed: int = 0) -> list[float]:
    torch.manual_seed(seed)
    model = _SharedKeyScores(d)
    teacher = torch.randn(model.heads, d, d)
    mp = P.parametrize(model, {"q": "r", "k": "r"})
    groups = mp.param_groups("adamw", lr=0.05, weight_decay=0.0, multiplier_weight_decay=multiplier_weight_decay)
    # decay="independent" applies p ← p·(1 − wd) per step, so the decay time 1/wd = 500 steps fits
    # in a test; the paper's lr-coupled λ acts over its ~10⁵-step runs in the same way.
    opt = optimizers.AdamW(groups, decay="independent")
    xs, noise = torch.randn(steps, 8, d), torch.randn(steps, 8, model.heads)
    trace = []
    for t in range(steps):
        target = torch.einsum("bi,hij,bj->bh", xs[t], teacher, xs[t]) + 0.5 * noise[t]
        loss = (model(xs[t]) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t % 100 == 99:
            rq, rk = model.q.weight_mult_row, model.k.weight_mult_row
            trace.append(abs((rq.pow(2).mean().sqrt() / rk.pow(2).mean().sqrt()).log().item()))
    return trace


@pytest.mark.slow
def test_qk_multiplier_ratio_drifts_without_weight_decay_and_stays_bounded_with_2e_3():
    free = _drift_trace(0.0)
    decayed = _drift_trace(2e-3)
    assert free[-1] > 0.25 and free[-1] > free[0] + 0.15, free  # log(|r_Q|/|r_K|) keeps drifting
    assert max(decayed) < 0.5 * free[-1], (decayed, free)


_LAYERS = ["wte", "blocks.0.attn.q", "blocks.0.attn.o", "blocks.0.mlp.up", "blocks.0.mlp.down", "lm_head"]


@settings(max_examples=25, deadline=None)
@given(seeds, st.sampled_from(_LAYERS), st.sampled_from([("s", "r"), ("s", "c"), ("r", "c")]), st.floats(0.1, 10.0), st.sampled_from(["weight", "activation"]))
def test_trading_scale_between_two_multipliers_of_one_layer_leaves_the_output_unchanged(seed, layer, pair, a, compute):
    """W_eff = s·diag(r)·W·diag(c) is unchanged by s→a·s, r→r/a; s→a·s, c→c/a; r→a·r, c→c/a."""
    torch.manual_seed(seed)
    model = TinyLM(n_layer=1)
    mp = P.parametrize(model, {layer: "src"}, compute=compute)
    perturb_multipliers(mp, seed)
    module = model.get_submodule(layer)
    before = model(IDX)
    up, down = (getattr(module, {"s": "weight_mult_scalar", "r": "weight_mult_row", "c": "weight_mult_col"}[k]) for k in pair)
    with torch.no_grad():
        up.mul_(a)
        down.div_(a)
    torch.testing.assert_close(model(IDX), before, rtol=1e-4, atol=1e-5)


@settings(max_examples=15, deadline=None)
@given(seeds, st.lists(st.floats(0.1, 10.0), min_size=16, max_size=16))
def test_value_rows_and_output_columns_trade_scale_per_feature(seed, alphas):
    """Attention is linear in V: r_V → α⊙r_V, c_O → c_O/α (per feature) leaves the block's output unchanged."""
    torch.manual_seed(seed)
    model = TinyLM(n_layer=1)
    mp = P.parametrize(model, {"*.attn.v": "r", "*.attn.o": "c"})
    perturb_multipliers(mp, seed)
    before = model(IDX)
    alpha = torch.tensor(alphas)
    with torch.no_grad():
        model.blocks[0].attn.v.weight_mult_row.mul_(alpha)
        model.blocks[0].attn.o.weight_mult_col.div_(alpha)
    torch.testing.assert_close(model(IDX), before, rtol=1e-4, atol=1e-5)
