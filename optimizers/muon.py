"""Muon for matrix parameters and the AdamW rule for everything else, in one ``torch.optim.Optimizer``.

Muon update of a matrix parameter ``W`` (fan_out × fan_in) with gradient ``G``, per step::

    B ← μ·B + (1 − μ)·G                        momentum, EMA form (state key ``momentum_buffer``)
    U ← (1 − μ)·G + μ·B   if nesterov else B
    O ← NS(U)                                  Newton–Schulz ≈ polar factor (optimizers.newton_schulz)
    W ← W·(1 − lr·wd)                          decay="lr" (default; uses the *unscaled* lr, as torch)
    W ← W·(1 − wd)                             decay="independent"
    W ← W − lr · scale(fan_out, fan_in) · O    scale: optimizers.lr_scale rule

Which matrices ``O`` is computed on, and their (fan_out, fan_in), is the group's ``matrix_view``
(:mod:`optimizers.matrix_view`). Without it the shape decides:

* 2-D: one ``(fan_out, fan_in)`` matrix, as ``nn.Linear`` stores it (a transposed weight such as Hugging
  Face's ``Conv1D`` needs ``matrix_view="in_out"``, else its fans are swapped);
* 3-D ``[k, m, n]``: a batch of k independent m×n matrices (stacked experts), lr scale from (m, n) (a
  ``nn.Conv1d`` kernel needs ``matrix_view="conv"``);
* ≥4-D (a conv kernel ``[out, in, kh, kw]``): the matrix ``(out, in·kh·kw)``, fan_out = out,
  fan_in = in·kh·kw.

Every step gathers the updates of all Muon groups and hands them to
:func:`optimizers.distributed.orthogonalize_distributed`, which (for plain tensors without a process group)
calls :func:`optimizers.orthogonalize.orthogonalize_updates`: same-shaped matrices (tall ones transposed to
wide first) stacked into one batched Newton–Schulz call.
Groups with ``algorithm="adamw"`` take the AdamW rule through torch's fused AdamW kernel (see
:mod:`optimizers.adamw`). A group without ``algorithm`` is split by ``ndim``: ≥ 2-D → Muon, else → AdamW
with the ``adamw_*`` settings (see :class:`Muon` for which keys such a group may set).

A step computes every new momentum buffer and every orthogonalized update before it writes anything, so a
step that raises leaves parameters and state as they were.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from . import _validation as V
from ._guarded import GuardedOptimizer, check_state_matches_params
from .adamw import ADAMW_GROUP_DEFAULTS, ADAMW_STATE_KEYS, adamw_group_update, check_adamw_group, choose_path
from .lr_scale import LR_SCALE_RULES, lr_scale
from .distributed import orthogonalize_distributed
from .matrix_view import as_matrices, check_matrix_view, matrix_fans
from .newton_schulz import NS_METHODS, check_coefficients
from .orthogonalize import coefficients_key as _coefficients_key
from .orthogonalize import Orthogonalize, orthogonalize_updates

__all__ = ["Muon", "matrix_fans", "muon_momentum", "orthogonalize_updates"]

ALGORITHMS = ("muon", "adamw")


def muon_momentum(
    bufs: list[Tensor], grads: list[Tensor], momentum: float, nesterov: bool
) -> tuple[list[Tensor], list[Tensor]]:
    """``(B', U)`` from buffers ``B`` and gradients ``G``: ``B' = μ·B + (1 − μ)·G``, then
    ``U = (1 − μ)·G + μ·B'`` (Nesterov) or ``U = B'``.

    Pure: ``bufs`` and ``grads`` are only read; ``B'`` and ``U`` are new memory. The step stores ``B'`` as
    the new state only once every update has been computed, so a step that raises leaves the state as it
    was, and the momentum is computed once. Without Nesterov ``U`` is a copy of ``B'``, so nothing
    downstream can alias (and normalize) the optimizer state.
    """
    # torch 2.11 has no DTensor rule for aten._foreach_lerp (2.13 has): FSDP2 states take the per-tensor path.
    if _foreach_ok(bufs, grads):
        new = torch._foreach_lerp(bufs, grads, 1.0 - momentum)
        return new, torch._foreach_lerp(grads, new, momentum) if nesterov else [b.clone() for b in new]
    new, out = [], []
    for b, g in zip(bufs, grads):
        nb = b.lerp(g.to(b.dtype), 1.0 - momentum)
        new.append(nb)
        out.append(g.to(b.dtype).lerp(nb, momentum) if nesterov else nb.clone())
    return new, out


def _foreach_ok(bufs: list[Tensor], grads: list[Tensor]) -> bool:
    return all(b.dtype == g.dtype and b.device == g.device and not _is_dtensor(b) for b, g in zip(bufs, grads))


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


MUON_ONLY_KEYS = frozenset({"momentum", "nesterov", "ns_steps", "ns_coefficients", "lr_scale", "matrix_view"})
"""Group keys only the Muon rule reads (``lr``, ``weight_decay``, ``decay`` belong to both rules)."""
ADAMW_ONLY_KEYS = frozenset({"betas", "eps", "amsgrad", "maximize", "foreach", "fused"})
"""Group keys only the AdamW rule reads (besides the ``adamw_*`` keys of a group without ``algorithm``)."""
_ADAMW_PREFIXED = ("lr", "weight_decay", "betas", "eps")


class Muon(GuardedOptimizer):
    """Muon (orthogonalized momentum) for matrices plus the AdamW rule for the rest; see the module doc.

    Args:
        params: parameters, ``(name, parameter)`` pairs (``model.named_parameters()``) or param groups
            (a group may carry ``param_names``, one name per parameter; names appear in error messages
            and in ``state_dict()``). Group keys:

            * ``algorithm="muon"``: ``lr``, ``momentum``, ``nesterov``, ``weight_decay``, ``decay``,
              ``ns_steps``, ``ns_coefficients``, ``lr_scale``, ``matrix_view`` (how each parameter is
              read as matrices; see :mod:`optimizers.matrix_view`; absent: the shape rule of the module
              doc). Missing keys come from the arguments below.
            * ``algorithm="adamw"``: ``lr``, ``betas``, ``eps``, ``weight_decay``, ``amsgrad``,
              ``maximize``, ``decay``; missing ones come from the ``adamw_*`` arguments. A ``momentum``
              key, if present, is β₁ (it overrides ``betas[0]``): it is the key torch's
              ``cycle_momentum`` schedulers (``OneCycleLR``, ``CyclicLR``) write into every group, since
              ``Muon.defaults`` holds ``momentum``.
            * keys of the other rule are ignored in these two (so one group list can describe a model
              for either optimizer), except ``adamw_*`` keys, which raise: write ``lr``, ``betas``, ...
            * no ``algorithm``: the group is split, ≥2-D parameters → Muon, 0-D/1-D → AdamW. If it holds
              only 0-D/1-D parameters, its ``lr``/``weight_decay`` are the AdamW rule's. If it holds
              both, ``lr``/``weight_decay`` are Muon's and the AdamW half takes ``adamw_lr``,
              ``adamw_weight_decay``, ``adamw_betas``, ``adamw_eps`` (or ``betas``, ``eps``, ...); such a
              group that sets ``lr`` (or ``weight_decay``) without ``adamw_lr`` (``adamw_weight_decay``)
              raises, because a Muon lr is not an AdamW lr. A key that no parameter of the group would use
              (``momentum`` with no matrix, ``betas`` with no vector) raises.

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
        process_group: under DDP, the data-parallel ``ProcessGroup`` (or ``torch.distributed.group.WORLD``)
            to split the Newton–Schulz work over: each rank orthogonalizes ~1/W of the matrices and the
            results are all-gathered. Every rank must step with the same (all-reduced) gradients.
            ``None`` (default): each rank orthogonalizes all its plain-tensor updates. FSDP2 (DTensor)
            parameters need nothing: their work is always split over their mesh.
        orthogonalize: replaces the local Newton–Schulz (:data:`optimizers.orthogonalize.Orthogonalize`,
            the ``orthogonalize=`` hook of :func:`optimizers.distributed.orthogonalize_distributed`): a
            callable mapping a list of whole plain ``[..., m, n]`` matrices to their orthogonalized
            matrices, e.g. to count the matrices a rank computes or to use an exact SVD. It gets no
            ``ns_steps``/``ns_coefficients``/``ns_dtype``/``ns_method``: it decides them. Under DDP and FSDP2
            the communication stays the same. ``None`` (default):
            :func:`optimizers.orthogonalize.orthogonalize_updates` with the group's settings.

    ``defaults`` (torch's) holds ``lr``, ``weight_decay`` and ``momentum`` (what torch's schedulers read);
    the per-rule defaults that fill a group are ``muon_defaults`` and ``adamw_defaults``. ``ns_dtype``,
    ``ns_method``, ``nonfinite``, ``process_group`` and ``orthogonalize`` apply to the whole optimizer and
    are not part of ``state_dict()``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Iterable[dict[str, Any]],
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
        orthogonalize: Orthogonalize | None = None,
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
        if orthogonalize is not None and not callable(orthogonalize):
            raise TypeError(
                f"orthogonalize must be a callable (list of matrices -> list of orthogonalized matrices) or None "
                f"for the default Newton–Schulz, got {type(orthogonalize).__name__}: {orthogonalize!r}"
            )
        self.process_group = process_group
        self.orthogonalize = orthogonalize
        self.skipped_steps = 0
        # torch fills every group with `defaults`; the per-rule defaults are applied in add_param_group.
        # `momentum` is here so that torch's cycle_momentum schedulers accept this optimizer.
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum})

    def _filled(self, group: dict[str, Any], algorithm: str) -> dict[str, Any]:
        """``group`` completed with the rule's defaults and validated (nothing is registered here)."""
        base = self.muon_defaults if algorithm == "muon" else self.adamw_defaults
        filled = {**base, **group, "algorithm": algorithm}
        names = filled.get("param_names")
        if algorithm == "muon":
            check_muon_group(filled)
            for i, p in enumerate(filled["params"]):
                label = _new_label(names, i, p)
                if p.ndim < 2:
                    raise ValueError(
                        f"a param group with algorithm='muon' holds {label}, which is {p.ndim}-D; Muon needs "
                        ">= 2-D (put it in a group with algorithm='adamw')"
                    )
                check_matrix_view(filled.get("matrix_view"), p.ndim, label)
        else:
            check_adamw_group(filled)
            if "momentum" in group:
                V.check_beta("momentum", group["momentum"])
                if "betas" in group and group["betas"][0] != group["momentum"]:
                    raise ValueError(
                        f"an algorithm='adamw' group sets momentum={group['momentum']!r} and "
                        f"betas={group['betas']!r}; momentum is β₁ there: write only betas"
                    )
        return filled

    def _split(self, group: dict[str, Any], params: list[Tensor], names: list[str] | None) -> list[dict[str, Any]]:
        """The Muon and AdamW halves of a group without ``algorithm`` (see the class doc for its keys)."""
        written = set(group) - {"params", "param_names"}
        mats = [i for i, p in enumerate(params) if p.ndim >= 2]
        vecs = [i for i, p in enumerate(params) if p.ndim < 2]

        def part(idx: list[int], keys: dict[str, Any]) -> dict[str, Any]:
            out = {**keys, "params": [params[i] for i in idx]}
            if names is not None:
                out["param_names"] = [names[i] for i in idx]
            return out

        def example(idx: list[int]) -> str:
            return _new_label(names, idx[0], params[idx[0]])

        if not params:
            return [self._filled(part([], group), "muon")]
        both = [k for k in ("betas", "eps") if k in written and f"adamw_{k}" in written]
        if both:
            raise ValueError(
                f"a param group without 'algorithm' sets both {both[0]} and adamw_{both[0]}; they name the same "
                "AdamW setting: write one"
            )
        adamw_keys = {k for k in written if k in ADAMW_ONLY_KEYS or k.startswith("adamw_")}
        if not mats:
            unused = sorted(written & MUON_ONLY_KEYS) + sorted(
                k for k in ("lr", "weight_decay") if k in written and f"adamw_{k}" in written
            )
            if unused:
                raise ValueError(
                    f"a param group without 'algorithm' holding only 0-D/1-D parameters (e.g. {example(vecs)}) "
                    f"sets {', '.join(unused)}, which no parameter in it would use; drop "
                    f"{'them' if len(unused) > 1 else 'it'} (its lr, weight_decay, betas and eps are the AdamW rule's)"
                )
            keys = {k: v for k, v in group.items() if k not in ("params", "param_names") and not k.startswith("adamw_")}
            for key in _ADAMW_PREFIXED:
                if f"adamw_{key}" in group:
                    keys[key] = group[f"adamw_{key}"]
            return [self._filled(part(vecs, keys), "adamw")]
        if not vecs:
            if adamw_keys:
                raise ValueError(
                    f"a param group without 'algorithm' holding only matrices (e.g. {example(mats)}) sets "
                    f"{', '.join(sorted(adamw_keys))}, which only the AdamW rule reads; drop them"
                )
            return [self._filled(part(mats, {k: v for k, v in group.items() if k != "param_names"}), "muon")]
        for key in ("lr", "weight_decay"):
            if key in written and f"adamw_{key}" not in written:
                raise ValueError(
                    f"a param group without 'algorithm' sets {key}={group[key]!r} and mixes matrices with "
                    f"0-D/1-D parameters (e.g. {example(vecs)}) that take the AdamW rule, for which Muon's "
                    f"{key} is not meant. Write adamw_{key}=... in the group for them, or put them in their "
                    "own group with algorithm='adamw'"
                )
        muon_keys = {k: v for k, v in group.items() if k not in adamw_keys and k != "param_names"}
        adamw_part = {
            k: v for k, v in group.items()
            if k not in MUON_ONLY_KEYS and k not in ("lr", "weight_decay", "param_names") and not k.startswith("adamw_")
        }
        for key in _ADAMW_PREFIXED:
            if f"adamw_{key}" in group:
                adamw_part[key] = group[f"adamw_{key}"]
        return [self._filled(part(mats, muon_keys), "muon"), self._filled(part(vecs, adamw_part), "adamw")]

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Validate, complete and add a group (split in two when it has no ``algorithm``).

        Every value is checked here (``lr=-1`` raises ``ValueError``); on any error nothing is added.
        The caller's dict is not modified.
        """
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError("a param group needs a 'params' entry")
        params, names = V.split_names(param_group["params"], param_group.get("param_names"))
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer params must be Tensors, got {type(p).__name__}")
        group = {**param_group, "params": params}
        if names is not None:
            group["param_names"] = names
        algorithm = group.get("algorithm")
        if algorithm is not None:
            V.check_choice("algorithm", algorithm, ALGORITHMS)
            prefixed = sorted(k for k in group if k.startswith("adamw_"))
            if prefixed:
                raise ValueError(
                    f"a param group with algorithm={algorithm!r} sets {', '.join(prefixed)}; adamw_* keys set "
                    "the AdamW half of a group without 'algorithm'. Write "
                    f"{', '.join(k[len('adamw_'):] for k in prefixed)} instead"
                    + (" in a group with algorithm='adamw'" if algorithm == "muon" else "")
                )
            parts = [self._filled(group, algorithm)]
        else:
            parts = self._split(group, params, names)
        added = 0
        try:
            for part in parts:
                user_momentum = "momentum" in part and (part["algorithm"] == "muon" or "momentum" in group)
                super().add_param_group(part)
                added += 1
                if not user_momentum:  # torch filled it from `defaults`; it is Muon's μ, not this group's β₁
                    self.param_groups[-1].pop("momentum", None)
        except Exception:
            del self.param_groups[len(self.param_groups) - added:]
            raise

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        for key in (
            "muon_defaults", "adamw_defaults", "ns_dtype", "ns_method", "nonfinite", "skipped_steps", "process_group",
            "orthogonalize",
        ):
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
        for key, value in (
            ("skipped_steps", 0), ("nonfinite", None), ("ns_dtype", None), ("ns_method", "standard"),
            ("process_group", None), ("orthogonalize", None),
        ):
            self.__dict__.setdefault(key, value)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One step: AdamW-rule groups through the fused AdamW kernel, Muon groups batched by shape.

        Order: every check, then every Muon update computed (momentum and Newton–Schulz, nothing written),
        then the AdamW-rule groups, then the Muon parameters and momentum buffers written.
        """
        loss, gathered = self._begin_step(closure, _recheck)
        if gathered is None:
            return loss
        check_state_matches_params(self, ADAMW_STATE_KEYS, same_dtype=True, algorithm="adamw")
        check_state_matches_params(self, ("momentum_buffer",), same_dtype=False, algorithm="muon")
        paths = [
            choose_path(params, group.get("foreach"), group.get("fused")) if group["algorithm"] == "adamw" else None
            for group, params, _ in gathered
        ]

        # Muon: momentum per group, then one orthogonalization call per (ns_steps, coefficients).
        pending: dict[tuple[Any, Any], list[tuple[dict[str, Any], Tensor, Tensor]]] = {}
        advance: list[tuple[list[Tensor], list[Tensor]]] = []
        for group, params, grads in gathered:
            if group["algorithm"] != "muon" or not params:
                continue
            bufs = [
                self.state[p]["momentum_buffer"] if "momentum_buffer" in self.state.get(p, {})
                else torch.zeros_like(p, memory_format=torch.preserve_format)
                for p in params
            ]
            new_bufs, updates = muon_momentum(bufs, grads, group["momentum"], group["nesterov"])
            advance.append((params, new_bufs))
            key = (group["ns_steps"], _coefficients_key(group["ns_coefficients"]))
            pending.setdefault(key, []).extend((group, p, u) for p, u in zip(params, updates))
        results: list[tuple[dict[str, Any], Tensor, Tensor]] = []
        for (steps, coefficients), items in pending.items():
            orthogonal = orthogonalize_distributed(
                [as_matrices(u, g.get("matrix_view")) for g, _, u in items], steps=steps,
                coefficients=coefficients, dtype=self.ns_dtype, process_group=self.process_group, method=self.ns_method,
                orthogonalize=self.orthogonalize,
            )
            results.extend((g, p, o) for (g, p, _), o in zip(items, orthogonal))

        for (group, params, grads), path in zip(gathered, paths):
            if group["algorithm"] == "adamw":
                adamw_group_update(self.state, _adamw_settings(group), params, grads, path)
        for params, new_bufs in advance:
            for p, b in zip(params, new_bufs):
                self.state[p]["momentum_buffer"] = b
        for group, p, o in results:
            _apply_muon_update(p, o.reshape(p.shape), group)
        return loss


def _new_label(names: list[str] | None, index: int, param: Tensor) -> str:
    """How a parameter of a group being added is named in errors."""
    if names is not None:
        return f"parameter {names[index]!r} (shape {tuple(param.shape)})"
    return f"parameter {index} of the group (shape {tuple(param.shape)})"


def _adamw_settings(group: dict[str, Any]) -> dict[str, Any]:
    """An AdamW-rule group as the kernel reads it: a ``momentum`` key (a scheduler's) is β₁."""
    if "momentum" not in group:
        return group
    return {**group, "betas": (group["momentum"], group["betas"][1])}


def _apply_muon_update(p: Tensor, o: Tensor, group: dict[str, Any]) -> None:
    """``p ← p·(1 − lr·wd) − lr·scale·o`` (or ``p·(1 − wd)`` with decay="independent")."""
    lr, wd = group["lr"], group["weight_decay"]
    fan_out, fan_in = matrix_fans(p.shape, group.get("matrix_view"))
    scale = lr_scale(group["lr_scale"], fan_out, fan_in)
    if wd != 0:
        p.mul_(1.0 - (wd if group["decay"] == "independent" else lr * wd))
    if isinstance(lr, Tensor):
        p.sub_(o.to(p.dtype) * (lr * scale).to(p.dtype))
    else:
        p.add_(o.to(p.dtype), alpha=-lr * scale)


def _recheck(group: dict[str, Any]) -> None:
    """Re-validation at step time of what a user or a scheduler may have edited since the group was added."""
    lr = group["lr"]
    if not isinstance(lr, Tensor):
        V.check_lr("lr", lr)
    V.check_nonnegative("weight_decay", group["weight_decay"])
    if "momentum" in group:
        V.check_beta("momentum", group["momentum"])
    if group.get("algorithm") == "adamw":
        V.check_betas("betas", group["betas"])
        V.check_nonnegative("eps", group["eps"])
    elif group.get("matrix_view") is not None:
        for i, p in enumerate(group["params"]):
            check_matrix_view(group["matrix_view"], p.ndim, _new_label(group.get("param_names"), i, p))
