"""Helpers shared by the parametrization tests."""

from __future__ import annotations

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
