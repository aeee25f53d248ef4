"""torch.distributed.checkpoint save/load of an FSDP2 model + Muon state (with multipliers)."""

from __future__ import annotations

import pytest

from tests.distributed._harness import scenario_results

pytestmark = pytest.mark.distributed


def test_checkpoint_load_restores_model_and_optimizer_state_exactly(dist_results):
    results, world = dist_results
    for res in scenario_results(results, "fsdp_checkpoint_resume"):
        assert res["n_optimizer_state"] > 0
        assert res["load_diff"] == 0.0


def test_resume_on_same_world_size_continues_identically(dist_results):
    results, world = dist_results
    for res in scenario_results(results, "fsdp_checkpoint_resume"):
        assert res["moved"] > 0  # the continued steps changed the model, so the comparison means something
        assert res["resume_diff"] == 0.0


def test_two_rank_checkpoint_loads_and_continues_on_three_ranks(dist3):
    for res in scenario_results(dist3, "fsdp_checkpoint_reshard_from_2"):
        assert res["load_diff"] == 0.0
        assert res["resume_diff"] < 1e-5
