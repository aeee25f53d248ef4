"""Fold learnable multipliers into the weights: ``W ← f·s·diag(r)·W·diag(c)``, then drop s, r, c.

After folding, the model's modules, parameter shapes and ``state_dict`` keys are exactly the
plain model's, and its outputs equal the multiplied model's up to float rounding (one extra
multiply per weight element). There is no inference cost left (paper §2).
"""

from __future__ import annotations

import torch.nn as nn

from .multipliers import fold_module, is_multiplied, multiplied_params
from .owners import owners_by_id

__all__ = ["fold", "check_foldable"]


def check_foldable(model: nn.Module) -> list[str]:
    """Names of the multiplied modules of ``model``; raises if one of them cannot be folded.

    A weight shared with another module (tied embedding/head) cannot absorb a multiplier that
    only one of its uses applies: the other use would change. ``parametrize`` never places
    multipliers on tied weights, but a fixed muP output factor on a tied head is such a case.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    by_id = owners_by_id(model)
    names = []
    for name, module in model.named_modules():
        if not is_multiplied(module):
            continue
        for param in multiplied_params(module):
            shared = [o.fqn for o in by_id[id(module._parameters[param])]]
            if len(shared) > 1:
                raise ValueError(
                    f"cannot fold {name!r}: its {param!r} is shared as {shared}, whose other uses do not "
                    f"apply the same factors; untie the weights before folding"
                )
        names.append(name)
    return names


def fold(model: nn.Module) -> nn.Module:
    """Fold every multiplied module of ``model`` in place and return ``model``.

    Raises:
        ValueError: ``model`` has no multipliers (it was never parametrized, or was already
            folded), or a multiplied weight is shared (see :func:`check_foldable`). The model is
            left unchanged in both cases.
    """
    names = check_foldable(model)
    if not names:
        raise ValueError(
            f"{type(model).__name__} carries no multipliers to fold; call parametrization.parametrize(model) first"
        )
    modules = dict(model.named_modules())
    for name in names:
        fold_module(modules[name])
    return model
