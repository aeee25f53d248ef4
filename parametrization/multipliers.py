"""The module-side mechanism that carries the multipliers s, r, c of one layer.

Attaching multipliers to a module (:func:`attach`) swaps the module's class for a dynamic
subclass (one per original class, as ``torch.nn.utils.parametrize`` does) whose class-level
``weight`` property returns ``W_eff = f·s·diag(r)·W·diag(c)`` computed by
:func:`parametrization.effective_weight.effective_weight`. The raw ``W`` stays where it was, in
``module._parameters["weight"]``, so:

* ``named_parameters()`` and ``state_dict()`` keep the plain model's key for ``W``; the
  multipliers are extra parameters on the same module, named ``weight_mult_scalar`` (shape
  ``(1,)``), ``weight_mult_row`` (``(m,)``) and ``weight_mult_col`` (``(n,)``). All are ≥1-D so
  FSDP2 can shard them on dim 0 like the weight's rows.
* the optimizer sees the raw ``W``, whose gradient is ``s·(r cᵀ)⊙G`` (paper eq. 4);
* loading a plain checkpoint (no multiplier keys) works with ``strict=True`` and sets the
  multipliers to 1, so the loaded model computes exactly what the plain model did;
* :func:`detach` multiplies ``W`` in place by the multipliers and restores the original class.

Exact ``nn.Linear`` and ``nn.Embedding`` modules also get a ``forward`` that chooses, per call,
between the weight side (build ``W_eff``) and the activation side (scale inputs/outputs), by
:func:`~parametrization.effective_weight.prefers_activation_side`; subclasses of them keep their
own ``forward`` and read ``self.weight`` (weight side).

Caveat: after attaching, ``module.weight`` is a computed tensor. Re-initialize the raw weight
through ``module._parameters["weight"]`` (or before parametrizing); in-place init on
``module.weight`` would write into a temporary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .effective_weight import (
    effective_weight,
    embedding_activation_side,
    linear_activation_side,
    prefers_activation_side,
)
from .roles import WeightLayout

__all__ = [
    "Placement",
    "MULTIPLIER_NAMES",
    "attach",
    "detach",
    "is_multiplied",
    "raw_weight",
    "reset",
    "set_compute",
]

SCALAR, ROW, COL = "weight_mult_scalar", "weight_mult_row", "weight_mult_col"
MULTIPLIER_NAMES = (SCALAR, ROW, COL)
"""Attribute names of the multipliers on a module (also the last part of their FQN)."""

Compute = Literal["auto", "weight", "activation"]


@dataclass(frozen=True)
class Placement:
    """Which multipliers a layer gets: a scalar ``s``, a row vector ``r``, a column vector ``c``."""

    scalar: bool = False
    row: bool = False
    col: bool = False

    @classmethod
    def parse(cls, spec: str, *, where: str = "placement") -> "Placement":
        """Parse a spec string made of the letters ``s``, ``r``, ``c`` (or ``""``/``"none"``)."""
        if not isinstance(spec, str):
            raise TypeError(f"{where} must be a string of the letters 's', 'r', 'c', got {spec!r}")
        letters = "" if spec == "none" else spec
        bad = set(letters) - set("src")
        if bad or len(set(letters)) != len(letters):
            raise ValueError(
                f"{where} = {spec!r} is not a placement; use the letters 's' (scalar), 'r' (row), "
                f"'c' (column) at most once each, e.g. 'rc', 'r', 's', or 'none'"
            )
        return cls(scalar="s" in letters, row="r" in letters, col="c" in letters)

    @property
    def any(self) -> bool:
        return self.scalar or self.row or self.col

    def __str__(self) -> str:
        return ("s" if self.scalar else "") + ("r" if self.row else "") + ("c" if self.col else "") or "-"


# --------------------------------------------------------------------------- module mixins


def _is_dtensor(t: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class _Multiplied:
    """Mixin placed in front of the original class; the marker of a multiplied module."""

    _lrm_row_dim: int
    _lrm_col_dim: int
    _lrm_fixed: float
    _lrm_compute: Compute
    _lrm_init: dict[str, float]

    def _lrm_tensors(self) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        params = self._parameters  # type: ignore[attr-defined]
        return params["weight"], params.get(SCALAR), params.get(ROW), params.get(COL)

    def _lrm_effective_weight(self) -> Tensor:
        w, s, r, c = self._lrm_tensors()
        return effective_weight(w, s, r, c, row_dim=self._lrm_row_dim, col_dim=self._lrm_col_dim, fixed=self._lrm_fixed)

    @property
    def weight(self) -> Tensor:
        """``W_eff = f·s·diag(r)·W·diag(c)`` (the raw ``W`` is ``_parameters['weight']``).

        Exception: while ``W`` is a DTensor (FSDP2's sharded state, between forwards) this returns
        the raw ``W``: FSDP2 re-reads its parameter with ``getattr(module, "weight")`` at lazy init
        and would otherwise adopt the computed ``W_eff`` (a non-leaf) as the parameter, so ``W``
        would never get a gradient. FSDP2 runs forward on plain unsharded tensors, where this
        property is ``W_eff`` again; the built-in forwards below never read it.
        """
        w = self._parameters["weight"]  # type: ignore[attr-defined]
        if _is_dtensor(w):
            return w
        return self._lrm_effective_weight()

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # A plain checkpoint has the weight but no multipliers: load them as 1 so the model
        # computes exactly what the plain model did (and strict=True passes).
        if prefix + "weight" in state_dict:
            for name in MULTIPLIER_NAMES:
                p = self._parameters.get(name)  # type: ignore[attr-defined]
                if p is not None and prefix + name not in state_dict:
                    state_dict[prefix + name] = torch.ones_like(p)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Dynamic classes cannot be pickled by name; rebuild them from the original class.
        return (_new_multiplied, (_original_class(type(self)),), self.__dict__)


class _MultipliedLinear(_Multiplied):
    def forward(self, input: Tensor) -> Tensor:
        w, s, r, c = self._lrm_tensors()
        m, n = w.shape
        mode = self._lrm_compute
        if mode == "activation" or (mode == "auto" and prefers_activation_side(input.numel() // n, m, n)):
            return linear_activation_side(input, w, self.bias, s, r, c, fixed=self._lrm_fixed)  # type: ignore[attr-defined]
        return F.linear(input, self._lrm_effective_weight(), self.bias)  # type: ignore[attr-defined]


class _MultipliedEmbedding(_Multiplied):
    def forward(self, input: Tensor) -> Tensor:
        w, s, r, c = self._lrm_tensors()
        mode = self._lrm_compute
        # Activation side costs O(tokens·d), weight side O(vocab·d). max_norm renormalizes rows
        # of the stored weight in place; padding_idx and scale_grad_by_freq reshape the gradient
        # of rows of W_eff (and so of r and c): those keep the weight side.
        plain_lookup = self.max_norm is None and self.padding_idx is None and not self.scale_grad_by_freq  # type: ignore[attr-defined]
        if plain_lookup and (mode == "activation" or (mode == "auto" and input.numel() <= w.shape[0])):
            y = F.embedding(input, w, sparse=self.sparse)  # type: ignore[attr-defined]
            return embedding_activation_side(y, input, s, r, c, fixed=self._lrm_fixed)
        return F.embedding(
            input, self._lrm_effective_weight(), self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse  # type: ignore[attr-defined]
        )


_CLASS_CACHE: dict[type, type] = {}


def _multiplied_class(cls: type) -> type:
    if cls not in _CLASS_CACHE:
        if cls is nn.Linear:
            mixin: type = _MultipliedLinear
        elif cls is nn.Embedding:
            mixin = _MultipliedEmbedding
        else:
            mixin = _Multiplied
        new = type(f"Multiplied{cls.__name__}", (mixin, cls), {"__module__": __name__})
        _CLASS_CACHE[cls] = new
    return _CLASS_CACHE[cls]


def _original_class(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if not issubclass(base, _Multiplied):
            return base
    raise TypeError(f"{cls!r} is not a multiplied class")


def _new_multiplied(cls: type) -> nn.Module:
    new_cls = _multiplied_class(cls)
    return new_cls.__new__(new_cls)


# --------------------------------------------------------------------------- public functions


def is_multiplied(module: nn.Module) -> bool:
    """True when ``module`` carries multipliers attached by :func:`attach`."""
    return isinstance(module, _Multiplied)


def raw_weight(module: nn.Module) -> Tensor:
    """The stored weight ``W`` of a module, multiplied or not (``module.weight`` is ``W_eff``)."""
    w = module._parameters.get("weight")
    if w is None:
        raise ValueError(f"{type(module).__name__} has no 'weight' parameter")
    return w


def attach(
    module: nn.Module,
    placement: Placement,
    layout: WeightLayout,
    *,
    fixed: float = 1.0,
    compute: Compute = "auto",
) -> list[str]:
    """Give ``module`` the multipliers of ``placement`` (all 1) and return their attribute names.

    ``fixed`` is a constant factor (e.g. muP's output 1/m). Where the layer has a learnable
    multiplier the constant becomes its initial value instead (``s`` if present, else every
    entry of ``r``, else of ``c``), so ``W_eff`` at init equals ``fixed·W`` either way.
    """
    if is_multiplied(module):
        raise ValueError(f"{type(module).__name__} already carries multipliers; parametrize a module only once")
    if compute not in ("auto", "weight", "activation"):
        raise ValueError(f"compute must be 'auto', 'weight' or 'activation', got {compute!r}")
    w = raw_weight(module)
    ndim = w.ndim
    row_dim, col_dim = layout.row_dim % ndim, layout.col_dim % ndim
    names: list[str] = []
    inits: dict[str, float] = {}
    absorbed = False
    factory = {"device": w.device, "dtype": w.dtype}
    for name, wanted, size in ((SCALAR, placement.scalar, 1), (ROW, placement.row, w.shape[row_dim]), (COL, placement.col, w.shape[col_dim])):
        if not wanted:
            continue
        init = 1.0
        if not absorbed and fixed != 1.0:
            init, absorbed = fixed, True
        module.register_parameter(name, nn.Parameter(torch.full((size,), init, **factory)))
        names.append(name)
        inits[name] = init
    module._lrm_row_dim = row_dim
    module._lrm_col_dim = col_dim
    module._lrm_fixed = 1.0 if absorbed else float(fixed)
    module._lrm_compute = compute
    module._lrm_init = inits
    module.__class__ = _multiplied_class(type(module))
    return names


def set_compute(module: nn.Module, compute: Compute) -> None:
    """Force where a multiplied ``nn.Linear``/``nn.Embedding`` applies its multipliers.

    ``"auto"`` (default) picks the cheaper side per call; ``"weight"`` builds ``W_eff``;
    ``"activation"`` scales inputs and outputs (an embedding with ``max_norm``, ``padding_idx``
    or ``scale_grad_by_freq`` always uses the weight side). Used by the overhead benchmark.
    """
    if not is_multiplied(module):
        raise ValueError(f"{type(module).__name__} carries no multipliers")
    if compute not in ("auto", "weight", "activation"):
        raise ValueError(f"compute must be 'auto', 'weight' or 'activation', got {compute!r}")
    module._lrm_compute = compute


@torch.no_grad()
def reset(module: nn.Module) -> None:
    """Set the multipliers of ``module`` back to their initial values (1, or the muP factor).

    Needed after materializing a model built on the meta device (``to_empty`` leaves the
    multipliers uninitialized, like every other parameter).
    """
    if not is_multiplied(module):
        raise ValueError(f"{type(module).__name__} carries no multipliers")
    for name, value in module._lrm_init.items():
        module._parameters[name].fill_(value)


@torch.no_grad()
def detach(module: nn.Module) -> None:
    """Fold the multipliers of ``module`` into its weight in place and restore its plain class.

    Afterwards the module is an instance of its original class, with its original parameters
    and state_dict keys, and ``module.weight`` holds the former ``W_eff``.
    """
    if not is_multiplied(module):
        raise ValueError(f"{type(module).__name__} carries no multipliers to fold")
    w = module._parameters["weight"]
    w_eff = module._lrm_effective_weight()  # not module.weight: that is the raw W while W is a DTensor
    w.copy_(w_eff)
    for name in MULTIPLIER_NAMES:
        module._parameters.pop(name, None)
    for attr in ("_lrm_row_dim", "_lrm_col_dim", "_lrm_fixed", "_lrm_compute", "_lrm_init"):
        module.__dict__.pop(attr, None)
    module.__class__ = _original_class(type(module))
