"""Learnable multipliers and per-role optimizer rules for any ``nn.Module``.

``mp = parametrize(model, multipliers="vector")`` inserts ``W_eff = s·diag(r)·W·diag(c)`` into
the model's matrix layers (Velikanov et al., arXiv 2601.04890) and returns a
:class:`Parametrization` with ``param_groups``, ``clip_grad_norm_``, ``fold``, ``summary`` and
``roles``. ``coord_check`` runs a muP coordinate check over widths.
"""

from .coord_check import CoordCheckResult, coord_check
from .effective_weight import effective_weight
from .fold import fold
from .multipliers import Placement, is_multiplied, raw_weight, set_compute
from .parametrize import Parametrization, parametrize
from .roles import Role, WeightLayout, detect_roles, register_layout

__all__ = [
    "parametrize",
    "Parametrization",
    "Role",
    "Placement",
    "WeightLayout",
    "detect_roles",
    "register_layout",
    "effective_weight",
    "fold",
    "is_multiplied",
    "raw_weight",
    "set_compute",
    "coord_check",
    "CoordCheckResult",
]
