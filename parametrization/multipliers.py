"""The module-side mechanism that carries the multipliers s, r, c of a module's parameters.

Attaching multipliers to ``module.<param>`` (:func:`attach`) swaps the module's class for a
dynamic subclass (one per original class and set of multiplied parameter names, as
``torch.nn.utils.parametrize`` does) with a class-level property per multiplied parameter that
returns ``W_eff = f·s·diag(r)·W·diag(c)``, computed by
:func:`parametrization.effective_weight.effective_weight`. The raw ``W`` stays where it was, in
``module._parameters[param]``, so:

* ``named_parameters()`` and ``state_dict()`` keep the plain model's key for ``W``; the
  multipliers are extra parameters on the same module, named ``f"{param}_mult_scalar"`` (shape
  ``(1,)``), ``f"{param}_mult_row"`` (``(m,)``) and ``f"{param}_mult_col"`` (``(n,)``); with a
  batch axis of ``E`` stacked matrices (fused experts) the shapes are ``(E,)``, ``(E, m)``,
  ``(E, n)``. All are ≥1-D so FSDP2 can shard them on dim 0. One module may carry multipliers on
  several parameters (an experts module's ``gate_up_proj`` and ``down_proj``);
* the optimizer sees the raw ``W``, whose gradient is ``s·(r cᵀ)⊙G`` (paper eq. 4);
* loading a plain checkpoint (no multiplier keys) works with ``strict=True`` and sets the
  multipliers to 1, so the loaded model computes exactly what the plain model did;
* the multipliers of a frozen ``W`` (``requires_grad=False`` at attach time) are created frozen;
* :func:`fold_module` multiplies each ``W`` in place by its multipliers and restores the
  original class; ``copy.deepcopy`` and ``pickle`` rebuild the dynamic class.

Exact ``nn.Linear`` and ``nn.Embedding`` modules whose only multiplied parameter is ``weight``
also get a ``forward`` that chooses, per call, between the weight side (build ``W_eff``) and the
activation side (scale inputs/outputs), by
:func:`~parametrization.effective_weight.prefers_activation_side`; every other module keeps its
own ``forward`` and reads ``self.<param>`` (weight side).

Caveat: after attaching, ``module.<param>`` is a computed tensor. Re-initialize the raw weight
through :func:`raw_weight` (or before parametrizing); in-place init on ``module.weight`` would
write into a temporary.
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
from .placement import Placement
from .roles import WeightLayout

__all__ = [
    "Placement",
    "MULTIPLIER_SUFFIXES",
    "multiplier_names",
    "multiplied_fqn",
    "attach",
    "fold_module",
    "is_multiplied",
    "multiplied_params",
    "raw_weight",
    "reset",
    "set_compute",
]

MULTIPLIER_SUFFIXES = ("_mult_scalar", "_mult_row", "_mult_col")
"""Suffixes appended to a parameter's name to name its multipliers ``s``, ``r``, ``c``."""

Compute = Literal["auto", "weight", "activation"]


def multiplier_names(param: str = "weight") -> tuple[str, str, str]:
    """Attribute names of the ``(s, r, c)`` multipliers of ``module.<param>``.

    ``multiplier_names("weight") == ("weight_mult_scalar", "weight_mult_row", "weight_mult_col")``.
    """
    return tuple(param + suffix for suffix in MULTIPLIER_SUFFIXES)  # type: ignore[return-value]


def multiplied_fqn(multiplier_fqn: str) -> str | None:
    """FQN of the parameter a multiplier scales (``"a.weight_mult_row"`` → ``"a.weight"``), else ``None``."""
    for suffix in MULTIPLIER_SUFFIXES:
        if multiplier_fqn.endswith(suffix):
            return multiplier_fqn[: -len(suffix)]
    return None


@dataclass(frozen=True)
class _Spec:
    """How one multiplied parameter is stored: its layout axes and its fixed factor."""

    row_dim: int
    col_dim: int
    batch_dim: int | None
    fixed: float


# --------------------------------------------------------------------------- module mixins


def _is_dtensor(t: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


class _Multiplied:
    """Mixin placed in front of the original class; the marker of a multiplied module."""

    _lrm_specs: dict[str, _Spec]
    _lrm_compute: Compute
    _lrm_init: dict[str, float]

    def _lrm_tensors(self, param: str = "weight") -> tuple[Tensor, Tensor | None, Tensor | None, Tensor | None]:
        params = self._parameters  # type: ignore[attr-defined]
        s, r, c = multiplier_names(param)
        return params[param], params.get(s), params.get(r), params.get(c)

    def _lrm_effective_weight(self, param: str = "weight") -> Tensor:
        w, s, r, c = self._lrm_tensors(param)
        spec = self._lrm_specs[param]
        return effective_weight(
            w, s, r, c, row_dim=spec.row_dim, col_dim=spec.col_dim, batch_dim=spec.batch_dim, fixed=spec.fixed
        )

    # The built-in Linear/Embedding forwards read the layout of ``weight`` through these.
    @property
    def _lrm_row_dim(self) -> int:
        return self._lrm_specs["weight"].row_dim

    @property
    def _lrm_col_dim(self) -> int:
        return self._lrm_specs["weight"].col_dim

    @property
    def _lrm_fixed(self) -> float:
        return self._lrm_specs["weight"].fixed

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):  # type: ignore[no-untyped-def]
        # A plain checkpoint has the weight but no multipliers: load them as 1 so the model
        # computes exactly what the plain model did (and strict=True passes).
        for param in self._lrm_specs:
            if prefix + param not in state_dict:
                continue
            for name in multiplier_names(param):
                p = self._parameters.get(name)  # type: ignore[attr-defined]
                if p is not None and prefix + name not in state_dict:
                    state_dict[prefix + name] = torch.ones_like(p)
        super()._load_from_state_dict(  # type: ignore[misc]
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def __reduce_ex__(self, protocol: Any) -> Any:
        # Dynamic classes cannot be pickled by name; rebuild them from the original class.
        return (_new_multiplied, (_original_class(type(self)), tuple(self._lrm_specs)), self.__dict__)


def _effective_property(param: str) -> property:
    def fget(self: _Multiplied) -> Tensor:
        w = self._parameters[param]  # type: ignore[attr-defined]
        # While W is a DTensor (FSDP2's sharded state, between forwards) return the raw W: FSDP2
        # re-reads its parameter with getattr(module, name) at lazy init and would otherwise adopt
        # the computed W_eff (a non-leaf) as the parameter, so W would never get a gradient.
        # FSDP2 runs forward on plain unsharded tensors, where this is W_eff again.
        if _is_dtensor(w):
            return w
        return self._lrm_effective_weight(param)

    return property(fget, doc=f"``W_eff = f·s·diag(r)·W·diag(c)`` of ``{param}`` (raw ``W``: ``_parameters[{param!r}]``).")


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


_CLASS_CACHE: dict[tuple[type, tuple[str, ...]], type] = {}


def _multiplied_class(cls: type, params: tuple[str, ...]) -> type:
    """The dynamic subclass of ``cls`` with an effective-weight property per name in ``params``."""
    key = (cls, tuple(sorted(params)))
    if key not in _CLASS_CACHE:
        if cls is nn.Linear and key[1] == ("weight",):
            mixin: type = _MultipliedLinear
        elif cls is nn.Embedding and key[1] == ("weight",):
            mixin = _MultipliedEmbedding
        else:
            mixin = _Multiplied
        props = {name: _effective_property(name) for name in key[1]}
        new = type(f"Multiplied{cls.__name__}", (mixin, cls), {"__module__": __name__, **props})
        _CLASS_CACHE[key] = new
    return _CLASS_CACHE[key]


def _original_class(cls: type) -> type:
    for base in cls.__mro__[1:]:
        if not issubclass(base, _Multiplied):
            return base
    raise TypeError(f"{cls!r} is not a multiplied class")


def _new_multiplied(cls: type, params: tuple[str, ...] = ("weight",)) -> nn.Module:
    new_cls = _multiplied_class(cls, params)
    return new_cls.__new__(new_cls)


# --------------------------------------------------------------------------- public functions


def is_multiplied(module: nn.Module) -> bool:
    """True when ``module`` carries multipliers (or a fixed factor) attached by :func:`attach`."""
    return isinstance(module, _Multiplied)


def multiplied_params(module: nn.Module) -> tuple[str, ...]:
    """Names of the parameters of ``module`` that :func:`attach` gave multipliers (or a factor)."""
    return tuple(module._lrm_specs) if is_multiplied(module) else ()


def raw_weight(module: nn.Module, param: str = "weight") -> Tensor:
    """The stored ``W`` of ``module.<param>``, multiplied or not (``module.<param>`` is ``W_eff``)."""
    w = module._parameters.get(param)
    if w is None:
        raise ValueError(f"{type(module).__name__} has no parameter {param!r}")
    return w


def _check_compute(compute: Any) -> None:
    if compute not in ("auto", "weight", "activation"):
        raise ValueError(f"compute must be 'auto', 'weight' or 'activation', got {compute!r}")


def attach(
    module: nn.Module,
    placement: Placement,
    layout: WeightLayout,
    *,
    param: str = "weight",
    fixed: float = 1.0,
    compute: Compute = "auto",
) -> list[str]:
    """Give ``module.<param>`` the multipliers of ``placement`` (all 1) and return their names.

    Args:
        module: the module that stores the parameter.
        placement: which of ``s``, ``r``, ``c`` to create.
        layout: where the parameter keeps its output rows, input columns and (optional) batch
            axis of stacked matrices.
        param: the parameter's attribute name (default ``"weight"``).
        fixed: a constant factor (e.g. muP's output 1/m); default 1. Where the layer has a
            learnable multiplier the constant becomes its initial value instead (``s`` if present,
            else every entry of ``r``, else of ``c``), so ``W_eff`` at init equals ``fixed·W``.
        compute: ``"auto"`` (default), ``"weight"`` or ``"activation"``, see :func:`set_compute`.

    Multipliers are created on the parameter's device and dtype, frozen when it is frozen.
    """
    w = raw_weight(module, param)
    if param in multiplied_params(module):
        raise ValueError(
            f"{type(module).__name__}.{param} already carries multipliers; parametrize a module only once"
        )
    _check_compute(compute)
    ndim = w.ndim
    row_dim, col_dim = layout.row_dim % ndim, layout.col_dim % ndim
    batch_dim = None if layout.batch_dim is None else layout.batch_dim % ndim
    if len({row_dim, col_dim, batch_dim} - {None}) != (3 if batch_dim is not None else 2):
        raise ValueError(f"layout {layout} of {type(module).__name__}.{param} (shape {tuple(w.shape)}) uses an axis twice")
    batch = () if batch_dim is None else (w.shape[batch_dim],)
    names: list[str] = []
    inits: dict[str, float] = {}
    absorbed = False
    factory = {"device": w.device, "dtype": w.dtype}
    s_name, r_name, c_name = multiplier_names(param)
    for name, wanted, size in (
        (s_name, placement.scalar, batch or (1,)),
        (r_name, placement.row, (*batch, w.shape[row_dim])),
        (c_name, placement.col, (*batch, w.shape[col_dim])),
    ):
        if not wanted:
            continue
        init = 1.0
        if not absorbed and fixed != 1.0:
            init, absorbed = fixed, True
        module.register_parameter(name, nn.Parameter(torch.full(size, init, **factory), requires_grad=w.requires_grad))
        names.append(name)
        inits[name] = init
    spec = _Spec(row_dim, col_dim, batch_dim, 1.0 if absorbed else float(fixed))
    if is_multiplied(module):
        module._lrm_specs = {**module._lrm_specs, param: spec}
        module._lrm_init = {**module._lrm_init, **inits}
        if compute != "auto":
            module._lrm_compute = compute
        module.__class__ = _multiplied_class(_original_class(type(module)), tuple(module._lrm_specs))
    else:
        module._lrm_specs = {param: spec}
        module._lrm_compute = compute
        module._lrm_init = inits
        module.__class__ = _multiplied_class(type(module), (param,))
    return names


def set_compute(module: nn.Module, compute: Compute) -> None:
    """Force where a multiplied ``nn.Linear``/``nn.Embedding`` applies its multipliers.

    ``"auto"`` (default) picks the cheaper side per call; ``"weight"`` builds ``W_eff``;
    ``"activation"`` scales inputs and outputs (an embedding with ``max_norm``, ``padding_idx``
    or ``scale_grad_by_freq`` always uses the weight side). Used by the overhead benchmark.
    """
    if not is_multiplied(module):
        raise ValueError(f"{type(module).__name__} carries no multipliers")
    _check_compute(compute)
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
def fold_module(module: nn.Module) -> None:
    """Fold the multipliers of ``module`` into its parameters in place and restore its plain class.

    Each multiplied ``W`` becomes ``W_eff`` (``W ← f·s·diag(r)·W·diag(c)``, written into the same
    tensor); the multipliers are removed. Afterwards the module is an instance of its original
    class, with its original parameters and ``state_dict`` keys.
    """
    if not is_multiplied(module):
        raise ValueError(f"{type(module).__name__} carries no multipliers to fold")
    for param in module._lrm_specs:
        # not module.<param>: that is the raw W while W is a DTensor
        w_eff = module._lrm_effective_weight(param)
        module._parameters[param].copy_(w_eff)
    for param in module._lrm_specs:
        for name in multiplier_names(param):
            module._parameters.pop(name, None)
    for attr in ("_lrm_specs", "_lrm_compute", "_lrm_init"):
        module.__dict__.pop(attr, None)
    module.__class__ = _original_class(type(module))
