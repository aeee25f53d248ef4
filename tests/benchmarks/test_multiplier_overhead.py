"""Smoke test of benchmarks/multiplier_overhead.py on its --quick setting (no speed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import multiplier_overhead


@pytest.mark.slow
def test_quick_run_writes_json_with_every_ratio(tmp_path: Path) -> None:
    out = tmp_path / "multiplier_overhead.json"
    result = multiplier_overhead.main(["--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    names = [r["name"] for r in saved["rows"]]
    assert names == [
        "train step plain (copy)", "train step vector/auto", "train step vector/weight", "train step vector/activation",
        "train step vector/unfused", "train step vector/auto vs unfused", "forward folded", "forward vector/auto",
    ]
    for row in saved["rows"]:
        assert row["ours_s"] > 0 and row["peer_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["peer_s"])
        assert row["ratio_of_minima"] > 0 and row["cpu_time_ratio"] > 0 and row["paired_ratio"] > 0
    times = saved["raw_times_s"]["train_step"]
    auto = next(r for r in saved["rows"] if r["name"] == "train step vector/auto")
    paired = sorted(a / b for a, b in zip(times["vector/auto"], times["plain"]))
    assert auto["paired_ratio"] == pytest.approx((paired[0] + paired[-1]) / 2 if len(paired) == 2 else paired[len(paired) // 2])
    assert saved["fold_max_relative_error"] < 1e-5
    assert 0 < saved["multiplier_parameters"] < 0.05 * saved["parameters"]
    assert len(times["plain"]) == saved["config"]["steps"] * saved["config"]["instances"]
    assert [r["d_model"] for r in saved["sweep_rows"]] == saved["config"]["widths"]
    for row in saved["sweep_rows"]:
        # Memory is deterministic: the fused ops keep exactly what the plain model keeps, while the
        # unfused weight side keeps a copy of W_eff (and r·W) per layer.
        assert row["saved_bytes/vector"] == row["saved_bytes/plain"] < row["saved_bytes/vector/unfused"]
        assert row["saved_ratio"] == 1.0 and row["meets_goal"]
        assert row["time_ratio"] > 0 and len(row["time_times_s"]["vector"]) == saved["config"]["sweep_steps"] * saved["config"]["instances"]


def test_bad_arguments_exit() -> None:
    with pytest.raises(SystemExit):
        multiplier_overhead.parse_args(["--steps", "0"])
    with pytest.raises(SystemExit):
        multiplier_overhead.parse_args(["--sweep-steps", "-1"])
    with pytest.raises(SystemExit):
        multiplier_overhead.parse_args(["--instances", "0"])


def test_run_mode_wraps_every_contender_in_autocast_and_compile() -> None:
    import torch
    import torch.nn as nn

    layer = nn.Linear(4, 3)
    x = torch.randn(2, 4)
    assert multiplier_overhead.RunMode().call(layer) is layer
    assert multiplier_overhead.RunMode(bf16=True).call(layer)(x).dtype == torch.bfloat16
    compiled = multiplier_overhead.RunMode(compile=True).call(layer)
    assert compiled is not layer and compiled._orig_mod is layer  # not run here: compiling takes minutes on a CPU
    assert multiplier_overhead.parse_args(["--compile", "--warmup", "0"]).warmup == 1
