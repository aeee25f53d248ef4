"""coord_check: activation RMS is flat in width under muP and grows under SP."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import parametrization as P
from parametrization.coord_check import loglog_slope


def _make(width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(16, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10))


def _batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(64, 16, generator=g), torch.randint(0, 10, (64,), generator=g)


@pytest.fixture(scope="module")
def results():
    widths = [64, 256, 1024]
    return {mup: P.coord_check(_make, widths, steps=4, batch=_batch(), mup=mup, lr=1e-2) for mup in (True, False)}


def test_mup_activation_rms_is_flat_in_width(results):
    slopes = results[True].slopes()
    assert set(slopes) == {"0", "1", "2", "3", "4"}
    assert all(abs(s) < 0.15 for s in slopes.values()), slopes


def test_standard_parametrization_hidden_and_output_rms_grow_with_width(results):
    slopes = results[False].slopes()
    assert slopes["4"] > 0.5 and slopes["2"] > 0.3, slopes


def test_at_initialization_both_agree(results):
    for module in results[True].modules:
        if module != "4":  # muP's output factor 1/m already applies at step 0
            assert results[True].rms(module, step=0) == pytest.approx(results[False].rms(module, step=0))


def test_result_serializes_and_tabulates(results):
    data = json.loads(json.dumps(results[True].to_json()))
    assert data["widths"] == [64, 256, 1024] and len(data["records"]) == 3 * 4 * 5
    assert results[True].table().row_count == 5


def test_loglog_slope_recovers_a_power_law():
    assert loglog_slope([1, 2, 4, 8], [3 * x**0.5 for x in [1, 2, 4, 8]]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        loglog_slope([1], [1])


def test_coord_check_rejects_bad_widths():
    with pytest.raises(ValueError, match="widths"):
        P.coord_check(_make, [32], batch=_batch())
