"""The guarded optimizer base: checks of gradients and state that run before any parameter or state is
touched, so a step that raises leaves everything as it was."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer


def param_label(group_index: int, index: int, group: dict, param: Tensor) -> str:
    """``parameter 'name' (shape ...)`` when the group carries ``param_names``, else
    ``parameter (group g, index i, shape ...)``."""
    names = group.get("param_names")
    if names is not None and index < len(names):
        return f"parameter {names[index]!r} (shape {tuple(param.shape)})"
    return f"parameter (group {group_index}, index {index}, shape {tuple(param.shape)})"


def check_state_matches_params(
    optimizer: Optimizer, keys: Sequence[str], *, same_dtype: bool, algorithm: str | None = None
) -> None:
    """Raise ``RuntimeError`` when a state tensor under ``keys`` of a parameter with a gradient differs from
    the parameter in shape, device or (``same_dtype``) dtype, before any kernel can half-run on it.

    The usual cause is converting or moving the model (``model.to(torch.bfloat16)``) after the optimizer
    has stepped. ``algorithm``, when given, limits the check to groups with that ``algorithm`` key.
    """
    for gi, group in enumerate(optimizer.param_groups):
        if algorithm is not None and group.get("algorithm", algorithm) != algorithm:
            continue
        for pi, p in enumerate(group["params"]):
            if p.grad is None or p not in optimizer.state:
                continue
            st = optimizer.state[p]
            for key in keys:
                t = st.get(key)
                if t is None:
                    continue
                if t.shape != p.shape or t.device != p.device or (same_dtype and t.dtype != p.dtype):
                    raise RuntimeError(
                        f"optimizer state {key!r} of {param_label(gi, pi, group, p)} is {t.dtype} on {t.device} "
                        f"with shape {tuple(t.shape)}, but the parameter is {p.dtype} on {p.device}: was the "
                        "model converted or moved after the optimizer stepped? Call "
                        "optimizer.load_state_dict(optimizer.state_dict()) to cast the state to the parameters, "
                        "or build the optimizer after converting the model. Nothing was modified."
                    )


def first_nonfinite(grads: Sequence[Tensor]) -> int | None:
    """Index of the first gradient holding a NaN or ±inf, or ``None``.

    One ``max |g|`` reduction per gradient (``_foreach_norm`` with ord=inf propagates NaN) and one host
    sync per device; the slow per-tensor search runs only when something is non-finite.
    """
    if not grads:
        return None
    by_device: dict[torch.device, list[int]] = {}
    for i, g in enumerate(grads):
        by_device.setdefault(g.device, []).append(i)
    bad = False
    for idx in by_device.values():
        maxes = torch._foreach_norm([grads[i] for i in idx], float("inf"))
        if not bool(torch.stack([m.float() for m in maxes]).isfinite().all()):
            bad = True
            break
    if not bad:
        return None
    for i, g in enumerate(grads):
        if not bool(g.isfinite().all()):
            return i
    return None


GroupGrads = list[tuple[dict, list[Tensor], list[Tensor]]]


def _local(g: Tensor) -> Tensor:
    """The rank-local part of a (possibly DTensor) gradient: the check itself issues no collective."""
    if torch.distributed.is_available():
        from torch.distributed.tensor import DTensor

        if isinstance(g, DTensor):
            return g.to_local()
    return g


def _on_any_rank(flag: bool, grads: Sequence[Tensor]) -> bool:
    """``flag`` OR-ed over the ranks that hold shards of ``grads`` (DTensor / FSDP2); else ``flag``.

    Each rank sees only its own shards, so without this one rank could skip the step (or raise) while
    the others step and then wait for it forever in the optimizer's collectives.
    """
    if not torch.distributed.is_available():
        return flag
    from torch.distributed.tensor import DTensor

    meshes = []
    for g in grads:
        if isinstance(g, DTensor) and g.device_mesh not in meshes:
            meshes.append(g.device_mesh)
    if not meshes:
        return flag
    result = torch.tensor(float(flag), device=torch.device(meshes[0].device_type))
    for mesh in meshes:
        for dim in range(mesh.ndim):
            torch.distributed.all_reduce(result, op=torch.distributed.ReduceOp.MAX, group=mesh.get_group(dim))
    return bool(result.item())


def gather_checked_grads(optimizer: Optimizer, nonfinite: str | None) -> GroupGrads | None:
    """Collect ``(group, params_with_grad, grads)`` for every group, checking all gradients first.

    Raises ``TypeError`` for a sparse or complex gradient, and with ``nonfinite="raise"`` a
    ``FloatingPointError`` naming the first parameter whose gradient holds NaN/inf. Returns ``None`` when
    ``nonfinite="skip"`` and a gradient is non-finite (the caller skips the whole step). Nothing is
    modified here, so an error leaves parameters and optimizer state untouched.
    """
    out: GroupGrads = []
    labels: list[tuple[int, int]] = []
    all_grads: list[Tensor] = []
    for gi, group in enumerate(optimizer.param_groups):
        params, grads = [], []
        for pi, p in enumerate(group["params"]):
            g = p.grad
            if g is None:
                continue
            if g.is_sparse or g.layout != torch.strided:
                raise TypeError(
                    f"{param_label(gi, pi, group, p)} has a sparse gradient (layout {g.layout}); "
                    "only dense gradients are supported"
                )
            if g.is_complex() or p.is_complex():
                raise TypeError(
                    f"{param_label(gi, pi, group, p)} has a complex gradient or value (dtype {g.dtype}); "
                    "only real parameters are supported"
                )
            params.append(p)
            grads.append(g)
            labels.append((gi, pi))
            all_grads.append(g)
        out.append((group, params, grads))
    if nonfinite is not None:
        bad = first_nonfinite([_local(g) for g in all_grads])
        if _on_any_rank(bad is not None, all_grads):
            if nonfinite == "skip":
                return None
            if bad is None:
                raise FloatingPointError(
                    "a gradient shard held by another rank is non-finite (NaN or inf); "
                    "no parameter or optimizer state was modified"
                )
            gi, pi = labels[bad]
            group = optimizer.param_groups[gi]
            raise FloatingPointError(
                f"{param_label(gi, pi, group, group['params'][pi])} has a non-finite gradient (NaN or inf); "
                "no parameter or optimizer state was modified"
            )
    return out


class GuardedOptimizer(Optimizer):
    """Base of :class:`optimizers.AdamW` and :class:`optimizers.Muon`: the checked start of a step.

    Subclasses set ``self.nonfinite`` and ``self.skipped_steps`` in ``__init__`` and call
    :meth:`_begin_step` first in ``step``. ``skipped_steps`` (steps skipped by ``nonfinite="skip"``)
    travels in ``state_dict()`` so a resumed run keeps counting.
    """

    nonfinite: str | None
    skipped_steps: int

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["skipped_steps"] = self.skipped_steps
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        skipped = state_dict.pop("skipped_steps", 0)
        super().load_state_dict(state_dict)
        self.skipped_steps = int(skipped)

    def _begin_step(
        self, closure: Callable[[], float] | None, recheck: Callable[[dict[str, Any]], None]
    ) -> tuple[float | None, GroupGrads | None]:
        """Run the closure, re-validate every group, and gather checked gradients.

        Returns ``(loss, gathered)``; ``gathered`` is ``None`` when the step is skipped (counted here).
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            recheck(group)
        gathered = gather_checked_grads(self, self.nonfinite)
        if gathered is None:
            self.skipped_steps += 1
        return loss, gathered
