"""Muon (± learnable multipliers) on the reference GPT under FSDP2 and DDP vs one process."""

from __future__ import annotations

import math

import pytest

from tests.distributed._harness import scenario_results

TOL = 1e-5  # fp32, a few steps: reduction order is the only difference from one process

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize(
    "scenario", ["fsdp_muon_plain", "fsdp_muon_multipliers", "ddp_muon_multipliers", "fsdp_adamw_multipliers"]
)
def test_distributed_run_matches_single_process(dist_results, scenario):
    results, world = dist_results
    for rank, res in enumerate(scenario_results(results, scenario)):
        assert res["max_diff"] < TOL, (rank, res["max_diff"])


@pytest.mark.parametrize("scenario", ["fsdp_muon_plain", "fsdp_muon_multipliers"])
def test_fsdp_run_has_uneven_dtensor_shards(dist_results, scenario):
    results, world = dist_results
    res = scenario_results(results, scenario)[0]
    assert res["all_dtensor"]
    assert any(name.endswith("gate_proj.weight") for name in res["uneven_params"]), res["uneven_params"]


def test_fsdp_parity_check_fails_when_shards_are_orthogonalized_alone(dist_results):
    results, world = dist_results
    for res in scenario_results(results, "fsdp_muon_plain"):
        assert res["shard_alone_max_diff"] > 100 * TOL, res["shard_alone_max_diff"]


@pytest.mark.parametrize("scenario", ["fsdp_muon_plain", "fsdp_muon_multipliers", "ddp_muon_multipliers"])
def test_newton_schulz_work_is_split_across_ranks(dist_results, scenario):
    results, world = dist_results
    per_rank = scenario_results(results, scenario)
    n = per_rank[0]["n_muon_matrices"]
    counts = [res["ns_matrices_per_step"] for res in per_rank]
    assert sum(counts) == n, counts  # every matrix exactly once per step, none redone
    assert max(counts) <= math.ceil(n / world) + 1, counts


@pytest.mark.parametrize("scenario", ["fsdp_muon_multipliers", "ddp_muon_multipliers"])
def test_clip_grad_norm_is_the_global_norm(dist_results, scenario):
    results, world = dist_results
    for res in scenario_results(results, scenario):
        assert len(res["norms"]) == len(res["ref_norms"]) > 0
        for got, want in zip(res["norms"], res["ref_norms"]):
            assert got == pytest.approx(want, rel=1e-5)


def test_fold_after_fsdp_training_gives_the_plain_model_of_the_single_process_run(dist2):
    for res in scenario_results(dist2, "fsdp_fold"):
        assert res["multiplier_keys"] == []
        assert res["state_diff"] < TOL
        assert res["logits_diff"] < TOL


@pytest.mark.parametrize("scenario", ["fsdp_muon_plain", "fsdp_muon_multipliers", "ddp_muon_multipliers"])
def test_param_groups_after_wrapping_match_the_single_process_groups(dist_results, scenario):
    results, world = dist_results
    for res in scenario_results(results, scenario):
        assert res["groups_match"]


def test_roles_and_multipliers_survive_fully_shard(dist_results):
    results, world = dist_results
    for res in scenario_results(results, "fsdp_muon_multipliers"):
        assert res["roles_kept"]
        assert res["n_multipliers"] > 0


def test_nonfinite_gradient_in_one_shard_is_handled_on_every_rank(dist2):
    # Each rank checks only its own shards; the decision must still be the same on all ranks, or the
    # ranks that step would wait forever for the one that skipped.
    for res in scenario_results(dist2, "fsdp_nonfinite_shard"):
        assert res["skip"] == {"raised": False, "skipped_steps": 1, "unchanged": True}
        assert res["raise"]["raised"] and res["raise"]["unchanged"]


def test_fsdp_muon_passes_the_newton_schulz_method_through(dist2):
    for res in scenario_results(dist2, "fsdp_muon_gram"):
        assert res["ns_methods"] == ["gram"], res["ns_methods"]
        assert res["max_diff"] < TOL
