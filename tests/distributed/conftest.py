"""One spawn of 2 and one of 3 gloo processes serve every distributed test (spawning is the slow part)."""

from __future__ import annotations

import pytest

from tests.distributed._harness import run_scenarios

# In order: the 2-rank run saves the checkpoint that the 3-rank run reshards. Checks that do not
# depend on the world size (fold, non-finite shards, method pass-through, benchmark) run on 2 ranks only.
SCENARIOS = {
    2: [
        "orthogonalize_primitive",
        "orthogonalize_replicated",
        "fsdp_muon_plain",
        "fsdp_muon_gram",
        "fsdp_muon_multipliers",
        "fsdp_adamw_multipliers",
        "ddp_muon_multipliers",
        "fsdp_nonfinite_shard",
        "fsdp_fold",
        "fsdp_checkpoint_resume",
        "benchmark_smoke",
    ],
    3: [
        "orthogonalize_primitive",
        "orthogonalize_replicated",
        "fsdp_muon_plain",
        "fsdp_muon_multipliers",
        "fsdp_adamw_multipliers",
        "ddp_muon_multipliers",
        "fsdp_checkpoint_resume",
        "fsdp_checkpoint_reshard_from_2",
    ],
}


@pytest.fixture(scope="session")
def dist_workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="session")
def dist2(dist_workdir):
    return run_scenarios(2, SCENARIOS[2], dist_workdir)


@pytest.fixture(scope="session")
def dist3(dist_workdir, dist2):
    return run_scenarios(3, SCENARIOS[3], dist_workdir)


@pytest.fixture(params=[2, 3], ids=["W2", "W3"])
def dist_results(request):
    """Parametrizes a test over both world sizes."""
    return request.getfixturevalue(f"dist{request.param}"), request.param
