"""``benchmarks/distributed.py`` runs end to end under FSDP2 and DDP (inside the 2-rank spawn)."""

from __future__ import annotations

import math

import pytest

from tests.distributed._harness import scenario_results

pytestmark = pytest.mark.distributed


def test_benchmark_fsdp2_and_ddp_train_the_same_model(dist2):
    per_rank = scenario_results(dist2, "benchmark_smoke")
    fsdp, ddp = per_rank[0]["fsdp2"], per_rank[0]["ddp"]
    assert fsdp["json_written"] and ddp["json_written"]
    assert fsdp["summary"]["world_size"] == ddp["summary"]["world_size"] == 2
    assert math.isfinite(fsdp["summary"]["final_val_loss"])
    # Same seed, data and optimizer: the two wrappings must train the same model.
    assert fsdp["summary"]["final_val_loss"] == pytest.approx(ddp["summary"]["final_val_loss"], abs=1e-4)
    assert fsdp["summary"]["final_val_loss"] < fsdp["summary"]["first_train_loss"]
