"""Tests for ``optimizers/distributed.py``: whole-matrix orthogonalization of sharded updates."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from optimizers.distributed import assign_owners, chunk_sizes, orthogonalize_replicated
from tests.distributed._harness import scenario_results
from tests.distributed._primitives import PRIMITIVE_CASES, polar

TOL = 1e-5


@given(length=st.integers(0, 40), world=st.integers(1, 9))
def test_chunk_sizes_match_torch_chunk(length, world):
    pieces = torch.arange(length).chunk(world)
    expected = [len(p) for p in pieces] + [0] * (world - len(pieces))
    assert chunk_sizes(length, world) == expected


@given(costs=st.lists(st.integers(1, 1000), max_size=30), world=st.integers(1, 5))
def test_assign_owners_load_is_within_one_item_of_even(costs, world):
    owners = assign_owners(costs, world)
    assert all(0 <= o < world for o in owners) and len(owners) == len(costs)
    load = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
    assert max(load) <= sum(costs) / world + max(costs, default=0)


@given(costs=st.lists(st.integers(0, 1000), max_size=30), world=st.integers(1, 5))
def test_assign_owners_balances_cost_not_count(costs, world):
    # Greedy largest-first: each rank's cheapest item went to it when it had the least load, so
    # without that item the rank carries no more than the lightest rank. Balancing by matrix count
    # (round-robin) breaks this as soon as costs differ.
    owners = assign_owners(costs, world)
    load = [sum(c for c, o in zip(costs, owners) if o == r) for r in range(world)]
    for r in range(world):
        mine = [c for c, o in zip(costs, owners) if o == r]
        if mine:
            assert load[r] - min(mine) <= min(load), (costs, owners)


def test_assign_owners_gives_one_large_matrix_a_rank_of_its_own():
    # Matrix-count round-robin would put 100 and 1 together (101 vs 2); by cost the 100 is alone.
    costs = [100, 1, 1, 1]
    owners = assign_owners(costs, 2)
    assert [sum(c for c, o in zip(costs, owners) if o == r) for r in range(2)] in ([100, 3], [3, 100])


def test_owner_costs_are_newton_schulz_flops():
    from optimizers import newton_schulz_flops
    from optimizers.distributed import _cost

    assert _cost((3, 8, 32)) == 3 * newton_schulz_flops(8, 32)
    assert _cost((32, 8)) == newton_schulz_flops(8, 32)


@given(n=st.integers(0, 30), world=st.integers(1, 5))
def test_assign_owners_splits_equal_costs_round_robin(n, world):
    counts = [assign_owners([7] * n, world).count(r) for r in range(world)]
    assert sorted(counts) == sorted([n // world + (r < n % world) for r in range(world)])


@pytest.mark.parametrize(
    "call", [lambda: chunk_sizes(-1, 2), lambda: chunk_sizes(3, 0), lambda: assign_owners([1], 0), lambda: assign_owners([-1], 2)]
)
def test_bad_arguments_raise_value_error(call):
    with pytest.raises(ValueError):
        call()


def test_orthogonalize_replicated_single_process_is_local():
    x = [torch.randn(4, 3), torch.randn(2, 5)]
    out = orthogonalize_replicated(x, orthogonalize=lambda mats: [polar(m) for m in mats])
    for o, xi in zip(out, x):
        torch.testing.assert_close(o, polar(xi))


@pytest.mark.distributed
def test_dtensor_updates_are_orthogonalized_as_whole_matrices(dist_results):
    results, world = dist_results
    for rank, res in enumerate(scenario_results(results, "orthogonalize_primitive")):
        assert max(res["errors"]) < TOL, (rank, res["errors"])
        assert all(res["placements_kept"]), (rank, res["placements_kept"])


@pytest.mark.distributed
def test_float64_and_two_dim_mesh_updates_are_orthogonalized_as_whole_matrices(dist_results):
    results, world = dist_results
    for res in scenario_results(results, "orthogonalize_primitive"):
        assert max(res["extra_errors"]) < TOL, res["extra_errors"]
        assert all(res["extra_kept"])


@pytest.mark.distributed
def test_whole_matrix_check_detects_a_shard_orthogonalized_alone(dist_results):
    # The parity tolerance must be far below what orthogonalizing a local shard alone would give,
    # otherwise the test above could not catch that bug.
    results, world = dist_results
    for res in scenario_results(results, "orthogonalize_primitive"):
        assert res["shard_alone_error"] > 1000 * TOL


@pytest.mark.distributed
def test_each_dtensor_matrix_is_orthogonalized_once_and_work_is_split(dist_results):
    results, world = dist_results
    per_rank = [res["shapes_orthogonalized"] for res in scenario_results(results, "orthogonalize_primitive")]
    # Dim-sharded matrices go to one owner each; the batch-sharded 3-D stack is done locally in
    # pieces (each rank its own slices); the replicated one goes to one owner.
    regrouped = [s for s, pl in PRIMITIVE_CASES if len(s) == 2]
    all_2d = sorted(s for shapes in per_rank for s in shapes if len(s) == 2)
    assert all_2d == sorted(regrouped)
    counts = [len([s for s in shapes if len(s) == 2]) for shapes in per_rank]
    assert max(counts) <= math.ceil(len(regrouped) / world) + 1  # one shape is much cheaper, so LPT may add one
    assert min(counts) >= 1


@pytest.mark.distributed
def test_replicated_updates_split_work_and_match(dist_results):
    results, world = dist_results
    per_rank = scenario_results(results, "orthogonalize_replicated")
    for res in per_rank:
        assert max(res["errors"]) < TOL
    counts = [len(res["shapes_orthogonalized"]) for res in per_rank]
    assert sum(counts) == per_rank[0]["n"]
    assert max(counts) <= math.ceil(per_rank[0]["n"] / world) + 1


def _polar_list(mats):
    return [polar(m) for m in mats]


def test_orthogonalize_dtensors_treats_plain_tensors_locally():
    from optimizers.distributed import orthogonalize_dtensors

    x = [torch.randn(3, 5), torch.randn(2, 4, 3)]
    for o, xi in zip(orthogonalize_dtensors(x, orthogonalize=_polar_list), x):
        torch.testing.assert_close(o, polar(xi))


def test_orthogonalize_replicated_rejects_vectors_with_value_error():
    with pytest.raises(ValueError, match=r"updates\[1\]"):
        orthogonalize_replicated([torch.randn(2, 2), torch.randn(3)], orthogonalize=_polar_list)


def test_orthogonalize_distributed_uses_the_hook_for_local_updates():
    from optimizers.distributed import orthogonalize_distributed

    seen = []

    def hook(mats):
        seen.extend(tuple(m.shape) for m in mats)
        return _polar_list(mats)

    x = [torch.randn(3, 5), torch.randn(4, 2)]
    out = orthogonalize_distributed(x, orthogonalize=hook)
    assert seen == [(3, 5), (4, 2)]
    for o, xi in zip(out, x):
        torch.testing.assert_close(o, polar(xi))


def test_orthogonalize_distributed_default_is_the_local_batched_newton_schulz():
    from optimizers import orthogonalize_updates
    from optimizers.distributed import orthogonalize_distributed

    x = [torch.randn(6, 4), torch.randn(4, 6)]
    kw = dict(steps=3, coefficients="polar_express", dtype=torch.float64, method="standard")
    for o, e in zip(orthogonalize_distributed(x, **kw), orthogonalize_updates(x, **kw)):
        assert torch.equal(o, e)
