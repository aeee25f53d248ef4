"""Shape-dependent learning-rate scale for Muon's orthogonalized update.

Muon's update ``O`` has every singular value ≈ 1, so its size depends only on the matrix shape. Each rule
multiplies the group lr by a factor of the layer's ``fan_out`` (output features: dim 0 of a ``Linear``
weight) and ``fan_in`` (input features; ``in·kh·kw`` for a conv kernel), as the group's ``matrix_view``
defines them (:func:`optimizers.matrix_view.matrix_fans`; a transposed weight has the same fans as the
``Linear`` it stands for):

* ``"spectral"`` (default): ``sqrt(max(1, fan_out / fan_in))`` — Keller Jordan's rule, torch.optim.Muon's
  ``"original"``. Depends only on the aspect ratio, so one lr transfers across width.
* ``"match_rms_adamw"``: ``0.2 · sqrt(max(fan_out, fan_in))`` — Moonlight (arXiv 2502.16982 §2.2): gives
  the update an element RMS of ≈ 0.2, like AdamW's, so Muon can reuse AdamW's lr and weight decay.
* ``"none"``: ``1``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

__all__ = ["LR_SCALE_RULES", "lr_scale", "lr_scale_match_rms_adamw", "lr_scale_none", "lr_scale_spectral"]


def lr_scale_spectral(fan_out: int, fan_in: int) -> float:
    """``sqrt(max(1, fan_out / fan_in))``."""
    return math.sqrt(max(1.0, fan_out / fan_in))


def lr_scale_match_rms_adamw(fan_out: int, fan_in: int) -> float:
    """``0.2 · sqrt(max(fan_out, fan_in))``."""
    return 0.2 * math.sqrt(max(fan_out, fan_in))


def lr_scale_none(fan_out: int, fan_in: int) -> float:
    """``1``."""
    return 1.0


LR_SCALE_RULES: dict[str, Callable[[int, int], float]] = {
    "spectral": lr_scale_spectral,
    "match_rms_adamw": lr_scale_match_rms_adamw,
    "none": lr_scale_none,
}
"""Rule name → ``f(fan_out, fan_in) -> float``."""


def lr_scale(rule: str, fan_out: int, fan_in: int) -> float:
    """The lr factor of the named rule for an orthogonalized ``fan_out × fan_in`` matrix."""
    if rule not in LR_SCALE_RULES:
        raise ValueError(f"lr_scale must be one of {sorted(LR_SCALE_RULES)}, got {rule!r}")
    if fan_out < 1 or fan_in < 1:
        raise ValueError(f"fan_out and fan_in must be >= 1, got fan_out={fan_out}, fan_in={fan_in}")
    return LR_SCALE_RULES[rule](fan_out, fan_in)
