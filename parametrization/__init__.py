"""Learnable multipliers and per-role optimizer rules for any ``nn.Module``.

Usage::

    import parametrization as P
    from optimizers import Muon

    mp = P.parametrize(model, multipliers="vector")   # in place; returns a Parametrization
    opt = Muon(mp.param_groups(optimizer="muon", lr=3e-3, weight_decay=0.1))
    ...
    loss.backward()
    mp.clip_grad_norm_(1.0)    # global norm without the multipliers; their grads are not rescaled
    opt.step()
    ...
    plain = mp.fold()          # multipliers merged into the weights: the plain model again

* :func:`parametrize` gives every parameter a :class:`Role` (``embedding``, ``head``, ``matrix``,
  ``vector``, ``multiplier``; :mod:`parametrization.roles`), inserts
  ``W_eff = s·diag(r)·W·diag(c)`` (Velikanov et al., arXiv 2601.04890) into the weights its
  placement chooses (:mod:`parametrization.placement`, :mod:`parametrization.multipliers`), and with
  ``base_width=`` applies the muP width rules (:mod:`parametrization.mup`).
* :meth:`Parametrization.param_groups` builds the optimizer groups from the rule table
  (:mod:`parametrization.rules`): matrices → Muon (or AdamW with lr/m under muP), everything
  else → AdamW, multipliers with their own lr and weight decay 2e-3; Muon groups carry their
  ``lr_scale`` and ``matrix_view``, every group its ``param_names``. A group with
  ``algorithm="muon"`` must not be handed to ``torch.optim.AdamW``, which would silently accept it.
* The parametrized model keeps the plain model's module tree and ``state_dict`` keys (plus the
  multipliers), loads plain checkpoints (multipliers set to 1), and works under ``deepcopy``,
  ``torch.compile`` (no graph break), bf16 autocast and FSDP2.
* :func:`coord_check` runs a muP coordinate check over widths.
"""

from .compiled_linear import compiled_linear_enabled, use_compiled_linear
from .coord_check import CoordCheckResult, coord_check
from .effective_weight import effective_weight
from .fold import fold
from .multipliers import is_multiplied, raw_weight, set_compute
from .placement import Placement
from .parametrize import Parametrization, parametrize
from .roles import Role, WeightLayout, detect_roles, register_layout, register_role
from . import layouts  # registers the built-in layouts and roles of known model families
from .layouts import symmetry_free

__all__ = [
    "parametrize",
    "Parametrization",
    "Role",
    "Placement",
    "WeightLayout",
    "detect_roles",
    "register_layout",
    "register_role",
    "layouts",
    "symmetry_free",
    "effective_weight",
    "fold",
    "is_multiplied",
    "raw_weight",
    "set_compute",
    "use_compiled_linear",
    "compiled_linear_enabled",
    "coord_check",
    "CoordCheckResult",
]
