"""The named lr-scale rules of optimizers.lr_scale."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from optimizers import LR_SCALE_RULES, lr_scale

fans = st.integers(min_value=1, max_value=1 << 14)


@pytest.mark.parametrize(
    ("rule", "fan_out", "fan_in", "expected"),
    [
        ("spectral", 2048, 512, 2.0),
        ("spectral", 512, 2048, 1.0),  # max(1, ·): a down-projection is not scaled below 1
        ("spectral", 256, 16, 4.0),  # a 256×16×1×1 conv flattened to 256×16
        ("match_rms_adamw", 512, 2048, 0.2 * math.sqrt(2048)),
        ("match_rms_adamw", 100, 4, 2.0),
        ("none", 7, 3, 1.0),
    ],
)
def test_lr_scale_table(rule: str, fan_out: int, fan_in: int, expected: float) -> None:
    assert lr_scale(rule, fan_out, fan_in) == pytest.approx(expected)


@given(fan_out=fans, fan_in=fans, k=st.integers(1, 8))
def test_spectral_depends_only_on_aspect_ratio(fan_out: int, fan_in: int, k: int) -> None:
    assert lr_scale("spectral", k * fan_out, k * fan_in) == pytest.approx(lr_scale("spectral", fan_out, fan_in))
    assert lr_scale("spectral", fan_out, fan_in) >= 1.0


@given(fan_out=fans, fan_in=fans)
def test_match_rms_adamw_is_symmetric_in_fans(fan_out: int, fan_in: int) -> None:
    assert lr_scale("match_rms_adamw", fan_out, fan_in) == lr_scale("match_rms_adamw", fan_in, fan_out)


def test_unknown_rule_and_bad_fans_raise() -> None:
    with pytest.raises(ValueError, match="lr_scale.*'bogus'"):
        lr_scale("bogus", 3, 4)
    with pytest.raises(ValueError, match="fan_in"):
        lr_scale("spectral", 3, 0)
    assert set(LR_SCALE_RULES) == {"spectral", "match_rms_adamw", "none"}
