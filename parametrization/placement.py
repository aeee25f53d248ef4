"""Where multipliers go: the :class:`Placement` of one weight, the named presets, glob resolution.

A placement says which of ``s`` (scalar), ``r`` (per-output-row vector), ``c`` (per-input-column
vector) a weight gets. ``parametrize(model, multipliers=...)`` takes a preset name or a
``{fqn_glob: letters}`` dict:

===========  ===========================  ===========================================================
preset       matrix and embedding          reason
===========  ===========================  ===========================================================
``vector``   ``rc`` (head: none)           paper §5 main setup; per-logit row scales on the head hurt
                                          and the final norm weight already is its column scale (App. C)
``scalar``   ``s`` (head: none)            one learnable scale per matrix, the cheapest variant
``none``     nothing                       roles and optimizer rules only
===========  ===========================  ===========================================================

A dict is matched with :func:`fnmatch.fnmatchcase` against each weight's FQN, its module's FQN
and the FQNs of its tied aliases; when several globs match one weight, **the last one wins**.
Weights no glob matches get none. The dict may also name the head. A glob that matches no
weight of a known layout raises. Weights tied between several modules never get multipliers
(one shared tensor cannot carry a factor for one of its uses only).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from .owners import Owner
from .roles import Role, RoleTable, WeightLayout, weight_layout

__all__ = ["Placement", "PRESETS", "Multipliers", "layout_of", "resolve_placements"]


@dataclass(frozen=True)
class Placement:
    """Which multipliers a layer gets: a scalar ``s``, a row vector ``r``, a column vector ``c``."""

    scalar: bool = False
    row: bool = False
    col: bool = False

    @classmethod
    def parse(cls, spec: str, *, where: str = "placement") -> "Placement":
        """Parse a spec string made of the letters ``s``, ``r``, ``c`` (or ``""``/``"none"``)."""
        if not isinstance(spec, str):
            raise TypeError(f"{where} must be a string of the letters 's', 'r', 'c', got {spec!r}")
        letters = "" if spec == "none" else spec
        bad = set(letters) - set("src")
        if bad or len(set(letters)) != len(letters):
            raise ValueError(
                f"{where} = {spec!r} is not a placement; use the letters 's' (scalar), 'r' (row), "
                f"'c' (column) at most once each, e.g. 'rc', 'r', 's', or 'none'"
            )
        return cls(scalar="s" in letters, row="r" in letters, col="c" in letters)

    @property
    def any(self) -> bool:
        return self.scalar or self.row or self.col

    def __str__(self) -> str:
        return ("s" if self.scalar else "") + ("r" if self.row else "") + ("c" if self.col else "") or "-"


Multipliers = Literal["vector", "scalar", "none"] | Mapping[str, str]
"""What ``parametrize(multipliers=...)`` accepts: a preset name or a ``{fqn_glob: letters}`` dict."""

PRESETS: dict[str, dict[Role, Placement]] = {
    "vector": {Role.MATRIX: Placement(row=True, col=True), Role.EMBEDDING: Placement(row=True, col=True)},
    "scalar": {Role.MATRIX: Placement(scalar=True), Role.EMBEDDING: Placement(scalar=True)},
    "none": {},
}
"""The named placements, per role (table in the module docstring)."""

_MULTIPLIABLE = (Role.MATRIX, Role.EMBEDDING, Role.HEAD)


def layout_of(owners: list[Owner]) -> WeightLayout | None:
    """Layout of a parameter held by exactly one module of a known layout, else ``None``."""
    if len(owners) != 1:
        return None
    return weight_layout(owners[0].module, owners[0].param_name)


def resolve_placements(
    multipliers: Multipliers,
    table: RoleTable,
    owners: Mapping[str, list[Owner]],
) -> dict[str, Placement]:
    """FQN of each weight → its :class:`Placement` (only weights that get at least one multiplier).

    Raises:
        ValueError / TypeError: an unknown preset, a bad letters spec, a glob that matches no
            weight of a known layout, or a glob placing multipliers on a tied weight.
    """
    out: dict[str, Placement] = {}
    if isinstance(multipliers, str):
        if multipliers not in PRESETS:
            raise ValueError(
                f"multipliers = {multipliers!r} is not a placement; use 'vector', 'scalar', 'none' or a "
                "{fqn_glob: 'src' letters} dict"
            )
        preset = PRESETS[multipliers]
        for fqn, role in table.roles.items():
            placement = preset.get(role)
            if placement is not None and layout_of(owners[fqn]) is not None:
                out[fqn] = placement
        return out
    if not isinstance(multipliers, Mapping):
        raise TypeError(f"multipliers must be 'vector', 'scalar', 'none' or a dict, got {type(multipliers).__name__}")
    parsed = []
    for glob, spec in multipliers.items():
        if not isinstance(glob, str):
            raise TypeError(f"multipliers keys must be FQN glob strings, got {glob!r}")
        parsed.append((glob, Placement.parse(spec, where=f"multipliers[{glob!r}]")))
    aliases_of: dict[str, list[str]] = {}
    for alias, canon in table.aliases.items():
        aliases_of.setdefault(canon, []).append(alias)
    for glob, placement in parsed:
        hit = False
        for fqn, role in table.roles.items():
            if role not in _MULTIPLIABLE:
                continue
            names = [fqn, *(o.module_name for o in owners[fqn]), *aliases_of.get(fqn, ())]
            if not any(fnmatch.fnmatchcase(n, glob) for n in names):
                continue
            if len(owners[fqn]) > 1 and placement.any:
                raise ValueError(
                    f"multipliers[{glob!r}] places multipliers on {fqn!r}, a weight tied between "
                    f"{[o.module_name for o in owners[fqn]]}; a multiplier on one use of a shared weight "
                    "cannot be folded back into it. Untie the weights or leave this one out"
                )
            if layout_of(owners[fqn]) is None:
                continue
            hit = True
            out[fqn] = placement  # a later glob replaces an earlier one
        if not hit:
            raise ValueError(
                f"multipliers glob {glob!r} matches no matrix, embedding or head weight of a known module type; "
                f"weight names look like {[f for f, r in table.roles.items() if r in _MULTIPLIABLE][:4]}"
            )
    return {fqn: p for fqn, p in out.items() if p.any}
