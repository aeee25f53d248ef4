"""Helpers shared by the parametrization tests."""

from __future__ import annotations

from collections.abc import Iterable

import torch

import parametrization as P

IDX = torch.randint(0, 32, (2, 7), generator=torch.Generator().manual_seed(0))
"""A fixed batch of token indices for the 32-token toy models."""


def perturb_multipliers(mp: P.Parametrization, seed: int = 0) -> None:
    """Set every multiplier of ``mp`` to independent values drawn from U(0.25, 1.75)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.copy_(torch.rand(p.shape, generator=g) * 1.5 + 0.25)


class SavedBytes:
    """Context manager: the bytes autograd saves for backward inside it, counted once per distinct
    storage and leaving out the storages of ``exclude`` (the parameters)."""

    def __init__(self, exclude: Iterable[torch.Tensor]):
        self.skip = {t.untyped_storage().data_ptr() for t in exclude}
        self.seen: dict[int, int] = {}

    def __enter__(self) -> SavedBytes:
        def pack(t: torch.Tensor) -> torch.Tensor:
            ptr = t.untyped_storage().data_ptr()
            if ptr not in self.skip:
                self.seen[ptr] = t.untyped_storage().nbytes()
            return t

        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.seen.values())
