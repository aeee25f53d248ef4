"""Smoke test of benchmarks/scale_sweep.py on its minimal `smoke` preset."""

from __future__ import annotations

import json
import math
from pathlib import Path

from benchmarks import scale_sweep


def test_smoke_sweep_moves_only_the_matrix_scale_at_fixed_effective_lr(tmp_path: Path) -> None:
    out = tmp_path / "ss.json"
    scale_sweep.main(["--preset", "smoke", "--arms", "adamw,adamw+mult", "--factors", "1/4,4",
                      "--workers", "1", "--out", str(out), "--no-progress"])
    saved = json.loads(out.read_text())
    rows = saved["rows"]
    assert [r["factor"] for r in rows] == [0.25, 4.0]
    for r in rows:
        assert math.isclose(math.sqrt(r["lr"] * r["weight_decay"]), saved["eta_eff"])
        assert math.isclose(math.sqrt(r["lr"] / r["weight_decay"]), r["factor"] * saved["s0"])
        assert math.isclose(r["predicted_adamw_rms"], math.sqrt(r["lr"] / (2 * r["weight_decay"])))
        assert set(r["arms"]) == {"adamw", "adamw+mult"}
        assert r["arms"]["adamw"]["multiplier_scales"] == {}
        assert "matrix" in r["arms"]["adamw+mult"]["multiplier_scales"]
    # A larger S lets the matrices grow faster (lr is 16x larger): their RMS must be larger.
    assert rows[1]["arms"]["adamw"]["matrix_rms"] > rows[0]["arms"]["adamw"]["matrix_rms"]
