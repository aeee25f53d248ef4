"""Global gradient-norm clipping that leaves the learnable multipliers out (paper §4.3).

Multiplier gradients sum over a whole row or column of ``W``, so early in training their norm is
large; counted in a global norm they would throttle every other parameter, and rescaled with the
rest they would lose the signal that moves the scale. :func:`clip_grad_norm_` therefore takes the
non-multiplier parameters only; :meth:`parametrization.Parametrization.clip_grad_norm_` picks them.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["clip_grad_norm_"]


def clip_grad_norm_(
    parameters: Iterable[Tensor],
    max_norm: float,
    norm_type: float = 2.0,
    *,
    error_if_nonfinite: bool = False,
    foreach: bool | None = None,
) -> Tensor:
    """Rescale the gradients of ``parameters`` by ``min(1, max_norm / (norm + 1e-6))``.

    ``norm`` is the ``norm_type`` norm of all their gradients together, as in
    ``torch.nn.utils.clip_grad_norm_`` (whose two halves, ``get_total_norm`` and
    ``clip_grads_with_norm_``, do the work, so DTensor gradients under FSDP2 work too).
    Parameters without a gradient are skipped.

    Returns:
        The total norm before clipping (0 when no parameter has a gradient).
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
        raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
    params = [p for p in parameters if p.grad is not None]
    if not params:
        return torch.tensor(0.0)
    total = torch.nn.utils.get_total_norm([p.grad for p in params], norm_type, error_if_nonfinite, foreach)
    torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
    return total
