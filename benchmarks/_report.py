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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

__all__ = ["machine", "ratio_row", "run_script", "time_interleaved", "write_json"]


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def time_interleaved(
    fns: dict[str, Callable[[], Any]], n: int, warmup: int = 1
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Call the contenders in turn ``n`` times each, reversing their order every round, so load drift on
    a shared machine and any penalty of going first hit all of them alike.

    Returns wall-clock times and process CPU times (``time.process_time``: all our threads, but not the
    time other processes take the cores away, so steadier on a shared machine). CUDA is synchronized
    around every call.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    wall: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns)
    for i in range(n):
        for name in order if i % 2 == 0 else reversed(order):
            _sync()
            t0, c0 = time.perf_counter(), time.process_time()
            fns[name]()
            _sync()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return wall, cpu


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
