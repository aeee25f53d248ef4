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
* Muon groups carry Muon's shape rule explicitly: ``lr_scale`` (default ``"match_rms_adamw"``,
  the argument of ``param_groups``) and ``matrix_view`` (how Muon reads the tensor as matrices,
  from the module's registered layout). ``adamw_lr`` defaults to ``lr`` only where that is right:
  with ``optimizer="adamw"``, and with ``lr_scale="match_rms_adamw"`` (Muon's lr is then an
  AdamW-equivalent lr, Liu et al. 2025). With ``lr_scale="spectral"`` or ``"none"`` Muon's lr is
  on another scale, so ``adamw_lr`` must be given (omitting it raises). Under muP (``base_width``)
  the default ``lr_scale`` is ``"spectral"``, the scale that keeps Muon's update width-invariant
  without any 1/m factor (:mod:`parametrization.mup`), so there ``adamw_lr`` is always given;
* ``multiplier_lr`` defaults to ``adamw_lr``: multipliers are vector-like, initialized at 1 like
  norm weights, and the paper gives no value for its main runs (its scalar-multiplier MLP test
  used 1e-2 without decay).

Betas and eps default to (0.9, 0.95) and 1e-8 for every AdamW group (the usual LM-pretraining
choice), and are overridable.

Overrides: ``rules={key: {setting: value}}`` where ``key`` is a role name (``"vector"``) or a
glob over parameter FQNs (``"*.router.weight"``); settings are ``algorithm``, ``lr``,
``lr_factor`` (multiplies the lr), ``weight_decay``, ``betas``, ``eps``. Role entries apply
first, whatever their position in the dict, then glob entries in dict order (a later glob wins
over an earlier one). All learning rates are base-width values: the muP factor 1/m is applied
last, to AdamW hidden matrices only.

Grouping: parameters whose (role, algorithm, lr, weight_decay, betas, eps, matrix view) coincide
share one group, so there are a handful of groups, never one per parameter (which would defeat
foreach/fused kernels). Every group carries ``param_names``, the FQNs parallel to ``params``
(torch.optim's convention, used by optimizers to name parameters in errors).

Frozen parameters (``requires_grad=False``) are in no group; see
:meth:`parametrization.Parametrization.param_groups` for the multipliers of a frozen weight.

Warning: ``torch.optim`` optimizers silently accept unknown group keys, so a group with
``algorithm="muon"`` handed to ``torch.optim.AdamW`` would quietly run AdamW at Muon's lr. Build
groups with ``optimizer="adamw"`` for any AdamW-only optimizer; ``optimizers.AdamW`` raises on a
group whose ``algorithm`` is not ``"adamw"``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

from torch import Tensor

from .roles import Role

__all__ = [
    "Settings",
    "ParamInfo",
    "RULE_KEYS",
    "LR_SCALE_RULES",
    "default_settings",
    "validate_rules",
    "resolve_settings",
    "build_groups",
    "build_param_groups",
]

Algorithm = Literal["muon", "adamw"]
LrScale = Literal["spectral", "match_rms_adamw", "none"]
RULE_KEYS = ("algorithm", "lr", "lr_factor", "weight_decay", "betas", "eps")
LR_SCALE_RULES = ("spectral", "match_rms_adamw", "none")
"""Muon's shape rules (``optimizers.lr_scale``; kept as strings: parametrization never imports optimizers)."""
DEFAULT_LR_SCALE: LrScale = "match_rms_adamw"
_ROLE_NAMES = frozenset(r.value for r in Role)


@dataclass(frozen=True)
class Settings:
    """Optimizer settings of one parameter (and of the group it lands in)."""

    algorithm: Algorithm
    lr: float
    weight_decay: float
    betas: tuple[float, float]
    eps: float


@dataclass(frozen=True)
class ParamInfo:
    """What the rule table needs to know about one trainable parameter.

    ``names`` are its other FQNs (tied aliases), matched by ``rules`` globs too; ``matrix_view``
    is how Muon reads it (``parametrization.roles.MATRIX_VIEWS``), ``None`` for non-matrices;
    ``lr_factor`` is the muP factor applied to its lr if it ends up an AdamW matrix.
    """

    fqn: str
    param: Tensor
    role: Role
    names: tuple[str, ...] = ()
    matrix_view: str | None = None
    lr_factor: float = 1.0


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _check_betas(where: str, b: Any) -> tuple[float, float]:
    if not (isinstance(b, (tuple, list)) and len(b) == 2 and all(_is_number(x) and 0.0 <= x < 1.0 for x in b)):
        raise ValueError(f"{where} must be two numbers in [0, 1), got {b!r}")
    return (float(b[0]), float(b[1]))


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
            hint = " ('lr_scale' is now 'lr_factor')" if "lr_scale" in unknown else ""
            raise ValueError(f"rules[{key!r}] has unknown setting(s) {sorted(unknown)}{hint}; allowed: {list(RULE_KEYS)}")
        if "algorithm" in entry and entry["algorithm"] not in ("muon", "adamw"):
            raise ValueError(f"rules[{key!r}]['algorithm'] = {entry['algorithm']!r}; allowed: 'muon', 'adamw'")
        for k in ("lr", "lr_factor", "weight_decay", "eps"):
            if k in entry and (not _is_number(entry[k]) or entry[k] < 0):
                raise ValueError(f"rules[{key!r}][{k!r}] must be a non-negative number, got {entry[k]!r}")
        if "betas" in entry:
            _check_betas(f"rules[{key!r}]['betas']", entry["betas"])
        (role_entries if key in _ROLE_NAMES else glob_entries).append((key, dict(entry)))
    return role_entries + glob_entries


def _apply(s: Settings, entry: Mapping[str, Any]) -> Settings:
    changes: dict[str, Any] = {}
    for k in ("algorithm", "lr", "weight_decay", "eps"):
        if k in entry:
            changes[k] = entry[k] if k == "algorithm" else float(entry[k])
    if "betas" in entry:
        changes["betas"] = (float(entry["betas"][0]), float(entry["betas"][1]))
    s = replace(s, **changes)
    if "lr_factor" in entry:
        s = replace(s, lr=s.lr * float(entry["lr_factor"]))
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
    """Apply the role entry then the matching glob entries of ``rules`` (from :func:`validate_rules`).

    Raises ``ValueError`` when the result would send a non-matrix (an embedding, the head, a
    vector or a multiplier) to Muon, or any parameter to Muon when ``optimizer="adamw"``.
    """
    all_names = [fqn, *names]
    s = base
    for key, entry in rules:
        if key == role.value or (key not in _ROLE_NAMES and any(fnmatch.fnmatchcase(n, key) for n in all_names)):
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


def build_groups(
    entries: Iterable[tuple[str, Tensor, Role, Settings]] | Iterable[tuple[str, Tensor, Role, Settings, dict[str, Any]]],
) -> list[dict[str, Any]]:
    """Group ``(fqn, param, role, settings[, extra keys])`` entries into param groups.

    Entries with identical role, settings and extra keys share a group. Each group is a dict with
    keys ``params``, ``param_names``, ``algorithm``, ``lr``, ``weight_decay``, ``betas``, ``eps``,
    ``role`` and the extra keys; groups keep the order of their first parameter.
    """
    groups: dict[tuple[Any, ...], dict[str, Any]] = {}
    for fqn, p, role, s, *rest in entries:
        extra = rest[0] if rest else {}
        key = (role, s, tuple(sorted(extra.items())))
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "algorithm": s.algorithm,
                "lr": s.lr,
                "weight_decay": s.weight_decay,
                "betas": s.betas,
                "eps": s.eps,
                "role": role.value,
                **extra,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(fqn)
    return list(groups.values())


def _check_nonneg(name: str, value: Any) -> float:
    if not _is_number(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")
    return float(value)


def build_param_groups(
    params: Sequence[ParamInfo],
    *,
    optimizer: Algorithm = "muon",
    lr: float = 0.02,
    weight_decay: float = 0.1,
    lr_scale: LrScale | None = None,
    adamw_lr: float | None = None,
    multiplier_lr: float | None = None,
    multiplier_weight_decay: float = 2e-3,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    rules: Mapping[str, Mapping[str, Any]] | None = None,
    default_lr_scale: LrScale = DEFAULT_LR_SCALE,
) -> list[dict[str, Any]]:
    """The param groups of ``params`` under the rule table (arguments as ``Parametrization.param_groups``).

    ``default_lr_scale`` is used when ``lr_scale`` is ``None`` (``"spectral"`` under muP).

    Muon groups (``algorithm="muon"``) also carry ``lr_scale`` and ``matrix_view``.

    Raises:
        ValueError: a bad value (named in the message), ``lr_scale`` with ``optimizer="adamw"``,
            a non-default ``lr_scale`` without ``adamw_lr``, a rules glob matching no parameter,
            or a rule that would send a non-matrix to Muon.
    """
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    lr = _check_nonneg("lr", lr)
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    weight_decay = _check_nonneg("weight_decay", weight_decay)
    multiplier_weight_decay = _check_nonneg("multiplier_weight_decay", multiplier_weight_decay)
    eps = _check_nonneg("eps", eps)
    if optimizer == "adamw":
        if lr_scale is not None:
            raise ValueError(f"lr_scale={lr_scale!r} is Muon's shape rule; with optimizer='adamw' leave it out")
    else:
        why = ""
        if lr_scale is None:
            lr_scale, why = default_lr_scale, " (the default with muP's base_width)" if default_lr_scale != DEFAULT_LR_SCALE else ""
        if lr_scale not in LR_SCALE_RULES:
            raise ValueError(f"lr_scale must be one of {list(LR_SCALE_RULES)}, got {lr_scale!r}")
        if adamw_lr is None and lr_scale != "match_rms_adamw":
            raise ValueError(
                f"with lr_scale={lr_scale!r}{why} Muon's lr ({lr}) is not an AdamW lr, so adamw_lr (the lr of "
                "embeddings, head, vectors and multipliers) has no default: pass adamw_lr=..., or use "
                "lr_scale='match_rms_adamw' to share one lr"
            )
    adamw_lr = lr if adamw_lr is None else _check_nonneg("adamw_lr", adamw_lr)
    multiplier_lr = adamw_lr if multiplier_lr is None else _check_nonneg("multiplier_lr", multiplier_lr)
    betas = _check_betas("betas", betas)
    parsed_rules = validate_rules(rules)
    for key, _ in parsed_rules:
        if key in _ROLE_NAMES:
            continue
        if not any(fnmatch.fnmatchcase(n, key) for info in params for n in (info.fqn, *info.names)):
            raise ValueError(f"rules glob {key!r} matches no trainable parameter")

    entries = []
    for info in params:
        base = default_settings(
            info.role, optimizer=optimizer, lr=lr, weight_decay=weight_decay, adamw_lr=adamw_lr,
            multiplier_lr=multiplier_lr, multiplier_weight_decay=multiplier_weight_decay, betas=betas, eps=eps,
        )
        s = resolve_settings(info.fqn, info.role, info.param.ndim, base, parsed_rules, optimizer=optimizer, names=info.names)
        extra: dict[str, Any] = {}
        if s.algorithm == "muon":
            extra = {"lr_scale": lr_scale, "matrix_view": info.matrix_view or default_matrix_view(info.param.ndim)}
        elif info.role is Role.MATRIX and info.lr_factor != 1.0:
            s = replace(s, lr=s.lr * info.lr_factor)  # muP, applied last
        entries.append((info.fqn, info.param, info.role, s, extra))
    return build_groups(entries)


def default_matrix_view(ndim: int) -> str:
    """Muon's shape rule for a tensor of unknown layout: 2-D ``out_in``, 3-D ``batch_out_in``, else ``conv``."""
    return "out_in" if ndim == 2 else "batch_out_in" if ndim == 3 else "conv"
