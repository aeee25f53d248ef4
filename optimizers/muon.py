"""Muon for matrix parameters and the AdamW rule for everything else, in one ``torch.optim.Optimizer``.

Muon update of a matrix parameter ``W`` (fan_out × fan_in) with gradient ``G``, per step::

    B ← μ·B + (1 − μ)·G                        momentum, EMA form (state key ``momentum_buffer``)
    U ← (1 − μ)·G + μ·B   if nesterov else B
    O ← NS(U)                                  Newton–Schulz ≈ polar factor (optimizers.newton_schulz)
    W ← W·(1 − lr·wd)                          decay="lr" (default; uses the *unscaled* lr, as torch)
    W ← W·(1 − wd)                             decay="independent"
    W ← W − lr · scale(fan_out, fan_in) · O    scale: optimizers.lr_scale rule

Shapes beyond 2-D:

* a 3-D parameter ``[k, m, n]`` (stacked experts or heads) is a batch of k independent m×n matrices, each
  orthogonalized on its own; the lr scale uses (m, n);
* a ≥4-D parameter (a conv kernel ``[out, in, kh, kw]``) is orthogonalized as the 2-D matrix
  ``(out, in·kh·kw)`` and its lr scale uses fan_out = out, fan_in = in·kh·kw.

Every step gathers the updates of all Muon groups and hands them to
:func:`optimizers.distributed.orthogonalize_distributed`, which (for plain tensors without a process group)
calls :func:`optimizers.orthogonalize.orthogonalize_updates`: same-shaped matrices (tall ones transposed to
wide first) stacked into one batched Newton–Schulz call.
Groups with ``algorithm="adamw"`` take the AdamW rule through torch's fused AdamW kernel (see
:mod:`optimizers.adamw`). A group without ``algorithm`` is split by ``ndim``: ≥ 2-D → Muon, else → AdamW
with the ``adamw_*`` settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from . import _validation as V
from ._nonfinite import GuardedOptimizer
from .adamw import ADAMW_GROUP_DEFAULTS, adamw_group_update, check_adamw_group, choose_path
from .lr_scale import LR_SCALE_RULES, lr_scale
from .distributed import orthogonalize_distributed
from .newton_schulz import NS_METHODS, check_coefficients
from .orthogonalize import coefficients_key as _coefficients_key
from .orthogonalize import orthogonalize_updates

__all__ = ["Muon", "matrix_fans", "muon_momentum", "orthogonalize_updates"]

ALGORITHMS = ("muon", "adamw")


def as_matrices(t: Tensor) -> Tensor:
    """The view Muon orthogonalizes: 2-D and 3-D as they are, ≥4-D flattened to ``(shape[0], -1)``."""
    if t.ndim >= 4:
        return t.reshape(t.shape[0], -1)
    return t


def matrix_fans(shape: Sequence[int]) -> tuple[int, int]:
    """``(fan_out, fan_in)`` of the matrices Muon orthogonalizes for a parameter of this shape."""
    if len(shape) < 2:
        raise ValueError(f"Muon needs a parameter with at least 2 dimensions, got shape {tuple(shape)}")
    if len(shape) >= 4:
        return shape[0], math.prod(shape[1:])
    return shape[-2], shape[-1]


def muon_momentum(bufs: list[Tensor], grads: list[Tensor], momentum: float, nesterov: bool) -> list[Tensor]:
    """``B ← μ·B + (1 − μ)·G`` in place on ``bufs``; returns new tensors ``U`` (Nesterov: ``(1−μ)·G + μ·B``).

    ``grads`` are only read. Without Nesterov the returned update is a copy of ``B``, so nothing
    downstream can alias (and normalize) the optimizer state.
    """
    # torch 2.11 has no DTensor rule for aten._foreach_lerp (2.13 has): FSDP2 states take the per-tensor path.
    if all(b.dtype == g.dtype and b.device == g.device and not _is_dtensor(b) for b, g in zip(bufs, grads)):
        torch._foreach_lerp_(bufs, grads, 1.0 - momentum)
        return torch._foreach_lerp(grads, bufs, momentum) if nesterov else [b.clone() for b in bufs]
    out = []
    for b, g in zip(bufs, grads):
        b.lerp_(g.to(b.dtype), 1.0 - momentum)
        out.append(g.to(b.dtype).lerp(b, momentum) if nesterov else b.clone())
    return out


def _is_dtensor(t: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def check_muon_group(group: dict[str, Any]) -> None:
    """Validate the Muon-rule keys of a (fully filled) param group."""
    V.check_lr("lr", group["lr"])
    V.check_beta("momentum", group["momentum"])
    V.check_bool("nesterov", group["nesterov"])
    V.check_nonnegative("weight_decay", group["weight_decay"])
    V.check_choice("decay", group["decay"], V.DECAY_MODES)
    if group["decay"] == "independent" and group["weight_decay"] > 1:
        raise ValueError(f"Invalid weight_decay: {group['weight_decay']!r} (must be <= 1 with decay='independent')")
    V.check_int_at_least("ns_steps", group["ns_steps"], 1)
    check_coefficients(group["ns_coefficients"])
    V.check_choice("lr_scale", group["lr_scale"], LR_SCALE_RULES)


class Muon(GuardedOptimizer):
    """Muon (orthogonalized momentum) for matrices plus the AdamW rule for the rest; see the module doc.

    Args:
        params: parameters or param groups. A group may set ``algorithm`` to ``"muon"`` (keys ``lr``,
            ``momentum``, ``nesterov``, ``weight_decay``, ``decay``, ``ns_steps``, ``ns_coefficients``,
            ``lr_scale``) or ``"adamw"`` (keys ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
            ``maximize``, ``decay``; missing ones come from the ``adamw_*`` arguments). A group without
            ``algorithm`` is split: ≥2-D parameters → Muon, 0-D/1-D → AdamW.
        lr: Muon learning rate before the shape scale (default 0.02).
        momentum: μ in [0, 1) (default 0.95).
        nesterov: Nesterov momentum (default True).
        weight_decay: Muon decoupled weight decay (default 0.1).
        ns_steps: Newton–Schulz iterations, ≥ 1 (default 5).
        ns_coefficients: ``"quintic"`` (Keller Jordan, default) or ``"polar_express"``.
        lr_scale: ``"spectral"`` (default), ``"match_rms_adamw"`` or ``"none"`` (optimizers.lr_scale).
        ns_dtype: Newton–Schulz compute dtype; ``None`` = bf16 on CUDA, fp32 elsewhere.
        ns_method: ``"standard"`` (default), ``"gram"`` or ``"auto"`` (Gram Newton–Schulz for matrices
            with aspect ratio ≥ 2 when computing in fp32: the same polynomials in fewer FLOPs, ~1.6× faster
            on a CPU for a GPT's 512×1536/512×2048 matrices, with more rounding; see newton_schulz).
        adamw_lr, adamw_betas, adamw_eps, adamw_weight_decay: defaults of the AdamW-rule groups
            (3e-4, (0.9, 0.95), 1e-8, 0.0).
        decay: ``"lr"`` or ``"independent"`` weight decay for both rules (per-group key ``decay``).
        nonfinite: ``None``, ``"raise"`` or ``"skip"`` (as :class:`optimizers.AdamW`).

    ``defaults`` (torch's) holds only ``lr`` and ``weight_decay``; the per-rule defaults that fill a group
    are ``muon_defaults`` and ``adamw_defaults``. ``ns_dtype``, ``ns_method`` and ``nonfinite`` apply to
    the whole optimizer and are not part of ``state_dict()``.
        process_group: under DDP, the data-parallel ``ProcessGroup`` (or ``torch.distributed.group.WORLD``)
            to split the Newton–Schulz work over: each rank orthogonalizes ~1/W of the matrices and the
            results are all-gathered. Every rank must step with the same (all-reduced) gradients.
            ``None`` (default): each rank orthogonalizes all its plain-tensor updates. FSDP2 (DTensor)
            parameters need nothing: their work is always split over their mesh.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 0.02,
        momentum: float = 0.95,
        nesterov: bool = True,
        weight_decay: float = 0.1,
        *,
        ns_steps: int = 5,
        ns_coefficients: Literal["quintic", "polar_express"] | Sequence[Sequence[float]] = "quintic",
        lr_scale: Literal["spectral", "match_rms_adamw", "none"] = "spectral",
        ns_dtype: torch.dtype | None = None,
        ns_method: Literal["standard", "gram", "auto"] = "standard",
        adamw_lr: float | Tensor = 3e-4,
        adamw_betas: tuple[float, float] = (0.9, 0.95),
        adamw_eps: float = 1e-8,
        adamw_weight_decay: float = 0.0,
        decay: Literal["lr", "independent"] = "lr",
        nonfinite: Literal["raise", "skip"] | None = None,
        process_group: Any = None,
    ) -> None:
        self.muon_defaults: dict[str, Any] = dict(
            lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay, decay=decay,
            ns_steps=ns_steps, ns_coefficients=ns_coefficients, lr_scale=lr_scale,
        )
        self.adamw_defaults: dict[str, Any] = dict(
            lr=adamw_lr, betas=tuple(adamw_betas) if isinstance(adamw_betas, list) else adamw_betas,
            eps=adamw_eps, weight_decay=adamw_weight_decay, **{**ADAMW_GROUP_DEFAULTS, "decay": decay},
        )
        check_muon_group(self.muon_defaults)
        check_adamw_group(self.adamw_defaults, prefix="adamw_")
        V.check_float_dtype("ns_dtype", ns_dtype)
        V.check_choice("ns_method", ns_method, (*NS_METHODS, "auto"))
        self.ns_method = ns_method
        V.check_choice("nonfinite", nonfinite, V.NONFINITE_MODES)
        self.ns_dtype = ns_dtype
        self.nonfinite = nonfinite
        self.process_group = process_group
        self.skipped_steps = 0
        # torch fills every group with `defaults`; the per-rule defaults are applied in add_param_group.
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    def _filled(self, group: dict[str, Any], algorithm: str) -> dict[str, Any]:
        base = self.muon_defaults if algorithm == "muon" else self.adamw_defaults
        filled = {**base, **group, "algorithm": algorithm}
        if algorithm == "muon":
            check_muon_group(filled)
            for p in filled["params"]:
                t = p[1] if isinstance(p, tuple) else p
                if isinstance(t, Tensor) and t.ndim < 2:
                    raise ValueError(
                        f"a param group with algorithm='muon' holds a {t.ndim}-D parameter of shape "
                        f"{tuple(t.shape)}; Muon needs >= 2-D (use algorithm='adamw')"
                    )
        else:
            check_adamw_group(filled)
        return filled

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError("params must be an ordered collection (list), not a set")
        params = list(params)
        algorithm = param_group.get("algorithm")
        if algorithm is not None:
            V.check_choice("algorithm", algorithm, ALGORITHMS)
            parts = [self._filled({**param_group, "params": params}, algorithm)]
        else:
            def ndim(p: Any) -> int:
                return (p[1] if isinstance(p, tuple) else p).ndim

            matrices = [p for p in params if ndim(p) >= 2]
            others = [p for p in params if ndim(p) < 2]
            parts = []
            if matrices:
                muon_part = {k: v for k, v in param_group.items() if not k.startswith("adamw_")}
                parts.append(self._filled({**muon_part, "params": matrices}, "muon"))
            if others:
                parts.append(self._filled({**_adamw_part(param_group), "params": others}, "adamw"))
            if not parts:
                parts = [self._filled({**param_group, "params": []}, "muon")]
        added = 0
        try:
            for part in parts:
                super().add_param_group(part)
                added += 1
        except Exception:
            del self.param_groups[len(self.param_groups) - added:]
            raise

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in ("muon_defaults", "adamw_defaults", "ns_dtype", "ns_method", "nonfinite", "skipped_steps", "process_group"):
            state[key] = getattr(self, key)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("algorithm", "muon")
            group.setdefault("decay", "lr")
            if group["algorithm"] == "adamw":
                for key, value in ADAMW_GROUP_DEFAULTS.items():
                    group.setdefault(key, value)
        for key, value in (("skipped_steps", 0), ("nonfinite", None), ("ns_dtype", None), ("ns_method", "standard"), ("process_group", None)):
            self.__dict__.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step: AdamW-rule groups through the fused AdamW kernel, Muon groups batched by shape."""
        loss, gathered = self._begin_step(closure, _recheck)
        if gathered is None:
            return loss

        # AdamW-rule kernels are chosen (and may refuse) before anything is updated.
        paths = [
            choose_path(params, group.get("foreach"), group.get("fused")) if group["algorithm"] == "adamw" else None
            for group, params, _ in gathered
        ]
        # Muon groups: momentum per group, then one orthogonalization call per (ns_steps, coefficients).
        pending: dict[tuple[Any, Any], list[tuple[dict[str, Any], Tensor, Tensor]]] = {}
        for (group, params, grads), path in zip(gathered, paths):
            if group["algorithm"] == "adamw":
                adamw_group_update(self.state, group, params, grads, path)
                continue
            if not params:
                continue
            bufs = []
            for p in params:
                st = self.state[p]
                if "momentum_buffer" not in st:
                    st["momentum_buffer"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                bufs.append(st["momentum_buffer"])
            updates = muon_momentum(bufs, grads, group["momentum"], group["nesterov"])
            key = (group["ns_steps"], _coefficients_key(group["ns_coefficients"]))
            pending.setdefault(key, []).extend((group, p, u) for p, u in zip(params, updates))

        for (steps, coefficients), items in pending.items():
            orthogonal = orthogonalize_distributed(
                [as_matrices(u) for _, _, u in items], steps=steps, coefficients=coefficients, dtype=self.ns_dtype,
                process_group=self.process_group, method=self.ns_method,
            )
            for (group, p, _), o in zip(items, orthogonal):
                _apply_muon_update(p, o.reshape(p.shape), group)
        return loss


_MUON_ONLY_KEYS = frozenset({"lr", "weight_decay", "momentum", "nesterov", "ns_steps", "ns_coefficients", "lr_scale"})


def _adamw_part(group: dict[str, Any]) -> dict[str, Any]:
    """The AdamW-rule half of a group without ``algorithm``: its ``lr``/``weight_decay`` are Muon's, so
    the AdamW half takes ``adamw_lr``/``adamw_weight_decay``/``adamw_betas``/``adamw_eps`` if the group
    sets them (else the optimizer's ``adamw_*`` defaults) and every other key as given."""
    part = {k: v for k, v in group.items() if k not in _MUON_ONLY_KEYS and not k.startswith("adamw_")}
    for key in ("lr", "weight_decay", "betas", "eps"):
        if f"adamw_{key}" in group:
            part[key] = group[f"adamw_{key}"]
    return part


def _apply_muon_update(p: Tensor, o: Tensor, group: dict[str, Any]) -> None:
    """``p ← p·(1 − lr·wd) − lr·scale·o`` (or ``p·(1 − wd)`` with decay="independent")."""
    lr, wd = group["lr"], group["weight_decay"]
    fan_out, fan_in = matrix_fans(p.shape)
    scale = lr_scale(group["lr_scale"], fan_out, fan_in)
    if wd != 0:
        p.mul_(1.0 - (wd if group["decay"] == "independent" else lr * wd))
    if isinstance(lr, Tensor):
        p.sub_(o.to(p.dtype) * (lr * scale).to(p.dtype))
    else:
        p.add_(o.to(p.dtype), alpha=-lr * scale)


def _recheck(group: dict[str, Any]) -> None:
    lr = group["lr"]
    if not isinstance(lr, Tensor):
        V.check_lr("lr", lr)
    V.check_nonnegative("weight_decay", group["weight_decay"])
