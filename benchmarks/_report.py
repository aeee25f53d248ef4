"""What the benchmark scripts share: the interleaved timer, the machine record, ratio rows, and the
``main`` that parses arguments, runs, prints the rich table and writes the JSON.

A script provides ``parse_args(argv) -> Namespace`` (with an ``out`` path or ``None``),
``run(args) -> dict`` and ``render(result, console)``; its ``main`` is
``run_script(argv, parse_args, run, render)``.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

__all__ = ["machine", "paired_ratio", "ratio_row", "run_script", "time_instances", "time_interleaved", "write_json"]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], Any]], n: int, warmup: int = 1, *, seed: int = 0
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Call the contenders in turn ``n`` times each, in a fresh random order every round, so load drift
    on a shared machine and any penalty or bonus of a position hit all of them alike.

    No contender runs twice in a row (a round never starts with the previous round's last): a second
    back-to-back call finds its own weights and activations still in cache and is measurably faster,
    which once made the first and last contenders of a reversed order look 3 % faster than the rest.
    Round ``i`` holds the ``i``-th time of every contender, so ``wall[a][i] / wall[b][i]`` is a paired
    ratio (:func:`paired_ratio`).

    Returns wall-clock times and process CPU times (``time.process_time``: all our threads, but not the
    time other processes take the cores away, so steadier on a shared machine). CUDA is synchronized
    around every call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    rng = random.Random(seed)
    last = None
    for _ in range(n):
        order = list(fns)
        rng.shuffle(order)
        if len(order) > 1 and order[0] == last:
            order[0], order[-1] = order[-1], order[0]
        for name in order:
            _sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            _sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
        last = order[-1]
    return wall, cpu


def time_instances(
    make_fns: Callable[[], dict[str, Callable[[], Any]]], instances: int, n: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """:func:`time_interleaved` on ``instances`` fresh sets of contenders (``make_fns()`` builds one,
    e.g. new model copies, whose memory placement differs), pooled. Times stay round-aligned across
    contenders, so :func:`paired_ratio` still pairs times of one round."""
    wall: dict[str, list[float]] = {}
    cpu: dict[str, list[float]] = {}
    for instance in range(instances):
        fns = make_fns()
        w, c = time_interleaved(fns, n, warmup, seed=instance)
        for key in fns:
            wall.setdefault(key, []).extend(w[key])
            cpu.setdefault(key, []).extend(c[key])
        del fns
    return wall, cpu


def paired_ratio(times: dict[str, list[float]], ours: str, peer: str) -> float:
    """Median over rounds of ``times[ours][i] / times[peer][i]`` (both timed in round ``i``)."""
    return statistics.median(a / b for a, b in zip(times[ours], times[peer]))


def machine(device: str = "cpu") -> dict[str, Any]:
    """Platform, torch version, thread count, device name and the 1-minute load average (where known)."""
    try:
        import os

        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        load = None
    return {
        "platform": platform.platform(), "torch": torch.__version__, "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu", "load_avg_1min": load,
    }


def ratio_row(name: str, ours_s: float, peer: str, peer_s: float | None, goal: float | None, **extra: Any) -> dict[str, Any]:
    """One comparison: ``ratio = ours_s / peer_s`` and whether it meets ``goal`` (``None`` when unknown)."""
    ratio = ours_s / peer_s if peer_s else None
    meets = None if ratio is None or goal is None else ratio <= goal
    return dict(name=name, ours_s=ours_s, peer=peer, peer_s=peer_s, ratio=ratio, goal=goal, meets_goal=meets, **extra)


def write_json(result: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, default=str))


def run_script(
    argv: Sequence[str] | None,
    parse_args: Callable[[Sequence[str] | None], argparse.Namespace],
    run: Callable[[argparse.Namespace], dict[str, Any]],
    render: Callable[[dict[str, Any], Console], None],
    width: int = 150,
) -> dict[str, Any]:
    """Parse, run, print, and write the JSON to ``args.out`` when it is set; returns the result."""
    args = parse_args(argv)
    result = run(args)
    render(result, Console(width=width))
    if getattr(args, "out", None) is not None:
        write_json(result, args.out)
    return result
