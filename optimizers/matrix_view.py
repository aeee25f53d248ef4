"""How Muon reads a parameter as matrices: the ``matrix_view`` key of a param group.

A view fixes two things: the matrices Newton–Schulz orthogonalizes and the ``(fan_out, fan_in)`` the
lr-scale rule sees. The stored layout cannot always be told from the shape (a 2-D Hugging Face ``Conv1D``
weight is ``(in, out)``; a 3-D tensor is stacked experts or a ``Conv1d`` kernel), so whoever knows the
module says which view applies; :func:`parametrization.ModelParametrization.param_groups` writes it.

=================  ======================  ==============================  ======================
view               stored shape            orthogonalized as               (fan_out, fan_in)
=================  ======================  ==============================  ======================
``out_in``         ``[out, in]``           itself                          ``(out, in)``
``in_out``         ``[in, out]``           itself                          ``(out, in)``
``batch_out_in``   ``[..., out, in]``      ``Π(...)`` matrices ``out×in``  ``(out, in)``
``batch_in_out``   ``[..., in, out]``      ``Π(...)`` matrices ``in×out``  ``(out, in)``
``conv``           ``[out, in, *k]``       one ``out × in·Πk``             ``(out, in·Πk)``
``conv_transposed`` ``[in, out, *k]``      one ``in × out·Πk``             ``(out·Πk, in)``
=================  ======================  ==============================  ======================

Orthogonalizing the stored ``[in, out]`` matrix instead of its transpose is exact: the polar factor (and
Newton–Schulz) commutes with transposition, only the fans differ.

Without the key (``None``) the shape decides (:func:`default_matrix_view`): 2-D → ``out_in``,
3-D → ``batch_out_in``, ≥4-D → ``conv``. A 3-D convolution kernel (``nn.Conv1d``) therefore needs
``matrix_view="conv"`` and a transposed 2-D weight needs ``"in_out"``.

The names are kept in step with ``parametrization.roles.MATRIX_VIEWS`` (``optimizers`` does not import
``parametrization``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

__all__ = ["MATRIX_VIEWS", "as_matrices", "check_matrix_view", "default_matrix_view", "matrix_fans"]

MATRIX_VIEWS = ("out_in", "in_out", "batch_out_in", "batch_in_out", "conv", "conv_transposed")

_MIN_NDIM = {"out_in": 2, "in_out": 2, "batch_out_in": 3, "batch_in_out": 3, "conv": 3, "conv_transposed": 3}
_MAX_NDIM = {"out_in": 2, "in_out": 2}
_NO_VIEW = "nothing: it is not a matrix (use algorithm='adamw')"


def default_matrix_view(ndim: int) -> str:
    """The view of a parameter whose group sets no ``matrix_view``: 2-D ``out_in``, 3-D ``batch_out_in``,
    ≥4-D ``conv``."""
    if ndim < 2:
        raise ValueError(f"Muon needs a parameter with at least 2 dimensions, got {ndim}-D")
    return "out_in" if ndim == 2 else "batch_out_in" if ndim == 3 else "conv"


def check_matrix_view(view: str | None, ndim: int, label: str) -> None:
    """Raise ``ValueError`` unless ``view`` is ``None`` or a :data:`MATRIX_VIEWS` entry that fits ``ndim``.

    ``label`` names the parameter in the message.
    """
    if view is None:
        return
    if not isinstance(view, str) or view not in MATRIX_VIEWS:
        raise ValueError(f"Invalid matrix_view: {view!r} for {label} (allowed: {', '.join(map(repr, MATRIX_VIEWS))})")
    low, high = _MIN_NDIM[view], _MAX_NDIM.get(view)
    if ndim < low or (high is not None and ndim > high):
        fits = [v for v in MATRIX_VIEWS if _MIN_NDIM[v] <= ndim and (_MAX_NDIM.get(v) is None or ndim <= _MAX_NDIM[v])]
        raise ValueError(
            f"matrix_view={view!r} does not fit {label}: it is {ndim}-D and {view!r} needs "
            f"{low}-D{'' if high == low else ' or more'}; for a {ndim}-D parameter write one of "
            f"{', '.join(map(repr, fits)) or _NO_VIEW} in its group"
        )


def as_matrices(t: Tensor, view: str | None) -> Tensor:
    """The tensor Newton–Schulz sees: ``[m, n]`` or a batch ``[k, m, n]`` (a view of ``t`` when possible)."""
    view = default_matrix_view(t.ndim) if view is None else view
    if view in ("out_in", "in_out"):
        return t
    if view in ("batch_out_in", "batch_in_out"):
        return t if t.ndim == 3 else t.reshape(-1, *t.shape[-2:])
    return t.reshape(t.shape[0], -1)  # conv, conv_transposed


def matrix_fans(shape: Sequence[int], view: str | None = None) -> tuple[int, int]:
    """``(fan_out, fan_in)`` of the matrices Muon orthogonalizes for a parameter of this shape and view."""
    if len(shape) < 2:
        raise ValueError(f"Muon needs a parameter with at least 2 dimensions, got shape {tuple(shape)}")
    view = default_matrix_view(len(shape)) if view is None else view
    if view in ("out_in", "batch_out_in"):
        return shape[-2], shape[-1]
    if view in ("in_out", "batch_in_out"):
        return shape[-1], shape[-2]
    if view == "conv":
        return shape[0], math.prod(shape[1:])
    if view == "conv_transposed":
        return math.prod(shape[1:]), shape[0]
    raise ValueError(f"Invalid matrix_view: {view!r} (allowed: {', '.join(map(repr, MATRIX_VIEWS))})")
