"""Diagnostics of a parametrized model: is a layer's scale trapped at the noise–weight-decay equilibrium?

With decoupled weight decay, a weight whose update is noise of RMS ``ρ`` per step settles where decay
and noise balance: ``W ← (1 − lr·wd)·W − lr·u`` gives ``E‖W‖² = (1 − lr·wd)²·E‖W‖² + lr²ρ²·n``, i.e.

    RMS(W)_eq ≈ ρ · sqrt(lr / (2·wd))                        (decay="lr", the default)
    RMS(W)_eq ≈ ρ · lr / sqrt(2·wd)                          (decay="independent": W ← (1 − wd)·W − lr·u)

For AdamW ``ρ ≈ 1`` (the normalized update), the classic ``sqrt(lr/(2·wd))`` (Kosson et al. 2024).
For Muon the orthogonalized update of a ``fan_out × fan_in`` matrix has RMS ``1/sqrt(max(fan_out,
fan_in))`` before the lr-scale rule, so ``ρ = scale / sqrt(max(fan_out, fan_in))``: ``0.2`` with
``lr_scale="match_rms_adamw"`` (the equilibrium is AdamW's times 0.2), ``sqrt(max(1, fan_out/fan_in) /
max(fan_out, fan_in))`` with ``"spectral"``. Both assume uncorrelated successive updates (momentum
correlates them; the prediction is an order of magnitude, not a fit).

Learnable multipliers ``W_eff = s·diag(r)·W·diag(c)`` let the *effective* weight leave that
equilibrium: compare ``rms_w`` (pinned) with ``rms_w_eff`` (free), and the row/column-norm spread of
``W_eff`` (broad with multipliers, narrow without; arXiv 2601.04890 Fig. 3).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from .multipliers import multiplier_names
from .roles import Role, WeightLayout, weight_layout

__all__ = ["MULTIPLIER_KINDS", "equilibrium_rms", "update_rms", "quantile_ratio", "row_col_norms", "stats", "multiplier_scales"]

MULTIPLIER_KINDS = ("scalar", "row", "col")
"""The multipliers ``s``, ``r``, ``c`` as named in :func:`stats` entries (``mult_row_mean``, ...)."""

_STAT_ROLES = (Role.MATRIX, Role.EMBEDDING, Role.HEAD)


def equilibrium_rms(lr: float, weight_decay: float, *, update_rms: float = 1.0, decay: str = "lr") -> float:
    """Noise-only equilibrium RMS of a decayed weight: ``ρ·sqrt(lr/(2·wd))`` (``decay="lr"``) or
    ``ρ·lr/sqrt(2·wd)`` (``decay="independent"``), ``ρ = update_rms`` (default 1: AdamW).
    ``inf`` without decay (nothing pins the scale)."""
    if not lr >= 0 or not weight_decay >= 0 or not update_rms >= 0:
        raise ValueError(f"lr, weight_decay and update_rms must be >= 0, got {lr!r}, {weight_decay!r}, {update_rms!r}")
    if decay not in ("lr", "independent"):
        raise ValueError(f"decay must be 'lr' or 'independent', got {decay!r}")
    if weight_decay == 0:
        return math.inf
    if decay == "independent":
        return update_rms * lr / math.sqrt(2.0 * weight_decay)
    return update_rms * math.sqrt(lr / (2.0 * weight_decay))


def update_rms(algorithm: str, fan_out: int, fan_in: int, lr_scale: str = "spectral") -> float:
    """RMS of one update per unit lr: 1 for AdamW; ``scale/sqrt(max(fan_out, fan_in))`` for Muon,
    ``scale`` = ``sqrt(max(1, fan_out/fan_in))`` (``"spectral"``), ``0.2·sqrt(max(fan_out, fan_in))``
    (``"match_rms_adamw"``) or ``1`` (``"none"``). NaN for an unknown rule."""
    if algorithm == "adamw":
        return 1.0
    if algorithm != "muon":
        return math.nan
    big = max(fan_out, fan_in)
    scale = {"spectral": math.sqrt(max(1.0, fan_out / fan_in)), "match_rms_adamw": 0.2 * math.sqrt(big), "none": 1.0}.get(lr_scale)
    return math.nan if scale is None else scale / math.sqrt(big)


def quantile_ratio(values: Tensor, hi: float = 0.9, lo: float = 0.1) -> Tensor:
    """``quantile(values, hi) / quantile(values, lo)`` as a 0-d tensor (no host sync)."""
    q = torch.quantile(values.float().flatten(), torch.tensor([lo, hi], device=values.device))
    return q[1] / q[0]


def row_col_norms(weight: Tensor, layout: WeightLayout) -> tuple[Tensor, Tensor]:
    """L2 norms of every output row and every input column of ``weight`` (all matrices of a batch
    axis together, kernel taps included in both), as two 1-D tensors."""
    w = weight.detach().float()
    nd = w.ndim
    row, col = layout.row_dim % nd, layout.col_dim % nd
    keep_rows = {row} | ({layout.batch_dim % nd} if layout.batch_dim is not None else set())
    keep_cols = {col} | ({layout.batch_dim % nd} if layout.batch_dim is not None else set())
    sq = w.square()
    rows = sq.sum(dim=[d for d in range(nd) if d not in keep_rows]).sqrt().flatten()
    cols = sq.sum(dim=[d for d in range(nd) if d not in keep_cols]).sqrt().flatten()
    return rows, cols


def _groups_of(optimizer: Any) -> list[Mapping[str, Any]]:
    if optimizer is None:
        return []
    groups = getattr(optimizer, "param_groups", optimizer)
    if not isinstance(groups, Iterable):
        raise TypeError(f"optimizer must be an optimizer or a list of param groups, got {type(optimizer).__name__}")
    return list(groups)


def stats(mp: Any, optimizer: Any = None) -> dict[str, dict[str, Any]]:
    """Per weight of role matrix, embedding or head (keyed by the weight's FQN):

    * ``role``; ``rms_w``: RMS of the raw ``W`` (what decay pins); ``rms_w_eff``: RMS of ``W_eff``;
    * ``equilibrium_rms``: :func:`equilibrium_rms` from the weight's current group in ``optimizer``
      (its scheduled ``lr``, ``weight_decay``, ``decay``, and for Muon ``lr_scale``; the AdamW rule of
      a Muon optimizer reads its own keys); NaN without an optimizer or for a weight in none of its groups;
    * ``row_norm_spread`` / ``col_norm_spread``: 90 %/10 % quantile ratio of the row / column L2
      norms of ``W_eff`` (1 = all equal);
    * for each multiplier kind present (``scalar``, ``row``, ``col``): ``mult_<kind>_mean``,
      ``_min``, ``_max``; and ``mult_scale`` = product of their RMS (1 at init; absent without
      multipliers).

    All numbers are computed on the device and moved to the host in one transfer.

    Args:
        mp: a :class:`~parametrization.Parametrization` (not folded).
        optimizer: the optimizer (or its list of param groups) the lr/wd are read from; optional.
    """
    model = mp.model
    params = dict(model.named_parameters())
    group_of: dict[int, Mapping[str, Any]] = {}
    for g in _groups_of(optimizer):
        for p in g["params"]:
            group_of[id(p)] = g
    roles = mp.roles
    names: list[tuple[str, str]] = []  # (fqn, stat name) parallel to `values`
    values: list[Tensor] = []
    out: dict[str, dict[str, Any]] = {}
    for fqn, p in params.items():
        role = roles.get(fqn)
        if role not in {r.value for r in _STAT_ROLES}:
            continue
        module_name, _, pname = fqn.rpartition(".")
        module = model.get_submodule(module_name) if module_name else model
        layout = weight_layout(module, pname) or WeightLayout()
        w_eff = getattr(module, pname)  # W_eff for a multiplied parameter, W otherwise
        entry: dict[str, Any] = {"role": role, "equilibrium_rms": math.nan}
        out[fqn] = entry
        rows, cols = row_col_norms(w_eff, layout)
        names_of = multiplier_names(pname)
        mults = [(kind, module._parameters.get(name)) for kind, name in zip(MULTIPLIER_KINDS, names_of)]
        mults = [(k, m) for k, m in mults if m is not None]
        pieces = {
            "rms_w": p.detach().float().square().mean().sqrt(),
            "rms_w_eff": w_eff.detach().float().square().mean().sqrt(),
            "row_norm_spread": quantile_ratio(rows),
            "col_norm_spread": quantile_ratio(cols),
        }
        scale = None
        for kind, m in mults:
            m = m.detach().float()
            pieces[f"mult_{kind}_mean"], pieces[f"mult_{kind}_min"], pieces[f"mult_{kind}_max"] = m.mean(), m.min(), m.max()
            rms = m.square().mean().sqrt()
            scale = rms if scale is None else scale * rms
        if scale is not None:
            pieces["mult_scale"] = scale
        for key, value in pieces.items():
            names.append((fqn, key))
            values.append(value.reshape(()))
        g = group_of.get(id(p))
        if g is not None:
            nd = p.ndim
            fan_out = p.shape[layout.row_dim % nd] if nd >= 2 else 1
            fan_in = p.numel() // (fan_out * (p.shape[layout.batch_dim % nd] if layout.batch_dim is not None else 1)) if nd >= 2 else 1
            algorithm = g.get("algorithm", "muon" if nd >= 2 and "momentum" in g else "adamw")
            rho = update_rms(algorithm, fan_out, fan_in, g.get("lr_scale", "spectral"))
            entry["equilibrium_rms"] = equilibrium_rms(float(g["lr"]), float(g["weight_decay"]), update_rms=rho,
                                                       decay=g.get("decay", "lr"))
    if values:
        host = torch.stack([v.to(values[0].device) for v in values]).cpu().tolist()  # the one transfer
        for (fqn, key), value in zip(names, host):
            out[fqn][key] = value
    return out


def multiplier_scales(table: Mapping[str, Mapping[str, Any]]) -> dict[str, float]:
    """Geometric mean, over the weights of each role, of ``mult_scale`` in a :func:`stats` table
    (weights without multipliers left out; empty when none has any)."""
    by_role: dict[str, list[float]] = {}
    for entry in table.values():
        if "mult_scale" in entry:
            by_role.setdefault(entry["role"], []).append(math.log(max(entry["mult_scale"], 1e-30)))
    return {role: math.exp(sum(logs) / len(logs)) for role, logs in by_role.items()}
