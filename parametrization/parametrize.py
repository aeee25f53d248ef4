"""The entry point: ``parametrize(model, ...)`` and the :class:`Parametrization` handle.

``parametrize`` works in place on any ``nn.Module``: it decides every parameter's role
(:mod:`.roles`), inserts learnable multipliers ``W_eff = s·diag(r)·W·diag(c)`` into the weights
its placement chooses (:mod:`.placement`, :mod:`.multipliers`), optionally applies the muP width
rules (:mod:`.mup`), and returns a handle. The handle delegates: param groups to
:mod:`.rules`, clipping to :mod:`.clipping`, folding to :mod:`.fold`.

The handle keeps its metadata in dicts keyed by fully-qualified parameter name (FQN); it reads
parameters from ``model.named_parameters()`` at each call, so it keeps working after
``fully_shard`` (FSDP2 keeps FQNs and swaps parameters for DTensors) and after
``copy.deepcopy(mp)``, which copies the handle together with its model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import torch.nn as nn
from torch import Tensor

from . import clipping, mup
from .fold import check_foldable, fold as _fold
from .multipliers import Compute, attach, is_multiplied, multiplied_fqn, multiplied_params, reset
from .owners import owners as _owners, strip_wrappers
from .placement import Multipliers, Placement, resolve_placements
from .roles import Role, RoleTable, WeightLayout, detect_roles, matrix_view, weight_layout
from .rules import LrScale, ParamInfo, build_param_groups

__all__ = ["parametrize", "Parametrization", "Multipliers"]

Optimizer = Literal["muon", "adamw"]
_MARK = "_lrm_parametrized"


class Parametrization:
    """Handle returned by :func:`parametrize`: roles, param groups, clipping, fold, summary.

    Attributes:
        model: the parametrized model (the same object that was passed in).
        placements: weight FQN → :class:`~parametrization.placement.Placement` it received.
        width: the muP width multipliers, or ``None`` without ``base_width``.
        matrix_views: matrix FQN → how Muon reads it (:data:`parametrization.roles.MATRIX_VIEWS`).
    """

    def __init__(
        self,
        model: nn.Module,
        table: RoleTable,
        placements: dict[str, Placement],
        width: mup.WidthMultipliers | None,
        matrix_views: dict[str, str] | None = None,
    ) -> None:
        self.model = model
        self._table = table
        self.placements = placements
        self.width = width
        self.matrix_views = dict(matrix_views or {})
        self.folded = False
        self._last_group_kwargs: dict[str, Any] | None = None

    # ----------------------------------------------------------------- roles

    @property
    def roles(self) -> dict[str, str]:
        """FQN → role name for every parameter name (tied aliases and multipliers included)."""
        return {fqn: role.value for fqn, role in self._table.all_names().items()}

    def _key(self, fqn: str) -> str:
        """The canonical registry key of ``fqn`` (aliases resolved, wrapper prefixes stripped)."""
        table = self._table
        name = table.aliases.get(fqn, fqn)
        if name in table.roles:
            return name
        name = strip_wrappers(fqn)  # only on a miss: this runs for every parameter at every clip
        name = table.aliases.get(name, name)
        if name in table.roles:
            return name
        raise ValueError(f"parameter {fqn!r} has no role: it was added after parametrize(); parametrize the final model")

    def role_of(self, fqn: str) -> Role:
        """Role of the parameter named ``fqn`` (wrapper prefixes such as ``_orig_mod.`` ignored)."""
        return self._table.roles[self._key(fqn)]

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

    def _trainable(self) -> list[ParamInfo]:
        """Every parameter that trains: ``requires_grad``, and for a multiplier, its weight's too."""
        named = dict(self.model.named_parameters())
        aliases_of: dict[str, list[str]] = {}
        for alias, canon in self._table.aliases.items():
            aliases_of.setdefault(canon, []).append(alias)
        out = []
        for fqn, p in named.items():
            if not p.requires_grad:
                continue
            role = self.role_of(fqn)
            if role is Role.MULTIPLIER:
                w = named.get(multiplied_fqn(fqn) or "")
                if w is not None and not w.requires_grad:
                    continue  # the multiplier of a frozen weight would still move W_eff
            key = self._key(fqn)
            factor = 1.0
            if self.width is not None and key in self.width.matrices:
                factor = mup.adamw_lr_factor(self.width.matrices[key])
            out.append(ParamInfo(fqn, p, role, tuple(aliases_of.get(key, ())), self.matrix_views.get(key), factor))
        return out

    def param_groups(
        self,
        optimizer: Optimizer = "muon",
        lr: float = 0.02,
        weight_decay: float = 0.1,
        *,
        lr_scale: LrScale | None = None,
        adamw_lr: float | None = None,
        multiplier_lr: float | None = None,
        multiplier_weight_decay: float = 2e-3,
        betas: tuple[float, float] = (0.9, 0.95),
        eps: float = 1e-8,
        rules: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> list[dict[str, Any]]:
        """Optimizer param groups for ``optimizer`` following the rule table (:mod:`.rules`).

        Args:
            optimizer: ``"muon"`` (matrices → Muon, the rest → AdamW groups inside Muon) or
                ``"adamw"`` (every group is AdamW; hidden matrices get lr/m under muP). Groups built
                for ``"adamw"`` work with ``optimizers.AdamW`` and ``torch.optim.AdamW`` alike.
            lr: learning rate of matrices (Muon's lr, or AdamW's base-width lr).
            weight_decay: decoupled weight decay of matrices, embeddings and the head.
            lr_scale: Muon's shape rule, written into every Muon group (``optimizer="muon"``
                only): ``"match_rms_adamw"`` (default; ``"spectral"`` under muP), ``"spectral"``
                or ``"none"``.
            adamw_lr: lr of the AdamW-side roles (embedding, head, vector). Default ``lr``, with
                ``optimizer="adamw"`` or ``lr_scale="match_rms_adamw"``; required otherwise.
            multiplier_lr: lr of the multipliers; default ``adamw_lr``.
            multiplier_weight_decay: weight decay of the multipliers (paper: 2e-3).
            betas, eps: AdamW betas and eps of every AdamW group.
            rules: per-role or per-FQN-glob overrides, see :mod:`parametrization.rules`.

        Returns:
            Group dicts with keys ``params``, ``param_names``, ``algorithm``, ``lr``,
            ``weight_decay``, ``betas``, ``eps``, ``role``, and for Muon groups ``lr_scale`` and
            ``matrix_view``. Left out: every parameter with ``requires_grad=False``, and the
            multipliers of a weight with ``requires_grad=False`` (freezing a weight after
            ``parametrize`` therefore also freezes its ``W_eff`` for optimizers built afterwards).

        Raises:
            ValueError: a bad value (named in the message), a rules glob that matches no
                parameter, or a rule that would send a non-matrix to Muon.

        Warning:
            ``torch.optim`` optimizers silently accept unknown group keys: groups built with
            ``optimizer="muon"`` handed to ``torch.optim.AdamW`` would run AdamW at Muon's lr on
            the matrices. Build with ``optimizer="adamw"`` for AdamW; ``optimizers.AdamW`` raises
            on a group whose ``algorithm`` is not ``"adamw"``.
        """
        kwargs = dict(
            optimizer=optimizer, lr=lr, weight_decay=weight_decay, lr_scale=lr_scale, adamw_lr=adamw_lr,
            multiplier_lr=multiplier_lr, multiplier_weight_decay=multiplier_weight_decay, betas=betas, eps=eps, rules=rules,
        )
        default_lr_scale = "spectral" if self.width is not None else "match_rms_adamw"
        groups = build_param_groups(self._trainable(), default_lr_scale=default_lr_scale, **kwargs)  # type: ignore[arg-type]
        self._last_group_kwargs = kwargs
        return groups

    # ----------------------------------------------------------------- clipping

    def clip_grad_norm_(
        self,
        max_norm: float,
        norm_type: float = 2.0,
        *,
        error_if_nonfinite: bool = False,
        foreach: bool | None = None,
    ) -> Tensor:
        """Clip gradients by their global norm, leaving the multipliers out (:mod:`.clipping`).

        The norm is taken over the gradients of every non-multiplier parameter; those gradients
        are rescaled by ``min(1, max_norm / (norm + 1e-6))`` as ``torch.nn.utils.clip_grad_norm_``
        does. Multiplier gradients are neither counted nor rescaled. Returns the total norm of the
        non-multiplier gradients (before clipping).
        """
        params = [p for fqn, p in self.model.named_parameters() if self.role_of(fqn) is not Role.MULTIPLIER]
        return clipping.clip_grad_norm_(params, max_norm, norm_type, error_if_nonfinite=error_if_nonfinite, foreach=foreach)

    # ----------------------------------------------------------------- fold

    def fold(self) -> nn.Module:
        """Fold the multipliers into the weights in place and return the now-plain model.

        The result has exactly the plain model's modules, parameter shapes and ``state_dict``
        keys, and the same outputs (to float rounding). Folding again is a no-op. Param groups
        built before folding refer to removed multipliers: rebuild the optimizer afterwards.
        """
        if self.folded:
            return self.model
        if check_foldable(self.model):
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
        from the last :meth:`param_groups` call, else the defaults (under muP with ``adamw_lr``
        equal to the default ``lr``). The caption gives the share
        of multiplier parameters in the model (≪ 1% for real models).
        """
        from rich.console import Console
        from rich.table import Table

        kwargs = param_group_kwargs or self._last_group_kwargs or {}
        if not kwargs and self.width is not None:
            kwargs = {"adamw_lr": 0.02}  # muP's spectral default asks for adamw_lr; show lr's default
        groups = self.param_groups(**kwargs)
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
        model: any ``nn.Module``, not yet parametrized. To copy a parametrized model, copy its
            handle: ``mp2 = copy.deepcopy(mp)`` (``mp2.model`` is the copy).
        multipliers: where the multipliers go (:mod:`parametrization.placement`):
            ``"vector"`` (default): row and column multipliers on every matrix and embedding,
            none on the head (the paper's main setup); ``"scalar"``: one ``s`` per matrix and
            embedding; ``"none"``: roles and rules only; or a dict ``{fqn_glob: letters}`` with
            letters from ``"s"``, ``"r"``, ``"c"`` (``""``/``"none"`` for none), matched against
            weight and module FQNs, the last matching glob winning, e.g. the paper's symmetry-free
            App. C placement ``{"*.gate": "r", "*.down": "rc", "*.q": "r", "*.o": "rc"}``. Weights
            not matched get none. Multipliers start at 1 (or at the muP factor, below); those of a
            frozen weight (``requires_grad=False``) are created frozen.
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
        raise ValueError(
            f"{type(model).__name__} is already parametrized; parametrize a model only once. To copy a "
            "parametrized model, copy its handle: mp2 = copy.deepcopy(mp) gives a handle bound to a copy "
            "of the model (mp2.model); copy.deepcopy(model) alone copies the model without its handle"
        )
    if compute not in ("auto", "weight", "activation"):
        raise ValueError(f"compute must be 'auto', 'weight' or 'activation', got {compute!r}")
    if init_std is not None:
        if base_width is None:
            raise ValueError("init_std is only used with base_width (muP); pass base_width=... or drop init_std")
        _check_nonneg("init_std", init_std)

    table = detect_roles(model, roles)
    owners = _owners(model)
    placements = resolve_placements(multipliers, table, owners)
    plan = mup.plan(model, table, owners, base_width, width) if base_width is not None else None
    views: dict[str, str] = {}
    for fqn, role in table.roles.items():
        if role is Role.MATRIX:
            o = owners[fqn][0]
            layout = weight_layout(o.module, o.param_name)
            if layout is not None:
                views[fqn] = matrix_view(layout, o.module._parameters[o.param_name].ndim)

    # ---- every check passed: change the model from here on.
    if plan is not None and init_std is not None:
        mup.redraw_hidden_init(owners, plan.width, init_std)
    head_owner, head_factor = plan.head if plan is not None and plan.head is not None else (None, 1.0)
    roles_out = dict(table.roles)
    for fqn, placement in placements.items():
        owner = owners[fqn][0]
        fixed = head_factor if head_owner is not None and head_owner.fqn == fqn else 1.0
        layout = weight_layout(owner.module, owner.param_name) or WeightLayout()
        names = attach(owner.module, placement, layout, param=owner.param_name, fixed=fixed, compute=compute)
        for name in names:
            roles_out[f"{owner.module_name}.{name}" if owner.module_name else name] = Role.MULTIPLIER
    if head_owner is not None and head_owner.param_name not in multiplied_params(head_owner.module):
        layout = weight_layout(head_owner.module, head_owner.param_name) or WeightLayout()
        attach(head_owner.module, Placement(), layout, param=head_owner.param_name, fixed=head_factor, compute=compute)

    # Registry in named_parameters() order (multipliers right after their module's parameters).
    ordered = {fqn: roles_out[fqn] for fqn, _ in model.named_parameters()}
    model.__dict__[_MARK] = True
    return Parametrization(model, RoleTable(ordered, dict(table.aliases)), placements, plan.width if plan else None, views)

