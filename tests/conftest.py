"""Shared pytest configuration."""

import os

import torch
from hypothesis import settings

# Deterministic, modest hypothesis runs: the suite must finish in minutes on 2 CPU cores.
settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
