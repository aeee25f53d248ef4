"""AdamW and Muon as drop-in ``torch.optim`` optimizers, and the Newton–Schulz orthogonalizer."""

from .adamw import AdamW
from .lr_scale import LR_SCALE_RULES, lr_scale
from .matrix_view import MATRIX_VIEWS, matrix_fans
from .muon import Muon
from .newton_schulz import NS_COEFFICIENTS, newton_schulz, newton_schulz_flops
from .orthogonalize import orthogonalize_updates

__all__ = [
    "AdamW",
    "LR_SCALE_RULES",
    "MATRIX_VIEWS",
    "Muon",
    "NS_COEFFICIENTS",
    "lr_scale",
    "matrix_fans",
    "newton_schulz",
    "newton_schulz_flops",
    "orthogonalize_updates",
]
