"""AdamW with torch's semantics and kernels, plus lr-independent weight decay and input checks.

Per parameter, with gradient ``g`` (``-g`` when ``maximize``), step ``t`` and group settings::

    p ← p·(1 − lr·wd)                     decay="lr" (default; torch.optim.AdamW)
    p ← p·(1 − wd)                        decay="independent" (decay strength apart from the lr schedule)
    m ← β₁·m + (1 − β₁)·g;   v ← β₂·v + (1 − β₂)·g²      (v̂ = max(v̂, v) with amsgrad)
    p ← p − lr · (m / (1 − β₁ᵗ)) / (sqrt(v / (1 − β₂ᵗ)) + eps)

The moment update and decoupled decay run in torch's own kernels through the functional
``torch.optim.adam.adam``: the fused kernel (``torch._fused_adamw_``; CUDA, CPU and other fused-capable
devices, floating dtypes) when possible, else the foreach kernels, else a per-tensor loop. Independent
decay is one ``_foreach_mul_`` before the kernel, which then gets ``weight_decay=0``.

State keys match ``torch.optim.AdamW`` (``step``, ``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``), so a
``state_dict`` moves between the two mid-run (a torch optimizer ignores ``decay``: only ``"lr"`` means the
same thing there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim.adam import adam as _torch_adam
from torch.optim.optimizer import _get_foreach_kernels_supported_devices, _get_fused_kernels_supported_devices

from . import _validation as V
from ._guarded import GuardedOptimizer, check_state_matches_params

__all__ = ["AdamW", "adamw_group_update", "check_adamw_group", "choose_path"]

ADAMW_GROUP_DEFAULTS: dict[str, Any] = {"amsgrad": False, "maximize": False, "decay": "lr"}

ADAMW_STATE_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
"""State tensors the kernels need in the parameter's own dtype and device."""


def check_adamw_group(group: dict[str, Any], prefix: str = "") -> None:
    """Validate the AdamW-rule keys of a (fully filled) param group; raises ``ValueError``/``TypeError``."""
    V.check_lr(f"{prefix}lr", group["lr"])
    V.check_betas(f"{prefix}betas", group["betas"])
    V.check_nonnegative(f"{prefix}eps", group["eps"])
    V.check_nonnegative(f"{prefix}weight_decay", group["weight_decay"])
    V.check_bool("amsgrad", group["amsgrad"])
    V.check_bool("maximize", group["maximize"])
    V.check_choice("decay", group["decay"], V.DECAY_MODES)
    if group["decay"] == "independent" and group["weight_decay"] > 1:
        raise ValueError(f"Invalid weight_decay: {group['weight_decay']!r} (must be <= 1 with decay='independent')")
    V.check_optional_bool("foreach", group.get("foreach"))
    V.check_optional_bool("fused", group.get("fused"))
    if group.get("foreach") and group.get("fused"):
        raise ValueError("foreach=True and fused=True cannot be set together")


Path = Literal["fused", "foreach", "single"]


def choose_path(params: list[Tensor], foreach: bool | None, fused: bool | None) -> Path:
    """The implementation for these params: fused when allowed (and not refused), else foreach, else single.

    Raises ``RuntimeError`` when ``fused=True`` but a parameter's device or dtype has no fused kernel.
    """
    fused_devices = _get_fused_kernels_supported_devices()
    unfusable = [p for p in params if not (p.device.type in fused_devices and p.is_floating_point())]
    fused_ok = not unfusable
    if fused:
        if unfusable:
            bad = unfusable[0]
            raise RuntimeError(
                f"fused=True needs floating-point params on {fused_devices}, got {bad.dtype} on {bad.device}"
            )
        return "fused"
    if fused is None and not foreach and fused_ok:
        return "fused"
    foreach_ok = all(p.device.type in _get_foreach_kernels_supported_devices() for p in params)
    if foreach is not False and foreach_ok:
        return "foreach"
    return "single"


def adamw_group_update(
    state: dict[Tensor, dict[str, Any]],
    group: dict[str, Any],
    params: list[Tensor],
    grads: list[Tensor],
    path: Path | None = None,
) -> None:
    """One AdamW step for ``params`` of ``group`` (gradients already checked). Creates missing state.

    ``group`` needs lr, betas, eps, weight_decay, amsgrad, maximize, decay and may carry foreach/fused;
    ``path`` is :func:`choose_path`'s answer (computed here when ``None``). ``grads`` are read only.
    """
    if not params:
        return
    if path is None:
        path = choose_path(params, group.get("foreach"), group.get("fused"))
    amsgrad = group["amsgrad"]
    exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], []
    for p in params:
        st = state[p]
        if len(st) == 0:
            st["step"] = (
                torch.zeros((), dtype=torch.float32, device=p.device)
                if path == "fused"
                else torch.tensor(0.0, dtype=torch.float32)
            )
            st["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if amsgrad and "max_exp_avg_sq" not in st:
            st["max_exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if path == "fused" and (st["step"].device != p.device or st["step"].dtype != torch.float32):
            # A state_dict from a non-fused optimizer keeps `step` on the CPU; the fused kernel needs it beside p.
            st["step"] = st["step"].to(device=p.device, dtype=torch.float32)
        exp_avgs.append(st["exp_avg"])
        exp_avg_sqs.append(st["exp_avg_sq"])
        if amsgrad:
            max_exp_avg_sqs.append(st["max_exp_avg_sq"])
        steps.append(st["step"])

    lr, wd = group["lr"], group["weight_decay"]
    if group["decay"] == "independent":
        if wd != 0:
            torch._foreach_mul_(params, 1.0 - wd)
        wd = 0.0
    if path == "foreach" and isinstance(lr, Tensor):
        lr = float(lr)  # torch's foreach path takes a tensor lr only when capturable
    beta1, beta2 = group["betas"]
    _torch_adam(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        steps,
        foreach=path == "foreach",
        fused=path == "fused",
        decoupled_weight_decay=True,
        amsgrad=amsgrad,
        beta1=beta1,
        beta2=beta2,
        lr=lr,
        weight_decay=wd,
        eps=group["eps"],
        maximize=group["maximize"],
    )


class AdamW(GuardedOptimizer):
    """AdamW (decoupled weight decay) on torch's fused / foreach / per-tensor kernels.

    Args:
        params: parameters or param groups. Group keys: ``lr``, ``betas``, ``eps``, ``weight_decay``,
            ``amsgrad``, ``maximize``, ``decay`` (each overrides the default below); a group with an
            ``algorithm`` key other than ``"adamw"`` is rejected.
        lr: learning rate, a float or a 0-d tensor (default 1e-3).
        betas: (β₁, β₂), each in [0, 1) (default (0.9, 0.999)).
        eps: added to the denominator (default 1e-8).
        weight_decay: decoupled decay coefficient, may be 0 per group (default 1e-2).
        amsgrad: keep the running max of the second moment (default False).
        maximize: ascend instead of descend (default False).
        decay: ``"lr"`` — ``p ← p·(1 − lr·wd)`` as torch; ``"independent"`` — ``p ← p·(1 − wd)``, so the
            decay strength does not follow the lr schedule (then wd is typically ~1e-4..1e-5).
        nonfinite: ``None`` (no check, like torch), ``"raise"`` (``FloatingPointError`` naming the first
            parameter with a NaN/inf gradient) or ``"skip"`` (skip the whole step; counted in
            ``skipped_steps``). The check runs before any parameter or state is touched.
        foreach, fused: implementation choice; ``None`` picks fused where the device and dtype allow, then
            foreach, then the per-tensor loop.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float | Tensor = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        *,
        amsgrad: bool = False,
        maximize: bool = False,
        decay: Literal["lr", "independent"] = "lr",
        nonfinite: Literal["raise", "skip"] | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
    ) -> None:
        defaults = dict(
            lr=lr, betas=tuple(betas) if isinstance(betas, list) else betas, eps=eps, weight_decay=weight_decay,
            amsgrad=amsgrad, maximize=maximize, decay=decay, foreach=foreach, fused=fused,
        )
        check_adamw_group(defaults)
        V.check_choice("nonfinite", nonfinite, V.NONFINITE_MODES)
        self.nonfinite = nonfinite
        self.skipped_steps = 0
        super().__init__(params, defaults)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, got {type(param_group).__name__}")
        algorithm = param_group.get("algorithm", "adamw")
        if algorithm != "adamw":
            raise ValueError(
                f"Invalid algorithm: {algorithm!r} in a param group given to optimizers.AdamW "
                "(only 'adamw'; use optimizers.Muon for 'muon' groups)"
            )
        params, names = V.split_names(param_group["params"], param_group.get("param_names"))
        param_group = {**param_group, "params": params}
        if names is not None:
            param_group["param_names"] = names
        check_adamw_group({**self.defaults, **param_group})
        super().add_param_group(param_group)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["nonfinite"] = self.nonfinite
        state["skipped_steps"] = self.skipped_steps
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # state_dicts from torch.optim.AdamW lack our keys
            for key, value in ADAMW_GROUP_DEFAULTS.items():
                group.setdefault(key, value)
            group.setdefault("foreach", None)
            group.setdefault("fused", None)
        self.__dict__.setdefault("nonfinite", None)
        self.__dict__.setdefault("skipped_steps", 0)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One AdamW step over every group; see the class docstring for the update."""
        loss, gathered = self._begin_step(closure, _recheck)
        if gathered is None:
            return loss
        # Every group's kernel is chosen (and may refuse) and the state checked before any group is updated.
        check_state_matches_params(self, ADAMW_STATE_KEYS, same_dtype=True)
        paths = [choose_path(params, group.get("foreach"), group.get("fused")) for group, params, _ in gathered]
        for (group, params, grads), path in zip(gathered, paths):
            adamw_group_update(self.state, group, params, grads, path)
        return loss


def _recheck(group: dict[str, Any]) -> None:
    """Cheap re-validation at step time (a user or scheduler may have edited the group)."""
    lr = group["lr"]
    if not isinstance(lr, Tensor):
        V.check_lr("lr", lr)
    V.check_nonnegative("weight_decay", group["weight_decay"])
    V.check_nonnegative("eps", group["eps"])
    V.check_betas("betas", group["betas"])
