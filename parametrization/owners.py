"""Which module stores which parameter: the owner scan shared by roles, parametrize and fold.

A parameter is stored in ``module._parameters[name]`` of one module, or of several when it is
tied (an embedding table reused as the output head). Tensor identity is used only while scanning,
never stored: the result is keyed by fully-qualified name (FQN), which survives ``deepcopy``,
``state_dict`` round trips and FSDP2.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn as nn

__all__ = ["Owner", "owners_by_id", "owners", "strip_wrappers"]


@dataclass(frozen=True, eq=False)
class Owner:
    """The module that stores a parameter, under one of the parameter's names."""

    module_name: str
    module: nn.Module
    param_name: str

    @property
    def fqn(self) -> str:
        """The parameter's FQN under this owner, e.g. ``"blocks.0.mlp.up.weight"``."""
        return f"{self.module_name}.{self.param_name}" if self.module_name else self.param_name


def owners_by_id(model: nn.Module) -> dict[int, list[Owner]]:
    """``id(parameter)`` → every owner of it, in ``named_modules()`` order (tied ones included)."""
    by_id: dict[int, list[Owner]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module._parameters.items():
            if p is None:
                continue
            found = by_id.setdefault(id(p), [])
            if not any(o.module_name == mod_name and o.param_name == pname for o in found):
                found.append(Owner(mod_name, module, pname))
    return by_id


def owners(model: nn.Module) -> dict[str, list[Owner]]:
    """Canonical FQN (as ``named_parameters()`` spells it) → every owner of that parameter."""
    by_id = owners_by_id(model)
    return {fqn: by_id[id(p)] for fqn, p in model.named_parameters()}


# Wrapper segments that torch.compile, activation checkpointing and FSDP1 put into FQNs.
_WRAPPER_SEGMENTS = ("_orig_mod", "_checkpoint_wrapped_module", "_fsdp_wrapped_module")


def strip_wrappers(fqn: str) -> str:
    """``fqn`` without the segments wrappers add (``_orig_mod.``, DDP's leading ``module.``, ...)."""
    parts = [p for p in fqn.split(".") if p not in _WRAPPER_SEGMENTS]
    if parts and parts[0] == "module":  # DistributedDataParallel
        parts = parts[1:]
    return ".".join(parts)
