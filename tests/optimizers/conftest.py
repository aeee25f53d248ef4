"""The optimizer tests use small tensors: one intra-op thread is fastest for them, and it keeps them
from stalling in OpenMP barriers when the CPU is shared with other jobs."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
