"""The entry point: ``parametrize(model, ...)`` and the :class:`Parametrization` handle.

``parametrize`` works in place on any ``nn.Module``: it decides every parameter's role
(:mod:`.roles`), inserts learnable multipliers ``W_eff = s·diag(r)·W·diag(c)`` into the chosen
matrix layers (:mod:`.multipliers`), optionally applies the muP width rules (:mod:`.mup`), and
returns a handle that builds optimizer param groups (:mod:`.rules`), clips gradients without the
multipliers, folds the multipliers back into the weights (:mod:`.fold`) and prints a summary.

The handle keeps its metadata in dicts keyed by fully-qualified parameter name (FQN); it reads
parameters from ``model.named_parameters()`` at each call, so it keeps working after
``fully_shard`` (FSDP2 keeps FQNs and swaps parameters for DTensors).
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Mapping
from typing import Any, Literal

import torch
import torch.nn as nn
from torch import Tensor

from . import mup as _mup
from .fold import check_foldable, fold as _fold
from .multipliers import Compute, Placement, attach, is_multiplied, reset
from .roles import Role, RoleTable, WeightLayout, detect_roles, weight_layout
from .rules import (
    Settings,
    build_groups,
    default_settings,
    resolve_settings,
    validate_rules,
)

__all__ = ["parametrize", "Parametrization", "Multipliers"]

Multipliers = Literal["vector", "scalar", "none"] | Mapping[str, str]
Optimizer = Literal["muon", "adamw"]

# Placement of the named presets, per role (paper §5 main setup for "vector"; App. C for why
# the head gets none: per-logit row scales hurt, and the final norm weight is its column scale).
_PRESETS: dict[str, dict[Role, Placement]] = {
    "vector": {Role.MATRIX: Placement(row=True, col=True), Role.EMBEDDING: Placement(row=True, col=True)},
    "scalar": {Role.MATRIX: Placement(scalar=True), Role.EMBEDDING: Placement(scalar=True)},
    "none": {},
}
_MULTIPLIABLE = (Role.MATRIX, Role.EMBEDDING, Role.HEAD)
# Wrapper segments that torch.compile, activation checkpointing, FSDP1 and DDP put into FQNs.
_WRAPPER_SEGMENTS = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")
_MARK = "_lrm_parametrized"


class _Owner:
    """The module that stores a weight, under one of its names."""

    __slots__ = ("module_name", "module", "param_name")

    def __init__(self, module_name: str, module: nn.Module, param_name: str) -> None:
        self.module_name, self.module, self.param_name = module_name, module, param_name


def _owners(model: nn.Module) -> dict[str, list[_Owner]]:
    """Canonical FQN → every (module, attribute) that holds that parameter."""
    by_id: dict[int, list[_Owner]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is not None:
                by_id.setdefault(id(p), []).append(_Owner(mod_name, module, pname))
    return {fqn: by_id[id(p)] for fqn, p in model.named_parameters()}


def _layout_of(owners: list[_Owner]) -> WeightLayout | None:
    """Layout of a weight held by exactly one known Linear-like/embedding module."""
    if len(owners) != 1 or owners[0].param_name != "weight":
        return None
    return weight_layout(owners[0].module)


def _placements(
    multipliers: Multipliers,
    table: RoleTable,
    owners: dict[str, list[_Owner]],
) -> dict[str, Placement]:
    """FQN of each weight → its Placement (only weights that get at least one multiplier)."""
    out: dict[str, Placement] = {}
    if isinstance(multipliers, str):
        if multipliers not in _PRESETS:
            raise ValueError(
                f"multipliers = {multipliers!r} is not a placement; use 'vector', 'scalar', 'none' or a "
                "{fqn_glob: 'src' letters} dict"
            )
        preset = _PRESETS[multipliers]
        for fqn, role in table.roles.items():
            placement = preset.get(role)
            if placement is not None and _layout_of(owners[fqn]) is not None:
                out[fqn] = placement
        return out
    if not isinstance(multipliers, Mapping):
        raise TypeError(f"multipliers must be 'vector', 'scalar', 'none' or a dict, got {type(multipliers).__name__}")
    parsed = [(glob, Placement.parse(spec, where=f"multipliers[{glob!r}]")) for glob, spec in multipliers.items()]
    for glob, placement in parsed:
        if not isinstance(glob, str):
            raise TypeError(f"multipliers keys must be FQN glob strings, got {glob!r}")
        hit = False
        for fqn, role in table.roles.items():
            if role not in _MULTIPLIABLE:
                continue
            names = [fqn] + [o.module_name for o in owners[fqn]] + [a for a, c in table.aliases.items() if c == fqn]
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                continue
            if len(owners[fqn]) > 1 and placement.any:
                raise ValueError(
                    f"multipliers[{glob!r}] places multipliers on {fqn!r}, a weight tied between "
                    f"{[o.module_name for o in owners[fqn]]}; a multiplier on one use of a shared weight "
                    "cannot be folded back into it. Untie the weights or leave this one out"
                )
            if _layout_of(owners[fqn]) is None:
                continue
            hit = True
            out[fqn] = placement  # later globs win
        if not hit:
            raise ValueError(
                f"multipliers glob {glob!r} matches no matrix, embedding or head weight of a known module type; "
                f"weight names look like {[f for f, r in table.roles.items() if r in _MULTIPLIABLE][:4]}"
            )
    return {fqn: p for fqn, p in out.items() if p.any}


def _strip_wrappers(fqn: str) -> str:
    parts = [p for p in fqn.split(".") if p not in _WRAPPER_SEGMENTS]
    if parts and parts[0] == "module":  # DistributedDataParallel
        parts = parts[1:]
    return ".".join(parts)


class Parametrization:
    """Handle returned by :func:`parametrize`: roles, param groups, clipping, fold, summary.

    Attributes:
        model: the parametrized model (the same object that was passed in).
        placements: weight FQN → :class:`~parametrization.multipliers.Placement` it received.
        width: the muP width multipliers, or ``None`` without ``base_width``.
    """

    def __init__(
        self,
        model: nn.Module,
        table: RoleTable,
        placements: dict[str, Placement],
        width: _mup.WidthMultipliers | None,
    ) -> None:
        self.model = model
        self._table = table
        self.placements = placements
        self.width = width
        self.folded = False
        self._last_group_kwargs: dict[str, Any] | None = None

    # ----------------------------------------------------------------- roles

    @property
    def roles(self) -> dict[str, str]:
        """FQN → role name for every parameter name (tied aliases and multipliers included)."""
        return {fqn: role.value for fqn, role in self._table.all_names().items()}

    def role_of(self, fqn: str) -> Role:
        """Role of the parameter named ``fqn`` (wrapper prefixes such as ``_orig_mod.`` ignored)."""
        try:
            return self._table.role_of(fqn)
        except KeyError:
            pass
        try:
            return self._table.role_of(_strip_wrappers(fqn))
        except KeyError:
            raise ValueError(
                f"parameter {fqn!r} has no role: it was added after parametrize(); parametrize the final model"
            ) from None

    def named_parameters_by_role(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """Role name → ``[(fqn, parameter), ...]`` in ``named_parameters()`` order."""
        out: dict[str, list[tuple[str, nn.Parameter]]] = {}
        for fqn, p in self.model.named_parameters():
            out.setdefault(self.role_of(fqn).value, []).append((fqn, p))
        return out

    def reset_multipliers(self) -> None:
        """Set every multiplier to its initial value (1, or the muP factor it absorbed).

        Use after ``model.to_empty(device=...)`` of a model parametrized on the meta device.
        """
        for module in self.model.modules():
            if is_multiplied(module):
                reset(module)

    def multiplier_parameters(self) -> list[nn.Parameter]:
        """The learnable multipliers, in ``named_parameters()`` order."""
        return [p for fqn, p in self.model.named_parameters() if self.role_of(fqn) is Role.MULTIPLIER]

    # ----------------------------------------------------------------- optimizer groups

    def param_groups(
        self,
        optimizer: Optimizer = "muon",
        lr: float = 0.02,
        weight_decay: float = 0.1,
        *,
        adamw_lr: float | None = None,
        multiplier_lr: float | None = None,
        multiplier_weight_decay: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        rules: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Optimizer param groups for ``optimizer`` following the role rule table.

        Args:
            optimizer: ``"muon"`` (matrices → Muon, the rest → AdamW groups inside Muon) or
                ``"adamw"`` (every group is AdamW; hidden matrices get lr/m under muP). Groups built
                for ``"adamw"`` work with ``optimizers.AdamW`` and ``torch.optim.AdamW`` alike.
            lr: learning rate of matrices (Muon's lr, or AdamW's base-width lr).
            weight_decay: decoupled weight decay of matrices, embeddings and the head.
            adamw_lr: lr of the AdamW-side roles (embedding, head, vector); default ``lr``.
            multiplier_lr: lr of the multipliers; default ``adamw_lr``.
            multiplier_weight_decay: weight decay of the multipliers (paper: 2e-3).
            betas, eps: AdamW betas and eps of every AdamW group.
            rules: per-role or per-FQN-glob overrides, see :mod:`parametrization.rules`.

        Returns:
            A list of group dicts with keys ``params``, ``algorithm``, ``lr``,
            ``weight_decay``, ``betas``, ``eps``, ``role``. Parameters with
            ``requires_grad=False`` are left out.

        Raises:
            ValueError: a bad value (named in the message), a rules glob that matches no
                parameter, or a rule that would send a non-matrix to Muon.

        Warning:
            ``torch.optim`` optimizers silently accept unknown group keys: groups built with
            ``optimizer="muon"`` handed to ``torch.optim.AdamW`` would run AdamW at Muon's lr on
            the matrices. Build with ``optimizer="adamw"`` for AdamW; ``optimizers.AdamW`` raises
            on a group whose ``algorithm`` is not ``"adamw"``.
        """
        if optimizer not in ("muon", "adamw"):
            raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
        for name, value in (("lr", lr), ("weight_decay", weight_decay), ("multiplier_weight_decay", multiplier_weight_decay), ("eps", eps)):
            _check_nonneg(name, value)
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr!r}")
        if adamw_lr is None:
            adamw_lr = lr
        _check_nonneg("adamw_lr", adamw_lr)
        if multiplier_lr is None:
            multiplier_lr = adamw_lr
        _check_nonneg("multiplier_lr", multiplier_lr)
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2 and all(0.0 <= float(b) < 1.0 for b in betas)):
            raise ValueError(f"betas must be two numbers in [0, 1), got {betas!r}")
        betas = (float(betas[0]), float(betas[1]))
        parsed_rules = validate_rules(rules)

        named = [(fqn, p) for fqn, p in self.model.named_parameters() if p.requires_grad]
        aliases_of: dict[str, list[str]] = {}
        for alias, canon in self._table.aliases.items():
            aliases_of.setdefault(canon, []).append(alias)
        for key, _ in parsed_rules:
            if key in {r.value for r in Role}:
                continue
            if not any(fnmatch.fnmatchcase(n, key) for fqn, _ in named for n in (fqn, *aliases_of.get(fqn, ()))):
                raise ValueError(f"rules glob {key!r} matches no trainable parameter")

        entries = []
        for fqn, p in named:
            role = self.role_of(fqn)
            base = default_settings(
                role,
                optimizer=optimizer,
                lr=float(lr),
                weight_decay=float(weight_decay),
                adamw_lr=float(adamw_lr),
                multiplier_lr=float(multiplier_lr),
                multiplier_weight_decay=float(multiplier_weight_decay),
                betas=betas,
                eps=float(eps),
            )
            s = resolve_settings(fqn, role, p.ndim, base, parsed_rules, optimizer=optimizer, names=aliases_of.get(fqn, ()))
            s = self._apply_width(fqn, role, s)
            entries.append((fqn, p, role, s))
        self._last_group_kwargs = dict(
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, adamw_lr=adamw_lr, multiplier_lr=multiplier_lr,
            multiplier_weight_decay=multiplier_weight_decay, betas=betas, eps=eps, rules=rules,
        )
        return build_groups(entries)

    def _apply_width(self, fqn: str, role: Role, s: Settings) -> Settings:
        """muP: AdamW hidden matrices get lr × 1/m; Muon matrices keep their own scale."""
        if self.width is None or role is not Role.MATRIX or s.algorithm != "adamw":
            return s
        key = self._table.aliases.get(fqn, fqn)
        m = self.width.matrices.get(key, self.width.matrices.get(_strip_wrappers(key), 1.0))
        return Settings(s.algorithm, s.lr * _mup.adamw_lr_scale(m), s.weight_decay, s.betas, s.eps)

    # ----------------------------------------------------------------- clipping

    def clip_grad_norm_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        error_if_nonfinite: bool = False,
        foreach: bool | None = None,
    ) -> Tensor:
        """Clip gradients by their global norm, leaving the multipliers out.

        The norm is taken over the gradients of every non-multiplier parameter; those gradients
        are rescaled by ``min(1, max_norm / (norm + 1e-6))`` as ``torch.nn.utils.clip_grad_norm_``
        does. Multiplier gradients are neither counted nor rescaled: their early large norms would
        otherwise throttle every other parameter (paper §4.3). Works with DTensor gradients
        (FSDP2), via ``torch.nn.utils.get_total_norm``.

        Returns:
            The total norm of the non-multiplier gradients (before clipping).
        """
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
        params = [
            p for fqn, p in self.model.named_parameters()
            if p.grad is not None and self.role_of(fqn) is not Role.MULTIPLIER
        ]
        if not params:
            return torch.tensor(0.0)
        grads = [p.grad for p in params]
        total = torch.nn.utils.get_total_norm(grads, norm_type, error_if_nonfinite, foreach)
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, total, foreach)
        return total

    # ----------------------------------------------------------------- fold

    def fold(self) -> nn.Module:
        """Fold the multipliers into the weights in place and return the now-plain model.

        The result has exactly the plain model's modules, parameter shapes and ``state_dict``
        keys, and the same outputs (to float rounding). Folding again is a no-op. Param groups
        built before folding refer to removed multipliers: rebuild the optimizer afterwards.
        """
        if self.folded:
            return self.model
        has_multipliers = bool(check_foldable(self.model))
        if has_multipliers:
            _fold(self.model)
        self.model.__dict__.pop(_MARK, None)
        self._table = RoleTable(
            roles={k: v for k, v in self._table.roles.items() if v is not Role.MULTIPLIER},
            aliases=dict(self._table.aliases),
        )
        self.placements = {}
        self.folded = True
        return self.model

    # ----------------------------------------------------------------- diagnostics

    def stats(self, optimizer: Any = None) -> dict[str, dict[str, Any]]:
        """Per-matrix RMS of W and W_eff, the noise–weight-decay equilibrium predicted from
        ``optimizer``'s groups, row/column-norm spread of W_eff and the multipliers' range
        (:func:`parametrization.stats.stats`)."""
        from .stats import stats

        return stats(self, optimizer)

    # ----------------------------------------------------------------- summary

    def summary(self, *, print_table: bool = True, **param_group_kwargs: Any) -> "Any":
        """Print (and return) a rich table: role, tensors, parameters, algorithm, lr, wd.

        Settings come from ``param_group_kwargs`` (the arguments of :meth:`param_groups`), else
        from the last :meth:`param_groups` call, else the defaults. The caption gives the share
        of multiplier parameters in the model (≪ 1% for real models).
        """
        from rich.console import Console
        from rich.table import Table

        kwargs = param_group_kwargs or self._last_group_kwargs or {}
        groups = self.param_groups(**kwargs)
        self._last_group_kwargs = kwargs or self._last_group_kwargs
        total = sum(p.numel() for _, p in self.model.named_parameters())
        n_mult = sum(p.numel() for p in self.multiplier_parameters())
        table = Table(title="parametrization", caption=f"multipliers: {n_mult:,} of {total:,} parameters ({100 * n_mult / max(total, 1):.3f}%)")
        for col in ("role", "tensors", "parameters", "share", "algorithm", "lr", "weight decay", "betas"):
            table.add_column(col, justify="left" if col in ("role", "algorithm") else "right")
        for g in groups:
            n = sum(p.numel() for p in g["params"])
            table.add_row(
                g["role"], str(len(g["params"])), f"{n:,}", f"{100 * n / max(total, 1):.2f}%", g["algorithm"],
                f"{g['lr']:.3g}", f"{g['weight_decay']:.3g}", "-" if g["algorithm"] == "muon" else f"{g['betas'][0]:g}, {g['betas'][1]:g}",
            )
        if print_table:
            Console().print(table)
        return table

    def __repr__(self) -> str:
        counts: dict[str, int] = {}
        for role in self._table.roles.values():
            counts[role.value] = counts.get(role.value, 0) + 1
        return f"Parametrization({type(self.model).__name__}, roles={counts}, folded={self.folded})"


def _check_nonneg(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative finite number, got {value!r}")


def parametrize(
    model: nn.Module,
    multipliers: Multipliers = "vector",
    *,
    roles: Mapping[str, str] | None = None,
    base_width: int | nn.Module | None = None,
    width: int | None = None,
    init_std: float | None = None,
    compute: Compute = "auto",
) -> Parametrization:
    """Insert learnable multipliers into ``model`` (in place) and return its :class:`Parametrization`.

    Args:
        model: any ``nn.Module``.
        multipliers: where the multipliers go:
            ``"vector"`` (default): row and column multipliers on every matrix and embedding,
            none on the head (the paper's main setup); ``"scalar"``: one ``s`` per matrix and
            embedding; ``"none"``: roles and rules only; or a dict ``{fqn_glob: letters}`` with
            letters from ``"s"``, ``"r"``, ``"c"`` (``""``/``"none"`` for none), matched against
            weight and module FQNs, later globs winning, e.g. the paper's symmetry-free App. C
            placement ``{"*.gate": "r", "*.down": "rc", "*.q": "r", "*.o": "rc"}``. Weights not
            matched get none. Multipliers start at 1 (or at the muP factor, below).
        roles: ``{fqn_glob: role}`` overrides of the detected roles (``"matrix"``,
            ``"embedding"``, ``"head"``, ``"vector"``); later globs win.
        base_width: turns on muP: an int (the width the hyperparameters were tuned at; every
            matrix then gets m = width / base_width, right for transformers whose inputs are
            embeddings) or a base model of the same architecture (per-matrix fan-in ratios, needed
            when some matrix has a fixed fan-in, e.g. an MLP's first layer on raw features).
            See :mod:`parametrization.mup`.
        width: this model's width for an int ``base_width``; default: the head's fan-in.
        init_std: with ``base_width``, redraw hidden matrices from N(0, (init_std/sqrt(m))²),
            ``init_std`` being the std at the base width. ``None`` keeps the model's own init
            (PyTorch's default Linear/Conv init is already ∝ 1/sqrt(fan_in)).
        compute: ``"auto"`` chooses weight-side or activation-side per call by cost;
            ``"weight"``/``"activation"`` force one.

    Raises:
        ValueError / TypeError: bad input, naming the argument and value; the model is left
        unchanged (all checks happen before the first change).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if model.__dict__.get(_MARK) or any(is_multiplied(m) for m in model.modules()):
        raise ValueError(f"{type(model).__name__} is already parametrized; parametrize a model only once")
    if compute not in ("auto", "weight", "activation"):
        raise ValueError(f"compute must be 'auto', 'weight' or 'activation', got {compute!r}")
    if init_std is not None:
        if base_width is None:
            raise ValueError("init_std is only used with base_width (muP); pass base_width=... or drop init_std")
        _check_nonneg("init_std", init_std)

    table = detect_roles(model, roles)
    owners = _owners(model)
    placements = _placements(multipliers, table, owners)

    width_mults: _mup.WidthMultipliers | None = None
    head_fixed: tuple[str, float] | None = None
    if base_width is not None:
        layouts = {fqn: lay for fqn in table.roles if (lay := _head_or_own_layout(owners[fqn])) is not None}
        width_mults = _mup.width_multipliers(model, table, layouts, base_width, width)
        heads = [fqn for fqn, r in table.roles.items() if r is Role.HEAD]
        if heads and width_mults.head != 1.0:
            head_owner = _head_module(owners[heads[0]])
            if head_owner is None:
                raise ValueError(
                    f"muP needs a fixed output multiplier on the head {heads[0]!r}, but it is not the weight "
                    "of a Linear-like module; give it the role 'matrix' or register its module type"
                )
            head_fixed = (heads[0], _mup.output_multiplier(width_mults.head))

    # ---- every check passed: change the model from here on.
    if width_mults is not None and init_std is not None:
        with torch.no_grad():
            for fqn, m in width_mults.matrices.items():
                owners[fqn][0].module._parameters[owners[fqn][0].param_name].normal_(0.0, _mup.hidden_init_std(init_std, m))

    roles_out = dict(table.roles)
    for fqn, placement in placements.items():
        owner = owners[fqn][0]
        fixed = head_fixed[1] if head_fixed is not None and head_fixed[0] == fqn else 1.0
        names = attach(owner.module, placement, weight_layout(owner.module) or WeightLayout(), fixed=fixed, compute=compute)
        for name in names:
            roles_out[f"{owner.module_name}.{name}" if owner.module_name else name] = Role.MULTIPLIER
    if head_fixed is not None and head_fixed[0] not in placements:
        owner = _head_module(owners[head_fixed[0]])
        assert owner is not None  # checked above
        attach(owner.module, Placement(), weight_layout(owner.module) or WeightLayout(), fixed=head_fixed[1], compute=compute)

    # Registry in named_parameters() order (multipliers right after their module's parameters).
    ordered = {fqn: roles_out[fqn] for fqn, _ in model.named_parameters()}
    model.__dict__[_MARK] = True
    return Parametrization(model, RoleTable(ordered, dict(table.aliases)), placements, width_mults)


def _head_or_own_layout(owners: list[_Owner]) -> WeightLayout | None:
    for o in owners:
        if o.param_name == "weight":
            lay = weight_layout(o.module)
            if lay is not None:
                return lay
    return None


def _head_module(owners: list[_Owner]) -> _Owner | None:
    """The Linear-like module that reads out through the head weight (not the embedding use)."""
    for o in reversed(owners):
        if o.param_name == "weight" and weight_layout(o.module) is not None and not isinstance(o.module, (nn.Embedding, nn.EmbeddingBag)):
            return o
    return None

