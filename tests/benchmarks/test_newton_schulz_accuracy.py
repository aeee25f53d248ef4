"""Smoke test of benchmarks/newton_schulz_accuracy.py (--quick): the table it prints ranks the forms as documented."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks import newton_schulz_accuracy


def test_quick_run_writes_json_and_ranks_the_bf16_forms(tmp_path: Path) -> None:
    out = tmp_path / "acc.json"
    result = newton_schulz_accuracy.main(["--quick", "--out", str(out)])
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    assert [(r["kind"], r["ratio"]) for r in result["rows"]] == [
        ("gaussian", 1), ("gaussian", 4), ("ill-conditioned", 1), ("ill-conditioned", 4)
    ]
    for row in result["rows"]:
        assert row["fp32 standard"] < 1e-5
        if row["kind"] == "gaussian":
            assert row["bf16 standard (CPU form)"] < row["bf16 torch.optim.Muon form"]
            assert row["bf16 standard (CUDA form)"] < row["bf16 torch.optim.Muon form"]
