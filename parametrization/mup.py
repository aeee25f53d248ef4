"""muP width rules (Yang et al., Tensor Programs V, Table 8 formulation), as pure functions.

For a width multiplier ``m = width / base_width`` (1 at the base width, where muP equals the
standard parametrization):

* hidden matrices trained by Adam(W): learning rate × 1/m (:func:`adamw_lr_factor`);
* hidden matrices trained by Muon: no extra factor. Muon's own spectral scale
  ``sqrt(max(1, fan_out/fan_in))`` already makes its update width-invariant, and applying both
  would scale twice (the bug Megatron-LM PR #3715 fixed);
* output logits × 1/m, a fixed forward multiplier on the head (:func:`output_factor`). Where
  the head carries a learnable multiplier, the factor becomes that multiplier's initial value;
* hidden init std ∝ 1/sqrt(fan_in) (:func:`hidden_init_std`): PyTorch's default Linear/Conv
  init already is; a model that draws every matrix with one constant std σ (nanoGPT's 0.02) gets
  σ/sqrt(m) when ``init_std=σ`` is passed to :func:`parametrization.parametrize`;
* embeddings, vectors and multipliers: unchanged.

The width of a hidden matrix is its fan-in. With an integer ``base_width`` every hidden
matrix gets the same ``m = width / base_width``, where ``width`` defaults to the head's fan-in
(the residual-stream width of a transformer). With a base *model* (as ``mup`` does), each matrix
gets ``m = fan_in / base_fan_in`` from the parameter of the same FQN in the base model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn as nn
from torch import Tensor

from .owners import Owner
from .roles import Role, RoleTable, WeightLayout, weight_layout

__all__ = [
    "WidthMultipliers",
    "adamw_lr_factor",
    "output_factor",
    "hidden_init_std",
    "fan_in",
    "width_multipliers",
    "MupPlan",
    "plan",
    "redraw_hidden_init",
]


def adamw_lr_factor(m: float) -> float:
    """Adam(W) learning-rate factor of a hidden matrix at width multiplier ``m``: ``1/m``."""
    return 1.0 / m


def output_factor(m: float) -> float:
    """Fixed forward factor on the output logits at width multiplier ``m``: ``1/m``."""
    return 1.0 / m


def hidden_init_std(base_std: float, m: float) -> float:
    """Init std of a hidden matrix whose std at the base width is ``base_std``: ``base_std/sqrt(m)``."""
    return base_std / math.sqrt(m)


def fan_in(weight: Tensor, layout: WeightLayout) -> int:
    """Input features per output feature of one matrix: ``numel / (shape[row_dim]·shape[batch_dim])``.

    Kernel taps count as inputs; a batch axis (stacked experts) indexes separate matrices.
    """
    per_matrix = weight.numel() // weight.shape[layout.row_dim % weight.ndim]
    if layout.batch_dim is not None:
        per_matrix //= weight.shape[layout.batch_dim % weight.ndim]
    return per_matrix


@dataclass(frozen=True)
class WidthMultipliers:
    """Per-FQN width multipliers of hidden matrices, and the head's output multiplier."""

    matrices: dict[str, float] = field(default_factory=dict)
    head: float = 1.0


def width_multipliers(
    model: nn.Module,
    roles: RoleTable,
    layouts: dict[str, WeightLayout],
    base_width: int | nn.Module,
    width: int | None = None,
) -> WidthMultipliers:
    """Width multiplier of every hidden matrix and of the head.

    Args:
        model: the model being parametrized.
        roles: its role table.
        layouts: FQN → weight layout of matrix/head weights (raw parameters default to rows 0).
        base_width: an int (the width at which the hyperparameters were tuned), or a base model
            of the same architecture at that width.
        width: the model's width when ``base_width`` is an int; default: the head's fan-in.

    Raises:
        ValueError: non-positive widths, no head to read the width from, or a base model
            missing a parameter.
    """
    params = dict(model.named_parameters())
    head = [fqn for fqn, r in roles.roles.items() if r is Role.HEAD]

    def _fan_in(fqn: str, p: Tensor) -> int:
        return fan_in(p, layouts.get(fqn, WeightLayout()))

    matrices = [fqn for fqn, r in roles.roles.items() if r is Role.MATRIX]
    if isinstance(base_width, nn.Module):
        base_params = dict(base_width.named_parameters())
        out: dict[str, float] = {}
        for fqn in matrices + head:
            if fqn not in base_params:
                raise ValueError(f"base_width model has no parameter {fqn!r}; it must have the same architecture")
            out[fqn] = _fan_in(fqn, params[fqn]) / _fan_in(fqn, base_params[fqn])
        head_m = out.pop(head[0]) if head else 1.0
        return WidthMultipliers(matrices=out, head=head_m)
    if isinstance(base_width, bool) or not isinstance(base_width, int) or base_width <= 0:
        raise ValueError(f"base_width must be a positive int or a base model, got {base_width!r}")
    if width is None:
        if not head:
            raise ValueError("base_width is set but the model has no head to read its width from; pass width=...")
        width = _fan_in(head[0], params[head[0]])
    if isinstance(width, bool) or not isinstance(width, int) or width <= 0:
        raise ValueError(f"width must be a positive int, got {width!r}")
    m = width / base_width
    return WidthMultipliers(matrices={fqn: m for fqn in matrices}, head=m)


@dataclass(frozen=True)
class MupPlan:
    """What muP will do to a model: the width multipliers, and the head's fixed output factor.

    ``head`` is ``(owner of the head weight, factor)``, or ``None`` when the factor is 1.
    """

    width: WidthMultipliers
    head: tuple[Owner, float] | None

    def lr_factor(self, fqn: str) -> float:
        """The AdamW lr factor 1/m of the hidden matrix ``fqn`` (1 for anything else)."""
        m = self.width.matrices.get(fqn)
        return 1.0 if m is None else adamw_lr_factor(m)


def _layout(owners: list[Owner]) -> WeightLayout | None:
    for o in owners:
        lay = weight_layout(o.module, o.param_name)
        if lay is not None:
            return lay
    return None


def _readout_owner(owners: list[Owner]) -> Owner | None:
    """The Linear-like module that reads out through the head weight (not its embedding use)."""
    for o in reversed(owners):
        if weight_layout(o.module, o.param_name) is not None and not isinstance(o.module, (nn.Embedding, nn.EmbeddingBag)):
            return o
    return None


def plan(
    model: nn.Module,
    table: RoleTable,
    owners: dict[str, list[Owner]],
    base_width: int | nn.Module,
    width: int | None = None,
) -> MupPlan:
    """Check and compute the muP rules for ``model`` without changing it.

    Raises:
        ValueError: bad widths (see :func:`width_multipliers`), or a head that needs an output
            factor but is not the weight of a module of known layout.
    """
    layouts = {fqn: lay for fqn in table.roles if (lay := _layout(owners[fqn])) is not None}
    mults = width_multipliers(model, table, layouts, base_width, width)
    heads = [fqn for fqn, r in table.roles.items() if r is Role.HEAD]
    head = None
    if heads and mults.head != 1.0:
        owner = _readout_owner(owners[heads[0]])
        if owner is None:
            raise ValueError(
                f"muP needs a fixed output factor on the head {heads[0]!r}, but it is not the weight "
                "of a Linear-like module; give it the role 'matrix' or register its module type"
            )
        head = (owner, output_factor(mults.head))
    return MupPlan(mults, head)


@torch.no_grad()
def redraw_hidden_init(owners: dict[str, list[Owner]], width: WidthMultipliers, init_std: float) -> None:
    """Redraw every hidden matrix from N(0, (init_std/sqrt(m))²) (:func:`hidden_init_std`)."""
    for fqn, m in width.matrices.items():
        o = owners[fqn][0]
        o.module._parameters[o.param_name].normal_(0.0, hidden_init_std(init_std, m))
