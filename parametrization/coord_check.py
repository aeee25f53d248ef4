"""muP coordinate check: train a few steps at several widths and record per-layer activation RMS.

Under muP the RMS of every layer's output stays flat as the width grows; under the standard
parametrization (same lr at every width) hidden and output activations grow after the first
updates, because an Adam step moves every one of ``fan_in`` weights by about ``lr`` in a
direction correlated with the input (Yang et al., Tensor Programs V, §"coordinate check").

:func:`coord_check` parametrizes each model with :func:`parametrization.parametrize`: with
``mup=True`` the base model is ``make_model(base_width)`` (per-matrix fan-in ratios, so
fixed-size input layers keep m = 1); with ``mup=False`` nothing is width-scaled. The result's
:meth:`CoordCheckResult.slopes` gives the log-log slope of RMS against width per layer:
≈ 0 is flat.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ["coord_check", "CoordCheckResult", "loglog_slope"]


def loglog_slope(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Least-squares slope of ``log y`` against ``log x`` (0 means ``y`` is flat in ``x``)."""
    if len(xs) != len(ys) or len(xs) < 2:
        raise ValueError(f"need at least two matching points, got {len(xs)} x and {len(ys)} y")
    lx = [math.log(x) for x in xs]
    ly = [math.log(max(y, 1e-30)) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    var = sum((a - mx) ** 2 for a in lx)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / var


@dataclass
class CoordCheckResult:
    """Activation RMS per (width, step, module); ``records`` is a list of plain dicts."""

    widths: list[int]
    steps: int
    mup: bool
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def modules(self) -> list[str]:
        seen: dict[str, None] = {}
        for r in self.records:
            seen.setdefault(r["module"], None)
        return list(seen)

    def rms(self, module: str, step: int = -1) -> list[float]:
        """RMS of ``module``'s output at ``step`` (negative counts from the end), one per width."""
        step = step % self.steps
        by_width = {r["width"]: r["rms"] for r in self.records if r["module"] == module and r["step"] == step}
        if len(by_width) != len(self.widths):
            raise KeyError(f"no records for module {module!r} at step {step}")
        return [by_width[w] for w in self.widths]

    def slopes(self, step: int = -1) -> dict[str, float]:
        """Module → log-log slope of its output RMS against width at ``step``."""
        return {m: loglog_slope(self.widths, self.rms(m, step)) for m in self.modules}

    def to_json(self) -> dict[str, Any]:
        return {"widths": self.widths, "steps": self.steps, "mup": self.mup, "records": self.records, "slopes_last_step": self.slopes()}

    def table(self, step: int = -1) -> Any:
        """A rich table: one row per module, RMS per width at ``step``, and the slope."""
        from rich.table import Table

        t = Table(title=f"coord check ({'muP' if self.mup else 'SP'}), step {step % self.steps}")
        t.add_column("module")
        for w in self.widths:
            t.add_column(f"w={w}", justify="right")
        t.add_column("slope", justify="right")
        for m in self.modules:
            vals = self.rms(m, step)
            t.add_row(m, *(f"{v:.3g}" for v in vals), f"{loglog_slope(self.widths, vals):+.2f}")
        return t


def _default_loss(output: Tensor, target: Tensor) -> Tensor:
    if target.dtype in (torch.int64, torch.int32):
        return F.cross_entropy(output.reshape(-1, output.shape[-1]), target.reshape(-1))
    return F.mse_loss(output, target)


def coord_check(
    make_model: Callable[[int], nn.Module],
    widths: Sequence[int],
    steps: int = 4,
    *,
    batch: tuple[Tensor, Tensor],
    loss_fn: Callable[[Tensor, Tensor], Tensor] = _default_loss,
    mup: bool = True,
    base_width: int | None = None,
    lr: float = 1e-2,
    multipliers: Any = "none",
    make_optimizer: Callable[[list[dict[str, Any]]], torch.optim.Optimizer] | None = None,
    optimizer: str = "adamw",
    seed: int = 0,
    parametrize_kwargs: dict[str, Any] | None = None,
    print_table: bool = False,
) -> CoordCheckResult:
    """Train ``steps`` steps at each width and record the RMS of every leaf module's output.

    Args:
        make_model: width → a fresh plain model.
        widths: the widths to compare (at least two).
        steps: training steps per width; the RMS is recorded in the forward of every step
            (step 0 is the initialization).
        batch: ``(inputs, targets)`` used at every step.
        loss_fn: ``(output, targets) → scalar``; default cross-entropy for integer targets, else MSE.
        mup: apply muP (base model ``make_model(base_width)``) or not (standard parametrization).
        base_width: the muP base width; default ``min(widths)``.
        lr: the (base-width) learning rate.
        multipliers: placement passed to ``parametrize`` (default ``"none"``).
        make_optimizer: param groups → optimizer; default ``torch.optim.AdamW``.
        optimizer: ``"adamw"`` or ``"muon"``, the kind of groups to build.
        seed: torch seed set before building each model.
        parametrize_kwargs: extra arguments of ``parametrize`` (e.g. ``roles``; ``init_std`` is
            used only with ``mup=True``, since it is a muP rule).
        print_table: print the rich table of the last step.
    """
    from .parametrize import parametrize

    widths = list(widths)
    if len(widths) < 2 or any(isinstance(w, bool) or not isinstance(w, int) or w <= 0 for w in widths):
        raise ValueError(f"widths must be at least two positive ints, got {widths!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive int, got {steps!r}")
    base = base_width if base_width is not None else min(widths)
    inputs, targets = batch
    result = CoordCheckResult(widths=widths, steps=steps, mup=mup)
    for width in widths:
        torch.manual_seed(seed)
        model = make_model(width)
        base_model = make_model(base) if mup else None
        extra = dict(parametrize_kwargs or {})
        if not mup:
            extra.pop("init_std", None)
        mp = parametrize(model, multipliers, base_width=base_model, **extra)
        groups = mp.param_groups(optimizer, lr=lr, weight_decay=0.0)  # type: ignore[arg-type]
        opt = make_optimizer(groups) if make_optimizer is not None else torch.optim.AdamW(groups)
        current = {"step": 0}
        handles = []
        for name, module in model.named_modules():
            if name and not any(True for _ in module.children()):
                handles.append(module.register_forward_hook(_recorder(result, width, name, current)))
        try:
            for step in range(steps):
                current["step"] = step
                opt.zero_grad(set_to_none=True)
                loss = loss_fn(model(inputs), targets)
                loss.backward()
                opt.step()
        finally:
            for h in handles:
                h.remove()
    if print_table:
        from rich.console import Console

        Console().print(result.table())
    return result


def _recorder(result: CoordCheckResult, width: int, name: str, current: dict[str, int]) -> Callable[..., None]:
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        if isinstance(output, Tensor) and output.is_floating_point():
            rms = output.detach().float().pow(2).mean().sqrt().item()
            result.records.append({"width": width, "step": current["step"], "module": name, "rms": rms})

    return hook
