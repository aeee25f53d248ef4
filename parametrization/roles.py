"""Which parameter is what: roles, weight layouts, and automatic role detection.

Every parameter gets exactly one :class:`Role`. Roles live in a plain dict keyed by the
parameter's fully-qualified name (FQN, as ``model.named_parameters()`` spells it), never as
attributes on tensors: those are lost under ``copy.deepcopy``, ``state_dict`` round trips and
FSDP2's ``fully_shard`` (see the muP survey, takeaway 2), while FQNs survive all three.

Automatic detection (:func:`detect_roles`), in order of precedence:

1. ``head``: the weight of ``model.get_output_embeddings()`` when the model has that method
   (Hugging Face convention; returning ``None`` means "no head"); else a weight shared between an
   embedding and a Linear-like module (tied embeddings); else the weight of the last Linear-like
   module in module order (the readout of an MLP or a classifier).
2. ``embedding``: the weight of an ``nn.Embedding`` / ``nn.EmbeddingBag``.
3. ``vector``: a parameter marked ``p._no_weight_decay = True`` (the marker Hugging Face and
   mamba-ssm put on an SSM's ``A_log``, ``D`` and ``dt_bias``), whatever its shape.
4. A role registered for the module type and parameter name (:func:`register_role`), or given by
   a built-in rule for a known model family (:mod:`parametrization.layouts`: depthwise conv
   kernels, SSM parameters and 2-D biases are ``vector``; ViT class/distillation tokens and
   learned position tables are ``embedding``).
5. ``vector``: every other parameter with at most one dimension (norm weights, biases, gains).
6. ``matrix``: a parameter whose weight layout is known (the ``weight`` of ``nn.Linear``,
   convolutions, transposed convolutions, Hugging Face ``Conv1D``; the fused expert tensors and
   routers of :mod:`parametrization.layouts`; whatever :func:`register_layout` adds).
7. Anything else (a raw ≥2-D ``nn.Parameter`` of a custom module) is ambiguous: detection raises
   a ``ValueError`` naming the parameter and the ``roles={...}`` override that resolves it.

User overrides are ``{glob: role}`` matched with :func:`fnmatch.fnmatchcase` against every name
of a parameter (tied parameters have several); when several globs match, the last one wins.
A glob that matches nothing is an error.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum

import torch.nn as nn
from torch import Tensor

from .owners import owners_by_id

__all__ = [
    "Role",
    "WeightLayout",
    "RoleTable",
    "detect_roles",
    "register_layout",
    "register_role",
    "weight_layout",
    "role_rule",
    "matrix_view",
    "MATRIX_VIEWS",
]


class Role(str, Enum):
    """The kind of a parameter, which decides its optimizer rule."""

    EMBEDDING = "embedding"
    """Token or position embedding tables (looked up by index), and learned rows added to or
    concatenated with the input sequence (ViT class/distillation tokens, position tables)."""
    HEAD = "head"
    """The output / unembedding matrix, tied to the embedding or not."""
    MATRIX = "matrix"
    """Every other ≥2-D weight: attention, MLP, convolutions seen as matrices."""
    VECTOR = "vector"
    """Norm weights, biases and other ≤1-D parameters, plus per-channel tensors of any shape
    (SSM ``A_log``, depthwise conv kernels, stacked expert biases)."""
    MULTIPLIER = "multiplier"
    """A learnable multiplier inserted by :func:`parametrization.parametrize`."""

    def __str__(self) -> str:  # "matrix", not "Role.MATRIX", in tables and messages
        return self.value


_USER_ROLES = (Role.EMBEDDING, Role.HEAD, Role.MATRIX, Role.VECTOR)


@dataclass(frozen=True)
class WeightLayout:
    """Where a module stores the output rows and input columns of its ``weight``.

    ``row_dim`` is the axis indexed by output features (what a row multiplier ``r`` scales),
    ``col_dim`` the axis indexed by input features (what ``c`` scales). ``batch_dim``, when set,
    is an axis of independent matrices (stacked experts ``[E, out, in]``): each matrix gets its
    own multipliers, so ``s`` has shape ``[E]``, ``r`` ``[E, out]`` and ``c`` ``[E, in]``. Other
    axes (kernel taps) are broadcast over.
    """

    row_dim: int = 0
    col_dim: int = 1
    batch_dim: int | None = None


MATRIX_VIEWS = ("out_in", "in_out", "batch_out_in", "batch_in_out", "conv", "conv_transposed")
"""How Muon reads a parameter as matrices (the ``matrix_view`` key of a param group):

* ``out_in``: 2-D ``(fan_out, fan_in)`` (``nn.Linear``);
* ``in_out``: 2-D ``(fan_in, fan_out)`` (Hugging Face ``Conv1D``);
* ``batch_out_in`` / ``batch_in_out``: ``[..., fan_out, fan_in]`` / ``[..., fan_in, fan_out]``, the
  leading axes index independent matrices (stacked experts);
* ``conv``: ``[out, in, *kernel]`` seen as one ``(out, in·prod(kernel))`` matrix;
* ``conv_transposed``: ``[in, out, *kernel]`` (``nn.ConvTranspose*``) seen as one
  ``(in, out·prod(kernel))`` matrix with fan_out = ``out·prod(kernel)``, fan_in = ``in``.
"""


def matrix_view(layout: WeightLayout, ndim: int) -> str:
    """The :data:`MATRIX_VIEWS` entry of a ``ndim``-D weight stored with ``layout``."""
    row, col = layout.row_dim % ndim, layout.col_dim % ndim
    if layout.batch_dim is not None:
        if {row, col} != {ndim - 2, ndim - 1}:
            raise ValueError(f"a batched layout must keep rows and columns on the last two axes, got {layout}")
        return "batch_out_in" if row < col else "batch_in_out"
    if ndim == 2:
        return "out_in" if row < col else "in_out"
    if (row, col) == (0, 1):
        return "conv"
    if (row, col) == (1, 0):
        return "conv_transposed"
    raise ValueError(f"no matrix view for a {ndim}-D weight with layout {layout}")


# Types are matched with isinstance; the string keys (module.qualname) match third-party types
# without importing them, e.g. Hugging Face GPT-2's Conv1D, which stores its weight as (in, out).
# Keys are (type or qualname string, parameter name).
_LAYOUTS: dict[tuple[type, str], WeightLayout] = {
    (nn.Linear, "weight"): WeightLayout(0, 1),
    (nn.Bilinear, "weight"): WeightLayout(0, 2),
    (nn.Embedding, "weight"): WeightLayout(0, 1),
    (nn.EmbeddingBag, "weight"): WeightLayout(0, 1),
    (nn.Conv1d, "weight"): WeightLayout(0, 1),
    (nn.Conv2d, "weight"): WeightLayout(0, 1),
    (nn.Conv3d, "weight"): WeightLayout(0, 1),
    (nn.ConvTranspose1d, "weight"): WeightLayout(1, 0),
    (nn.ConvTranspose2d, "weight"): WeightLayout(1, 0),
    (nn.ConvTranspose3d, "weight"): WeightLayout(1, 0),
}
_LAYOUTS_BY_NAME: dict[tuple[str, str], WeightLayout] = {
    ("transformers.pytorch_utils.Conv1D", "weight"): WeightLayout(1, 0),
}
_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)

# Roles of parameters that are not matrices of a known layout, keyed like _LAYOUTS.
_ROLES: dict[tuple[type, str], Role] = {}
_ROLES_BY_NAME: dict[tuple[str, str], Role] = {}

LayoutRule = Callable[[nn.Module, str, Tensor], "WeightLayout | None"]
RoleRule = Callable[[nn.Module, str, Tensor], "Role | None"]
# Structural rules for families whose module types are too many to list (every Hugging Face MoE
# model has its own experts class); parametrization.layouts appends the built-in ones. Consulted
# after the type registries, first answer wins.
_LAYOUT_RULES: list[LayoutRule] = []
_ROLE_RULES: list[RoleRule] = []


def register_layout(
    module_type: type | str,
    *,
    row_dim: int,
    col_dim: int,
    param: str = "weight",
    batch_dim: int | None = None,
) -> None:
    """Teach role detection a Linear-like module type and where its weight keeps rows/columns.

    Args:
        module_type: the class, or its ``"module.QualName"`` string (so a type can be named
            without importing its package).
        row_dim: axis of the parameter indexed by output features.
        col_dim: axis of the parameter indexed by input features.
        param: the parameter's attribute name on the module (default ``"weight"``; e.g.
            ``"gate_up_proj"`` for fused experts).
        batch_dim: axis of independent matrices (stacked experts), or ``None``.

    Example: ``register_layout(MyConv1D, row_dim=1, col_dim=0)`` for a weight stored (in, out).
    """
    if row_dim == col_dim or batch_dim in (row_dim, col_dim):
        raise ValueError(
            f"row_dim, col_dim and batch_dim must differ, got row_dim={row_dim}, col_dim={col_dim}, batch_dim={batch_dim}"
        )
    if not isinstance(param, str) or not param:
        raise TypeError(f"param must be a parameter attribute name, got {param!r}")
    layout = WeightLayout(row_dim, col_dim, batch_dim)
    if isinstance(module_type, str):
        _LAYOUTS_BY_NAME[(module_type, param)] = layout
    elif isinstance(module_type, type) and issubclass(module_type, nn.Module):
        _LAYOUTS[(module_type, param)] = layout
    else:
        raise TypeError(f"module_type must be an nn.Module subclass or a 'module.QualName' string, got {module_type!r}")


def register_role(module_type: type | str, *, param: str, role: Role | str) -> None:
    """Give ``module_type.<param>`` a fixed role (for a parameter that is not a matrix).

    Args:
        module_type: the class, or its ``"module.QualName"`` string.
        param: the parameter's attribute name on the module, e.g. ``"cls_token"``.
        role: ``"embedding"``, ``"head"``, ``"matrix"`` or ``"vector"``. A ``"matrix"`` needs a
            layout (rows, columns) for multipliers and Muon: use :func:`register_layout` instead.

    Example: ``register_role(MyPatchEmbed, param="pos_table", role="embedding")``.
    """
    if not isinstance(param, str) or not param:
        raise TypeError(f"param must be a parameter attribute name, got {param!r}")
    allowed = ", ".join(r.value for r in _USER_ROLES if r is not Role.MATRIX)
    try:
        parsed = Role(role)
    except ValueError:
        raise ValueError(f"role = {role!r} is not a role; allowed: {allowed}") from None
    if parsed is Role.MATRIX:
        raise ValueError(
            f"role = 'matrix' for {module_type!r}.{param}: a matrix needs its row/column axes; call "
            f"register_layout({module_type!r}, param={param!r}, row_dim=..., col_dim=...) instead"
        )
    if parsed is Role.MULTIPLIER:
        raise ValueError(f"role = 'multiplier' is reserved for the multipliers parametrize() inserts; allowed: {allowed}")
    if isinstance(module_type, str):
        _ROLES_BY_NAME[(module_type, param)] = parsed
    elif isinstance(module_type, type) and issubclass(module_type, nn.Module):
        _ROLES[(module_type, param)] = parsed
    else:
        raise TypeError(f"module_type must be an nn.Module subclass or a 'module.QualName' string, got {module_type!r}")


def _lookup(module: nn.Module, param: str, by_type: dict, by_name: dict, rules: list):  # type: ignore[type-arg]
    """The registered entry for ``module.<param>`` (nearest class in the MRO first, by class or by
    ``"module.QualName"``), else the first built-in rule that answers, else ``None``."""
    for cls in type(module).__mro__:
        name = f"{cls.__module__}.{cls.__qualname__}"
        if (name, param) in by_name:
            return by_name[(name, param)]
        if (cls, param) in by_type:
            return by_type[(cls, param)]
    p = module._parameters.get(param)
    if p is None:
        return None
    for rule in rules:
        found = rule(module, param, p)
        if found is not None:
            return found
    return None


def weight_layout(module: nn.Module, param: str = "weight") -> WeightLayout | None:
    """The :class:`WeightLayout` of ``module.<param>``, or ``None`` for an unknown module type.

    Registered types (:func:`register_layout`, nearest class in the MRO first) come before the
    built-in structural rules of :mod:`parametrization.layouts`.
    """
    return _lookup(module, param, _LAYOUTS, _LAYOUTS_BY_NAME, _LAYOUT_RULES)


def role_rule(module: nn.Module, param: str) -> Role | None:
    """The role :func:`register_role` or a built-in rule gives ``module.<param>``, else ``None``."""
    return _lookup(module, param, _ROLES, _ROLES_BY_NAME, _ROLE_RULES)


def _is_linear_like(module: nn.Module) -> bool:
    return weight_layout(module) is not None and not isinstance(module, _EMBEDDING_TYPES)


@dataclass
class RoleTable:
    """Roles keyed by FQN, plus the aliases of tied parameters.

    ``roles`` has one entry per distinct parameter under its canonical (first) name;
    ``aliases`` maps every other name of a tied parameter to its canonical name.
    """

    roles: dict[str, Role]
    aliases: dict[str, str]

    def role_of(self, fqn: str) -> Role:
        """Role of the parameter called ``fqn`` (canonical name or alias)."""
        key = self.aliases.get(fqn, fqn)
        if key in self.roles:
            return self.roles[key]
        raise KeyError(fqn)

    def all_names(self) -> dict[str, Role]:
        """Every name, aliases included, mapped to its role."""
        out = dict(self.roles)
        out.update({alias: self.roles[canon] for alias, canon in self.aliases.items()})
        return out


def _parse_overrides(overrides: Mapping[str, str | Role] | None) -> list[tuple[str, Role]]:
    if overrides is None:
        return []
    if not isinstance(overrides, Mapping):
        raise TypeError(f"roles must be a mapping of FQN glob -> role, got {type(overrides).__name__}")
    parsed = []
    allowed = ", ".join(r.value for r in _USER_ROLES)
    for glob, role in overrides.items():
        if not isinstance(glob, str):
            raise TypeError(f"roles keys must be FQN glob strings, got {glob!r}")
        try:
            parsed_role = Role(role)
        except ValueError:
            raise ValueError(f"roles[{glob!r}] = {role!r} is not a role; allowed: {allowed}") from None
        if parsed_role is Role.MULTIPLIER:
            raise ValueError(
                f"roles[{glob!r}] = 'multiplier': that role is reserved for the multipliers that "
                f"parametrize() inserts; allowed: {allowed}"
            )
        parsed.append((glob, parsed_role))
    return parsed


def detect_roles(model: nn.Module, overrides: Mapping[str, str | Role] | None = None) -> RoleTable:
    """Assign a :class:`Role` to every parameter of ``model`` (see the module docstring).

    Raises:
        ValueError: an override names an unknown role or matches no parameter, or a parameter's
            role cannot be decided; the message names the parameter and the fix.
    """
    parsed = _parse_overrides(overrides)

    # All names of every parameter; tied parameters appear under several names. Tensor identity
    # is used only here, during detection, never stored.
    by_id = owners_by_id(model)
    names_of = {pid: [o.fqn for o in found] for pid, found in by_id.items()}
    owners = {pid: [(o.module, o.param_name) for o in found] for pid, found in by_id.items()}
    params = {pid: found[0].module._parameters[found[0].param_name] for pid, found in by_id.items()}
    canonical = {pid: n for pid, n in ((pid, names[0]) for pid, names in names_of.items())}
    # named_parameters() order defines the canonical name of a tied parameter.
    for fqn, p in model.named_parameters():
        canonical[id(p)] = fqn

    # Overrides: last matching glob wins.
    overridden: dict[int, Role] = {}
    for glob, role in parsed:
        hit = False
        for pid, names in names_of.items():
            if any(fnmatch.fnmatchcase(n, glob) for n in names):
                overridden[pid] = role
                hit = True
        if not hit:
            raise ValueError(
                f"roles glob {glob!r} matches no parameter of {type(model).__name__}; "
                f"parameter names look like {sorted(canonical.values())[:4]}"
            )

    head_ids = _auto_head(model, owners) if Role.HEAD not in overridden.values() else set()

    roles: dict[str, Role] = {}
    aliases: dict[str, str] = {}
    problems: list[str] = []
    for pid, names in names_of.items():
        fqn = canonical[pid]
        for n in names:
            if n != fqn:
                aliases[n] = fqn
        if pid in overridden:
            roles[fqn] = overridden[pid]
            continue
        p = params[pid]
        mods = owners[pid]
        if pid in head_ids:
            roles[fqn] = Role.HEAD
        elif any(isinstance(m, _EMBEDDING_TYPES) and pn == "weight" for m, pn in mods):
            roles[fqn] = Role.EMBEDDING
        elif getattr(p, "_no_weight_decay", False) is True:
            roles[fqn] = Role.VECTOR
        elif (ruled := next((r for m, pn in mods if (r := role_rule(m, pn)) is not None), None)) is not None:
            roles[fqn] = ruled
        elif p.ndim <= 1:
            roles[fqn] = Role.VECTOR
        elif any(weight_layout(m, pn) is not None for m, pn in mods):
            roles[fqn] = Role.MATRIX
        else:
            owner = type(mods[0][0]).__name__
            problems.append(
                f"{fqn!r} (shape {tuple(p.shape)}, a raw parameter of {owner})"
            )
    if problems:
        raise ValueError(
            "cannot decide the role of " + "; ".join(problems) + ". Pass roles={'<fqn or glob>': "
            "'matrix' | 'embedding' | 'head' | 'vector'} to parametrize(), or teach the module "
            "type with parametrization.register_layout(...) (a matrix: where its rows and columns are) "
            "or parametrization.register_role(...) (anything else)"
        )
    # Keep named_parameters() order.
    order = [fqn for fqn, _ in model.named_parameters()]
    roles = {fqn: roles[fqn] for fqn in order}
    return RoleTable(roles=roles, aliases=aliases)


def _auto_head(model: nn.Module, owners: dict[int, list[tuple[nn.Module, str]]]) -> set[int]:
    """Parameter id of the output matrix, found as the module docstring describes."""
    get_out = getattr(model, "get_output_embeddings", None)
    if callable(get_out):
        out = get_out()
        if out is None:
            return set()
        if not isinstance(out, nn.Module) or out._parameters.get("weight") is None:
            raise ValueError(
                f"{type(model).__name__}.get_output_embeddings() returned {type(out).__name__}, "
                "not a module with a 'weight' parameter; pass roles={'<fqn>': 'head'} instead"
            )
        return {id(out._parameters["weight"])}
    for pid, mods in owners.items():
        is_emb = any(isinstance(m, _EMBEDDING_TYPES) and pn == "weight" for m, pn in mods)
        is_lin = any(_is_linear_like(m) and pn == "weight" for m, pn in mods)
        if is_emb and is_lin:
            return {pid}
    last = None
    for module in model.modules():
        if isinstance(module, nn.Linear) or (_is_linear_like(module) and not _is_conv(module)):
            w = module._parameters.get("weight")
            if w is not None:
                last = id(w)
    return {last} if last is not None else set()


def _is_conv(module: nn.Module) -> bool:
    return isinstance(module, (nn.modules.conv._ConvNd,))
