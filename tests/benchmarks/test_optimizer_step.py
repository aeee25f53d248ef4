"""Smoke test of benchmarks/optimizer_step.py on its --quick setting (no speed assertions)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from benchmarks import optimizer_step


def test_quick_run_writes_json_with_every_comparison(tmp_path: Path) -> None:
    out = tmp_path / "optimizer_step.json"
    threads = torch.get_num_threads()
    try:  # one thread: the quick setting's tensors are tiny
        result = optimizer_step.main(["--quick", "--threads", "1", "--out", str(out)])
    finally:
        torch.set_num_threads(threads)
    saved = json.loads(out.read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    names = [r["name"] for r in saved["rows"]]
    # heavyball and pytorch_optimizer rows appear only where those packages are installed.
    optional = {"Muon step vs heavyball.Muon", "Muon step vs pytorch_optimizer.Muon"}
    assert [n for n in names if n not in optional] == [
        "AdamW step",
        "Newton–Schulz vs its GEMMs alone",
        "Muon step vs NS FLOP model",
        "Muon step vs torch.optim.Muon",
        "Muon(ns_method='auto') vs NS FLOP model",
        "Muon(ns_method='auto') vs Muon()",
    ]
    for row in saved["rows"]:
        assert row["ours_s"] > 0 and row["peer_s"] > 0
        assert row["ratio"] == pytest.approx(row["ours_s"] / row["peer_s"])
        assert isinstance(row["meets_goal"], bool) or (row["goal"] is None and row["meets_goal"] is None)
    assert next(r for r in saved["rows"] if r["name"] == "Muon step vs torch.optim.Muon")["grad_kept"] is True
    assert saved["matmul_gflops"] > 0
    # 1 layer, width 64: 64×192, 64×64, 64×256, 256×64 → 5·(4·s²·l + 2·s³) each.
    expected = 5 * sum(4 * 64 * 64 * big + 2 * 64**3 for big in (192, 64, 256, 256))
    assert saved["ns_gflop_per_step"] == pytest.approx(expected / 1e9)
    assert saved["state"]["muon_full_size_buffers_per_matrix"] == 1
    assert saved["state"]["adamw_full_size_buffers_per_matrix"] == 2


def test_bad_arguments_exit() -> None:
    with pytest.raises(SystemExit):
        optimizer_step.parse_args(["--width", "0"])
