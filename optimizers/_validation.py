"""Hyperparameter checks shared by the optimizers: each raises ``ValueError`` naming the argument."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

NONFINITE_MODES = (None, "raise", "skip")
DECAY_MODES = ("lr", "independent")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_lr(name: str, value: Any) -> None:
    """A finite float >= 0, or a 0-d / 1-element real tensor (checked on its value)."""
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or not value.is_floating_point():
            raise ValueError(f"{name} as a Tensor must be a 1-element real floating tensor, got {value!r}")
        v = float(value.detach().item())
    elif _is_number(value):
        v = float(value)
    else:
        raise TypeError(f"{name} must be a float or a 0-d tensor, got {type(value).__name__}: {value!r}")
    if not (math.isfinite(v) and v >= 0.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite value >= 0)")


def check_nonnegative(name: str, value: Any) -> None:
    """A finite real number >= 0."""
    if not _is_number(value):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}: {value!r}")
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be a finite value >= 0)")


def check_positive(name: str, value: Any) -> None:
    """A finite real number > 0."""
    check_nonnegative(name, value)
    if value == 0:
        raise ValueError(f"Invalid {name}: {value!r} (must be > 0)")


def check_beta(name: str, value: Any) -> None:
    """A number in [0, 1) (a 1-element tensor is accepted and checked on its value)."""
    v = float(value.item()) if isinstance(value, Tensor) and value.numel() == 1 else value
    if not _is_number(v):
        raise TypeError(f"{name} must be a float in [0, 1), got {type(value).__name__}: {value!r}")
    if not (0.0 <= v < 1.0):
        raise ValueError(f"Invalid {name}: {value!r} (must be in [0, 1))")


def check_betas(name: str, value: Any) -> None:
    """A pair (beta1, beta2), each in [0, 1)."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ValueError(f"Invalid {name}: {value!r} (must be a pair (beta1, beta2))")
    check_beta(f"{name}[0]", value[0])
    check_beta(f"{name}[1]", value[1])


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}: {value!r}")


def check_optional_bool(name: str, value: Any) -> None:
    if value is not None and not isinstance(value, bool):
        raise TypeError(f"{name} must be None or a bool, got {type(value).__name__}: {value!r}")


def check_choice(name: str, value: Any, allowed: Iterable[Any]) -> None:
    allowed = tuple(allowed)
    if not any(value is a or (isinstance(value, str) and value == a) for a in allowed):
        raise ValueError(f"Invalid {name}: {value!r} (allowed: {', '.join(map(repr, allowed))})")


def check_int_at_least(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (must be >= {minimum})")


def check_float_dtype(name: str, value: Any) -> None:
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise ValueError(f"Invalid {name}: {value!r} (must be None or a floating torch.dtype)")


def split_names(params: Any, names: Any) -> tuple[list[Any], list[str] | None]:
    """``(tensors, names)`` of a group's ``params`` (tensors, or ``(name, tensor)`` pairs as
    ``named_parameters()`` yields) and its optional ``param_names`` list; ``names`` is ``None`` when
    there are none. Raises ``TypeError``/``ValueError`` for a set, mixed named and unnamed entries, or a
    ``param_names`` list that does not match ``params``.
    """
    if isinstance(params, Tensor):
        params = [params]
    elif isinstance(params, set):
        raise TypeError("params must be an ordered collection (list), not a set: the order must be stable")
    params = list(params)
    named = [isinstance(p, tuple) for p in params]
    if any(named):
        if not all(named):
            raise ValueError("params mixes (name, tensor) pairs and bare tensors; give names for all or none")
        if names is not None:
            raise ValueError("give parameter names either as (name, tensor) pairs or as param_names, not both")
        names = [n for n, _ in params]
        params = [t for _, t in params]
    if names is not None:
        if isinstance(names, str) or not all(isinstance(n, str) for n in names):
            raise TypeError(f"param_names must be a list of str, got {names!r}")
        names = list(names)
        if len(names) != len(params):
            raise ValueError(
                f"param_names has {len(names)} entries but params has {len(params)}; "
                "write one name per parameter, in the same order"
            )
    return params, names
