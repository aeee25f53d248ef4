"""mp.stats(): per-matrix scales against a hand-computed small case, the equilibrium prediction
for each optimizer rule, and a single host transfer."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import optimizers
import parametrization as P
from parametrization.stats import equilibrium_rms, multiplier_scales, update_rms


class _Tiny(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 2)
        self.hidden = nn.Linear(2, 3, bias=False)
        self.head = nn.Linear(3, 4, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(self.emb(idx)))


def _hand_case() -> P.Parametrization:
    model = _Tiny()
    mp = P.parametrize(model, multipliers={"hidden": "rc"})
    with torch.no_grad():
        P.raw_weight(model.hidden).copy_(torch.tensor([[1.0, 0.0], [0.0, 2.0], [2.0, 2.0]]))
        model.hidden.weight_mult_row.copy_(torch.tensor([1.0, 2.0, 0.5]))
        model.hidden.weight_mult_col.copy_(torch.tensor([3.0, 1.0]))
    return mp


def _lin_quantile(sorted_values: list[float], q: float) -> float:
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_stats_match_a_hand_computed_matrix():
    mp = _hand_case()
    s = mp.stats()["hidden.weight"]
    # W_eff = diag(1, 2, 0.5) · [[1, 0], [0, 2], [2, 2]] · diag(3, 1) = [[3, 0], [0, 4], [3, 1]]
    assert s["role"] == "matrix"
    assert s["rms_w"] == pytest.approx(math.sqrt(13 / 6))
    assert s["rms_w_eff"] == pytest.approx(math.sqrt(35 / 6))
    rows = sorted([3.0, 4.0, math.sqrt(10)])
    cols = sorted([math.sqrt(18), math.sqrt(17)])
    assert s["row_norm_spread"] == pytest.approx(_lin_quantile(rows, 0.9) / _lin_quantile(rows, 0.1))
    assert s["col_norm_spread"] == pytest.approx(_lin_quantile(cols, 0.9) / _lin_quantile(cols, 0.1))
    assert (s["mult_row_mean"], s["mult_row_min"], s["mult_row_max"]) == pytest.approx((7 / 6, 0.5, 2.0))
    assert (s["mult_col_mean"], s["mult_col_min"], s["mult_col_max"]) == pytest.approx((2.0, 1.0, 3.0))
    assert s["mult_scale"] == pytest.approx(math.sqrt(5.25 / 3) * math.sqrt(5.0))
    assert "mult_scalar_mean" not in s
    assert math.isnan(s["equilibrium_rms"])  # no optimizer given
    # Weights without multipliers: W_eff is W, no multiplier entries.
    head = mp.stats()["head.weight"]
    assert head["role"] == "head" and head["rms_w"] == head["rms_w_eff"] and "mult_scale" not in head
    assert multiplier_scales(mp.stats()) == pytest.approx({"matrix": math.sqrt(5.25 / 3) * math.sqrt(5.0)})


@pytest.mark.parametrize(
    "optimizer, kwargs, expected",
    [
        ("adamw", {}, math.sqrt(0.02 / (2 * 0.5))),
        ("adamw", {"decay": "independent"}, 0.02 / math.sqrt(2 * 0.5)),
        ("muon", {"lr_scale": "match_rms_adamw"}, 0.2 * math.sqrt(0.02 / (2 * 0.5))),
        # spectral: scale sqrt(3/2) on a 3×2 matrix whose orthogonal update has RMS 1/sqrt(3)
        ("muon", {"lr_scale": "spectral"}, math.sqrt(1.5) / math.sqrt(3) * math.sqrt(0.02 / (2 * 0.5))),
    ],
)
def test_equilibrium_is_read_from_the_weights_current_group(optimizer, kwargs, expected):
    mp = _hand_case()
    if optimizer == "adamw":
        opt = optimizers.AdamW(mp.param_groups(optimizer="adamw", lr=0.02, weight_decay=0.5), **kwargs)
    else:
        opt = optimizers.Muon(mp.param_groups(optimizer="muon", lr=0.02, weight_decay=0.5, adamw_lr=0.02, **kwargs))
    assert mp.stats(opt)["hidden.weight"]["equilibrium_rms"] == pytest.approx(expected)
    for g in opt.param_groups:  # a schedule halving the lr moves the prediction by 1/sqrt(2)
        g["lr"] = g["lr"] / 2
    assert mp.stats(opt.param_groups)["hidden.weight"]["equilibrium_rms"] == pytest.approx(
        expected / (2 if kwargs.get("decay") == "independent" else math.sqrt(2)))


def test_pure_formulas():
    assert equilibrium_rms(0.01, 1.0) == pytest.approx(math.sqrt(0.005))
    assert equilibrium_rms(0.01, 0.0) == math.inf
    assert update_rms("adamw", 10, 1000) == 1.0
    assert update_rms("muon", 64, 256, "match_rms_adamw") == pytest.approx(0.2)
    assert update_rms("muon", 64, 256, "none") == pytest.approx(1 / 16)
    with pytest.raises(ValueError, match="weight_decay"):
        equilibrium_rms(0.01, -1.0)


def test_one_host_transfer_per_call(monkeypatch):
    mp = _hand_case()
    calls = {"item": 0, "tolist": 0}
    item, tolist = torch.Tensor.item, torch.Tensor.tolist

    def counting(name, fn):
        def wrapper(self, *a, **k):
            calls[name] += 1
            return fn(self, *a, **k)
        return wrapper

    monkeypatch.setattr(torch.Tensor, "item", counting("item", item))
    monkeypatch.setattr(torch.Tensor, "tolist", counting("tolist", tolist))
    mp.stats()
    assert calls == {"item": 0, "tolist": 1}
