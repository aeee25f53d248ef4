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

Exact ``nn.Linear``, Hugging Face ``Conv1D``, ``nn.Conv*``/``nn.ConvTranspose*`` and
``nn.Embedding`` modules whose only multiplied parameter is ``weight`` also get a ``forward``
that runs one fused op of :mod:`parametrization.multiplied_ops` (autograd keeps only what the
plain layer keeps, plus the 1-D multipliers); Linear, Conv1D and Embedding choose per call
between the weight side (build ``W_eff``) and the activation side (scale inputs/outputs), by
:func:`~parametrization.effective_weight.prefers_activation_side`. Every other module keeps its
own ``forward`` and reads ``self.<param>``, a memory-lean ``W_eff`` (no intermediate saved).
Multipliers of the wrong shape, dtype or device raise at the first forward.

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

from .effective_weight import check_multipliers, multipliers_fit, prefers_activation_side
from .multiplied_ops import COMPUTE_MODES, compiled_linear_call, multiplied_conv, multiplied_embedding, multiplied_weight, python_linear
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


_WEIGHT_NAMES = multiplier_names("weight")


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
        # Every forward asks for "weight": its names are made once, not per call.
        s, r, c = _WEIGHT_NAMES if param == "weight" else multiplier_names(param)
        return params[param], params.get(s), params.get(r), params.get(c)

    def _lrm_effective_weight(self, param: str = "weight") -> Tensor:
        w, s, r, c = self._lrm_tensors(param)
        spec = self._lrm_specs[param]
        # Memory-lean: autograd keeps W, s, r, c for backward, not the intermediate r·W.
        return multiplied_weight(
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
        _check(self, param, *self._lrm_tensors(param))
        return self._lrm_effective_weight(param)

    return property(fget, doc=f"``W_eff = f·s·diag(r)·W·diag(c)`` of ``{param}`` (raw ``W``: ``_parameters[{param!r}]``).")


def _check(module: _Multiplied, param: str, w: Tensor, s: Tensor | None, r: Tensor | None, c: Tensor | None) -> None:
    spec = module._lrm_specs[param]
    if multipliers_fit(w, s, r, c, spec.row_dim, spec.col_dim, spec.batch_dim):
        return  # the every-forward fast path; the message below is built only on failure
    check_multipliers(
        w, s, r, c, row_dim=spec.row_dim, col_dim=spec.col_dim, batch_dim=spec.batch_dim,
        where=f"{_original_class(type(module)).__name__}.{param}",
    )
    raise AssertionError("multipliers_fit and check_multipliers disagree")  # pragma: no cover


class _MultipliedLinear(_Multiplied):
    """``nn.Linear`` and Hugging Face ``Conv1D`` (weight stored ``(in, out)``): one fused op."""

    def forward(self, input: Tensor) -> Tensor:
        w, s, r, c = self._lrm_tensors()
        spec = self._lrm_specs["weight"]
        params = self._parameters  # type: ignore[attr-defined]
        bias = params["bias"] if "bias" in params else self.bias  # the dict first: no Module.__getattr__
        # The C++ op first: it makes this forward's checks itself (in C++, where they cost
        # nothing next to the layer) and returns None for a call the Python op must serve.
        y = compiled_linear_call(input, w, bias, s, r, c, spec.fixed, spec.row_dim, COMPUTE_MODES[self._lrm_compute])
        if y is not None:
            return y
        if not multipliers_fit(w, s, r, c, spec.row_dim, spec.col_dim):  # every call: _check only on failure
            _check(self, "weight", w, s, r, c)
        if spec.row_dim == 1:  # stored (in, out): the op takes the (out, in) view
            w = w.T
        m, n = w.shape
        mode = self._lrm_compute
        activation = mode == "activation" or (mode == "auto" and prefers_activation_side(input.numel() // n, m, n))
        return python_linear(input, w, bias, s, r, c, spec.fixed, activation)


class _MultipliedConv(_Multiplied):
    """``nn.Conv1d/2d/3d`` and ``nn.ConvTranspose1d/2d/3d``: one fused op, same arguments."""

    def forward(self, input: Tensor, output_size: list[int] | None = None) -> Tensor:
        w, s, r, c = self._lrm_tensors()
        _check(self, "weight", w, s, r, c)
        spatial = w.ndim - 2
        unbatched = input.ndim == spatial + 1
        if unbatched:
            input = input.unsqueeze(0)
        padding = self.padding  # type: ignore[attr-defined]
        if self.transposed:  # type: ignore[attr-defined]
            if self.padding_mode != "zeros":  # type: ignore[attr-defined]
                raise ValueError(f"Only 'zeros' padding mode is supported for {type(self).__name__}")
            output_padding = self._output_padding(  # type: ignore[attr-defined]
                input, output_size, self.stride, self.padding, self.kernel_size, spatial, self.dilation  # type: ignore[attr-defined]
            )
        else:
            output_padding = [0] * spatial
            if self.padding_mode != "zeros":  # type: ignore[attr-defined]
                input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)  # type: ignore[attr-defined]
                padding = (0,) * spatial
            elif isinstance(padding, str):
                input, padding = _resolve_string_padding(input, padding, self.dilation, self.kernel_size)  # type: ignore[attr-defined]
        y = multiplied_conv(
            input, w, self.bias, s, r, c, fixed=self._lrm_fixed, row_dim=self._lrm_row_dim, col_dim=self._lrm_col_dim,  # type: ignore[attr-defined]
            stride=self.stride, padding=padding, dilation=self.dilation, transposed=self.transposed,  # type: ignore[attr-defined]
            output_padding=output_padding, groups=self.groups,  # type: ignore[attr-defined]
        )
        return y.squeeze(0) if unbatched else y


def _resolve_string_padding(input: Tensor, padding: str, dilation: tuple[int, ...], kernel: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """``"valid"``/``"same"`` as integer padding, as torch's convolution does (stride 1 for "same").

    "same" pads ``d·(k−1)`` per axis, half on each side; an odd total puts the extra element on
    the right, by padding the input once.
    """
    if padding == "valid":
        return input, (0,) * len(kernel)
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    left = tuple(t // 2 for t in total)
    extra = [t - 2 * lo for t, lo in zip(total, left)]
    if any(extra):
        pad: list[int] = []
        for e in reversed(extra):  # F.pad lists the last axis first
            pad += [0, e]
        input = F.pad(input, pad)
    return input, left


class _MultipliedEmbedding(_Multiplied):
    def forward(self, input: Tensor) -> Tensor:
        w, s, r, c = self._lrm_tensors()
        _check(self, "weight", w, s, r, c)
        if self.max_norm is not None or self.sparse:  # type: ignore[attr-defined]
            # max_norm renormalizes rows of the looked-up table in place and sparse wants a
            # sparse gradient of W_eff: both stay on plain autograd through W_eff.
            return F.embedding(
                input, self._lrm_effective_weight(), self.padding_idx, self.max_norm, self.norm_type, self.scale_grad_by_freq, self.sparse  # type: ignore[attr-defined]
            )
        mode = self._lrm_compute
        # Activation side costs O(tokens·d), weight side O(vocab·d).
        activation = mode == "activation" or (mode == "auto" and input.numel() <= w.shape[0])
        return multiplied_embedding(
            input, w, s, r, c, fixed=self._lrm_fixed, padding_idx=self.padding_idx,  # type: ignore[attr-defined]
            scale_grad_by_freq=self.scale_grad_by_freq, activation_side=activation,  # type: ignore[attr-defined]
        )


_HF_CONV1D = "transformers.pytorch_utils.Conv1D"
_CONV_CLASSES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _forward_mixin(cls: type, params: tuple[str, ...]) -> type:
    """The mixin whose forward runs a fused op for ``cls``, or the bare marker mixin.

    Only exact classes get a fused forward: a subclass may have its own forward, which reads
    ``self.weight`` (the memory-lean :func:`~parametrization.multiplied_ops.multiplied_weight`).
    """
    if params != ("weight",):
        return _Multiplied
    if cls is nn.Linear or f"{cls.__module__}.{cls.__qualname__}" == _HF_CONV1D:
        return _MultipliedLinear
    if cls in _CONV_CLASSES:
        return _MultipliedConv
    if cls is nn.Embedding:
        return _MultipliedEmbedding
    return _Multiplied


_CLASS_CACHE: dict[tuple[type, tuple[str, ...]], type] = {}


def _multiplied_class(cls: type, params: tuple[str, ...]) -> type:
    """The dynamic subclass of ``cls`` with an effective-weight property per name in ``params``."""
    key = (cls, tuple(sorted(params)))
    if key not in _CLASS_CACHE:
        mixin = _forward_mixin(cls, key[1])
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
    ``"activation"`` scales inputs and outputs (an embedding with ``max_norm`` or ``sparse``
    always uses the weight side; convolutions always do). Used by the overhead benchmark.
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
