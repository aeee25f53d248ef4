"""benchmarks/freed_scales.py: summaries computed from the stats table, and a smoke run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import freed_scales as fs
from benchmarks._harness import ARMS


@pytest.mark.slow
def test_smoke_preset_reports_spreads_and_depth_profiles(tmp_path: Path):
    out = tmp_path / "fs.json"
    fs.main(["--preset", "smoke", "--workers", "1", "--no-progress", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert set(saved["summary"]) == set(ARMS)
    for name, s in saved["summary"].items():
        run = next(r for r in saved["runs"] if r["arm"] == name)
        spreads = [e["row_norm_spread"] for e in run["stats"].values() if e["role"] == "matrix"]
        assert s["row_norm_spread"] == pytest.approx([sum(spreads) / len(spreads)])
        assert all(v >= 1.0 for v in spreads)
        # Without multipliers W_eff is W.
        if not ARMS[name].has_multipliers:
            assert s["eff_over_raw"] == pytest.approx([1.0])
    for opt in ("adamw", "muon"):
        d = saved["differences"][opt]["row_norm_spread"]
        assert d == pytest.approx([a - b for a, b in zip(saved["summary"][f"{opt}+mult"]["row_norm_spread"],
                                                          saved["summary"][opt]["row_norm_spread"])])
    n_layer = saved["model"]["n_layer"]
    for arm, profile in saved["depth"].items():
        assert ARMS[arm].has_multipliers
        assert set(profile) == {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.o_proj", "mlp.gate_proj",
                                "mlp.up_proj", "mlp.down_proj"}
        assert all(len(v) == n_layer and all(x > 0 for x in v) for v in profile.values())
