"""The interleaved timer of benchmarks/_report.py: fair order, paired rounds."""

from __future__ import annotations

import pytest

from benchmarks._report import paired_ratio, time_interleaved


@pytest.mark.parametrize("n_contenders", [2, 3, 5])
def test_no_contender_runs_twice_in_a_row_and_every_round_holds_each_once(n_contenders: int) -> None:
    calls: list[str] = []
    fns = {f"c{i}": (lambda name=f"c{i}": calls.append(name)) for i in range(n_contenders)}
    wall, cpu = time_interleaved(fns, 40, warmup=0, seed=3)
    assert all(len(wall[k]) == 40 and len(cpu[k]) == 40 for k in fns)
    assert all(a != b for a, b in zip(calls, calls[1:])), "a back-to-back call finds a warm cache"
    rounds = [calls[i:i + n_contenders] for i in range(0, len(calls), n_contenders)]
    assert all(sorted(r) == sorted(fns) for r in rounds)
    if n_contenders > 2:
        # Every contender is sometimes first and sometimes last: no position is owned.
        assert {r[0] for r in rounds} == set(fns) and {r[-1] for r in rounds} == set(fns)


def test_paired_ratio_is_the_median_of_per_round_ratios() -> None:
    times = {"a": [2.0, 30.0, 4.0], "b": [1.0, 10.0, 1.0]}
    assert paired_ratio(times, "a", "b") == 3.0  # ratios 2, 3, 4; the ratio of medians would be 4


def test_time_instances_pools_fresh_contender_sets_round_aligned() -> None:
    from benchmarks._report import time_instances

    built: list[int] = []

    def make_fns():
        built.append(len(built))
        return {"a": lambda: None, "b": lambda: None}

    wall, cpu = time_instances(make_fns, instances=3, n=4, warmup=0)
    assert built == [0, 1, 2]
    assert len(wall["a"]) == len(wall["b"]) == len(cpu["a"]) == 12
