"""Role → optimizer settings, and the grouping of parameters into optimizer param groups.

Default table (``lr``/``weight_decay`` are the global values passed to ``param_groups``):

============  =========================  ====================  ===================================
role          algorithm                  learning rate         weight decay
============  =========================  ====================  ===================================
matrix        muon with optimizer="muon" lr (Muon) or lr/m     weight_decay
              else adamw                 (AdamW, muP)
embedding     adamw (never muon)         adamw_lr              weight_decay
head          adamw (never muon)         adamw_lr              weight_decay
vector        adamw                      adamw_lr              0
multiplier    adamw (never muon)         multiplier_lr         multiplier_weight_decay (2e-3)
============  =========================  ====================  ===================================

Reasons:

* matrices are what Muon is for; embeddings and the head are not (their rows are looked up or
  read out one at a time, Muon's orthogonalization is wrong for them; Jordan 2024);
* norm weights and biases are ≤1-D, and weight decay on them only pulls gains toward 0;
* multipliers: AdamW, because Muon rejects ≤1-D tensors; a small decoupled weight decay 2e-3 is
  the paper's cure for symmetry drift (Velikanov et al. §4.1). They are excluded from global
  gradient clipping (§4.3) by :meth:`Parametrization.clip_grad_norm_`;
* ``adamw_lr`` defaults to ``lr``: right when Muon runs with ``lr_scale="match_rms_adamw"``
  (its lr is then an AdamW-equivalent lr, Liu et al. 2025) and trivially with
  ``optimizer="adamw"``; with Muon's spectral scale pass ``adamw_lr`` explicitly;
* ``multiplier_lr`` defaults to ``adamw_lr``: multipliers are vector-like, initialized at 1 like
  norm weights, and the paper gives no value for its main runs (its scalar-multiplier MLP test
  used 1e-2 without decay).

Betas and eps default to (0.9, 0.95) and 1e-8 for every AdamW group (the usual LM-pretraining
choice), and are overridable.

Overrides: ``rules={key: {setting: value}}`` where ``key`` is a role name (``"vector"``) or a
glob over parameter FQNs (``"*.router.weight"``); settings are ``algorithm``, ``lr``,
``lr_scale`` (multiplies the lr), ``weight_decay``, ``betas``, ``eps``. Role entries apply first,
then glob entries in order (later wins). All learning rates are base-width values: the muP
factor 1/m is applied last, to AdamW hidden matrices only.

Grouping: parameters whose (role, algorithm, lr, weight_decay, betas, eps) coincide share one
group, so there are a handful of groups, never one per parameter (which would defeat
foreach/fused kernels).

Warning: ``torch.optim`` optimizers silently accept unknown group keys, so a group with
``algorithm="muon"`` handed to ``torch.optim.AdamW`` would quietly run AdamW at Muon's lr. Build
groups with ``optimizer="adamw"`` for any AdamW-only optimizer; ``optimizers.AdamW`` raises on a
group whose ``algorithm`` is not ``"adamw"``.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from torch import Tensor

from .roles import Role

__all__ = ["Settings", "default_settings", "resolve_settings", "build_groups", "RULE_KEYS"]

Algorithm = Literal["muon", "adamw"]
RULE_KEYS = ("algorithm", "lr", "lr_scale", "weight_decay", "betas", "eps")


@dataclass(frozen=True)
class Settings:
    """Optimizer settings of one parameter (and of the group it lands in)."""

    algorithm: Algorithm
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float


def default_settings(
    role: Role,
    *,
    optimizer: Algorithm,
    lr: float,
    weight_decay: float,
    adamw_lr: float,
    multiplier_lr: float,
    multiplier_weight_decay: float,
    betas: tuple[float, float],
    eps: float,
) -> Settings:
    """The default :class:`Settings` of ``role`` (table in the module docstring)."""
    if role is Role.MATRIX:
        if optimizer == "muon":
            return Settings("muon", lr, weight_decay, betas, eps)
        return Settings("adamw", lr, weight_decay, betas, eps)
    if role in (Role.EMBEDDING, Role.HEAD):
        return Settings("adamw", adamw_lr, weight_decay, betas, eps)
    if role is Role.VECTOR:
        return Settings("adamw", adamw_lr, 0.0, betas, eps)
    if role is Role.MULTIPLIER:
        return Settings("adamw", multiplier_lr, multiplier_weight_decay, betas, eps)
    raise ValueError(f"unknown role {role!r}")


def validate_rules(rules: Mapping[str, Mapping[str, Any]] | None) -> list[tuple[str, dict[str, Any]]]:
    """Check a ``rules`` mapping and return it as (key, settings) pairs, role keys first."""
    if rules is None:
        return []
    if not isinstance(rules, Mapping):
        raise TypeError(f"rules must be a mapping of role or FQN glob -> settings dict, got {type(rules).__name__}")
    role_entries, glob_entries = [], []
    for key, entry in rules.items():
        if not isinstance(key, str):
            raise TypeError(f"rules keys must be role names or FQN globs, got {key!r}")
        if not isinstance(entry, Mapping):
            raise TypeError(f"rules[{key!r}] must be a dict of settings, got {entry!r}")
        unknown = set(entry) - set(RULE_KEYS)
        if unknown:
            raise ValueError(f"rules[{key!r}] has unknown setting(s) {sorted(unknown)}; allowed: {list(RULE_KEYS)}")
        if "algorithm" in entry and entry["algorithm"] not in ("muon", "adamw"):
            raise ValueError(f"rules[{key!r}]['algorithm'] = {entry['algorithm']!r}; allowed: 'muon', 'adamw'")
        for k in ("lr", "lr_scale", "weight_decay", "eps"):
            if k in entry and (not isinstance(entry[k], (int, float)) or isinstance(entry[k], bool) or entry[k] < 0):
                raise ValueError(f"rules[{key!r}][{k!r}] must be a non-negative number, got {entry[k]!r}")
        if "betas" in entry:
            b = entry["betas"]
            if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(0.0 <= float(x) < 1.0 for x in b)):
                raise ValueError(f"rules[{key!r}]['betas'] must be two numbers in [0, 1), got {b!r}")
        (role_entries if key in {r.value for r in Role} else glob_entries).append((key, dict(entry)))
    return role_entries + glob_entries


def _apply(s: Settings, entry: Mapping[str, Any]) -> Settings:
    changes: dict[str, Any] = {}
    for k in ("algorithm", "lr", "weight_decay", "eps"):
        if k in entry:
            changes[k] = entry[k] if k == "algorithm" else float(entry[k])
    if "betas" in entry:
        changes["betas"] = (float(entry["betas"][0]), float(entry["betas"][1]))
    s = replace(s, **changes)
    if "lr_scale" in entry:
        s = replace(s, lr=s.lr * float(entry["lr_scale"]))
    return s


def resolve_settings(
    fqn: str,
    role: Role,
    ndim: int,
    base: Settings,
    rules: list[tuple[str, dict[str, Any]]],
    *,
    optimizer: Algorithm,
    names: Iterable[str] = (),
) -> Settings:
    """Apply the role entry then the matching glob entries of ``rules`` to ``base``.

    Raises ``ValueError`` when the result would send a non-matrix (an embedding, the head, a
    vector or a multiplier) to Muon, or any parameter to Muon when ``optimizer="adamw"``.
    """
    all_names = [fqn, *names]
    s = base
    for key, entry in rules:
        if key == role.value or (key not in {r.value for r in Role} and any(fnmatch.fnmatchcase(n, key) for n in all_names)):
            s = _apply(s, entry)
    if s.algorithm == "muon":
        if optimizer == "adamw":
            raise ValueError(f"rules send {fqn!r} to 'muon' but param_groups(optimizer='adamw') builds AdamW-only groups")
        if role is not Role.MATRIX or ndim < 2:
            raise ValueError(
                f"rules send {fqn!r} (role {role.value}, {ndim}-D) to 'muon'; only matrices may use Muon "
                "(embeddings, the head, vectors and multipliers always use AdamW)"
            )
    return s


def build_groups(entries: Iterable[tuple[str, Tensor, Role, Settings]]) -> list[dict[str, Any]]:
    """Group (fqn, param, role, settings) entries with identical (role, settings) into param groups.

    Each group is a dict with keys ``params``, ``algorithm``, ``lr``, ``weight_decay``,
    ``betas``, ``eps``, ``role``; groups keep the order of their first parameter.
    """
    groups: dict[tuple[Role, Settings], dict[str, Any]] = {}
    for _fqn, p, role, s in entries:
        key = (role, s)
        if key not in groups:
            groups[key] = {
                "params": [],
                "algorithm": s.algorithm,
                "lr": s.lr,
                "weight_decay": s.weight_decay,
                "betas": s.betas,
                "eps": s.eps,
                "role": role.value,
            }
        groups[key]["params"].append(p)
    return list(groups.values())
