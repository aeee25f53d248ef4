"""Run many distributed scenarios in ONE spawn of W gloo/CPU processes.

Spawning processes (and importing torch in each) is the slow part of a distributed test, so the
suite spawns once per world size and runs every scenario in the same process group. Each scenario
is a function ``fn(ctx) -> dict`` in one of :data:`SCENARIO_MODULES`; its per-rank return values
(or the traceback it raised) are saved and handed back to the parent, where the pytest tests make
their assertions.
"""

from __future__ import annotations

import dataclasses
import datetime
import time
import traceback
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT_S = 600  # the spawn of 3 ranks takes ~2 min on 2 loaded cores; a hang still ends


SCENARIO_MODULES = (
    "tests.distributed._primitives",
    "tests.distributed._training",
    "tests.distributed._checkpoint",
)
"""Where the workers look up scenario names (each name is defined in exactly one of them)."""


@dataclasses.dataclass
class Context:
    rank: int
    world_size: int
    workdir: Path  # shared by all ranks (and by the later spawns: checkpoints taken on W load on W')


def _worker(rank: int, world_size: int, workdir: str, names: list[str]) -> None:
    torch.set_num_threads(1)  # W processes share 2 cores
    import importlib

    modules = [importlib.import_module(name) for name in SCENARIO_MODULES]

    dist.init_process_group(
        "gloo",
        init_method=f"file://{workdir}/store-{world_size}",
        rank=rank,
        world_size=world_size,
        timeout=datetime.timedelta(seconds=60),
    )
    ctx = Context(rank, world_size, Path(workdir))
    results: dict[str, object] = {}
    seconds: dict[str, float] = {}
    for name in names:
        start = time.perf_counter()
        try:
            (fn,) = [getattr(m, name) for m in modules if hasattr(m, name)]
            results[name] = fn(ctx)
        except Exception:  # recorded and re-raised in the parent's test
            results[name] = {"error": traceback.format_exc()}
        dist.barrier()
        seconds[name] = time.perf_counter() - start
    results["_seconds"] = seconds
    torch.save(results, Path(workdir) / f"results-{world_size}-{rank}.pt")
    dist.destroy_process_group()


def run_scenarios(world_size: int, names: list[str], workdir: Path) -> dict[str, list[object]]:
    """Spawn ``world_size`` processes, run ``names`` in order, return ``{name: [result per rank]}``."""
    ctx = mp.start_processes(
        _worker, args=(world_size, str(workdir), names), nprocs=world_size, join=False, start_method="spawn"
    )
    deadline = datetime.datetime.now() + datetime.timedelta(seconds=TIMEOUT_S)
    try:
        while not ctx.join(timeout=1):
            if datetime.datetime.now() > deadline:
                raise TimeoutError(f"distributed scenarios on {world_size} ranks did not finish in {TIMEOUT_S}s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    per_rank = [torch.load(workdir / f"results-{world_size}-{r}.pt", weights_only=False) for r in range(world_size)]
    return {name: [res[name] for res in per_rank] for name in [*names, "_seconds"]}


def scenario_results(results: dict[str, list[object]], name: str) -> list[dict]:
    """The per-rank results of one scenario; raises with the worker traceback if any rank failed."""
    per_rank = results[name]
    for rank, res in enumerate(per_rank):
        if isinstance(res, dict) and "error" in res:
            raise AssertionError(f"scenario {name!r} failed on rank {rank}:\n{res['error']}")
    return per_rank  # type: ignore[return-value]

