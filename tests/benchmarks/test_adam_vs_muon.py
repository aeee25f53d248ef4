"""Smoke test of benchmarks/adam_vs_muon.py on its minimal `smoke` preset (no timing claims)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks import adam_vs_muon
from benchmarks._harness import ARMS, lr_wd_from_scale, mean_spread


@pytest.mark.slow
def test_smoke_preset_runs_every_arm_and_writes_consistent_json(tmp_path: Path) -> None:
    out = tmp_path / "avm.json"
    adam_vs_muon.main(["--preset", "smoke", "--out", str(out), "--workers", "1", "--no-progress",
                       "--multiplier-lrs", "default,1e-3"])
    saved = json.loads(out.read_text())
    assert set(saved["summary"]) == set(ARMS)
    preset = adam_vs_muon.PRESETS["smoke"]
    n_cells = len(saved["settings"]["cells"])
    assert len(saved["runs"]) == len(ARMS) * n_cells * len(preset["seeds"])
    for name, s in saved["summary"].items():
        # The best cell really is the lowest seed-mean of that arm's cells.
        cell_means = {}
        for r in saved["runs"]:
            if r["arm"] == name:
                cell_means.setdefault((r["lr"], r["weight_decay"]), []).append(r["final_val_loss"])
        best = min(cell_means, key=lambda c: mean_spread(cell_means[c])[0])
        assert (s["best"]["lr"], s["best"]["weight_decay"]) == best
        assert s["best"]["steps_lr_wd"] == preset["steps"] * best[0] * best[1]
        assert all(math.isfinite(v) and v < math.log(256) + 0.5 for v in s["best"]["val"])
        assert 0.0 < s["opt_step_share"] < 1.0
        assert (s["multiplier_lr"] is not None) == ARMS[name].has_multipliers
    pairs = {(d["a"], d["b"]) for d in saved["differences"]}
    assert ("adamw+mult", "adamw") in pairs and ("muon", "adamw") in pairs
    assert {m["arm"] for m in saved["multiplier_lr_sweep"]} == {"adamw+mult", "muon+mult"}
    assert {m["multiplier_lr"] for m in saved["multiplier_lr_sweep"]} == {1e-3, preset["shared"][0]}


@pytest.mark.slow
def test_two_workers_give_the_same_losses_as_one(tmp_path: Path) -> None:
    args = ["--preset", "smoke", "--arms", "adamw,muon+mult", "--seeds", "0", "--wds", "0.1", "--no-progress"]
    one = adam_vs_muon.main(args + ["--out", str(tmp_path / "one.json"), "--workers", "1"])
    two = adam_vs_muon.main(args + ["--out", str(tmp_path / "two.json"), "--workers", "2"])
    assert [r["final_val_loss"] for r in one["runs"]] == [r["final_val_loss"] for r in two["runs"]]


def test_scale_map_keeps_effective_lr_and_sets_scale() -> None:
    lr, wd = lr_wd_from_scale(0.25, 0.1)
    assert math.isclose(math.sqrt(lr * wd), 0.1) and math.isclose(math.sqrt(lr / wd), 0.25)


def test_first_reach_interpolates_the_crossing():
    curve = [(10, 3.0), (20, 2.0), (30, 1.0)]
    assert adam_vs_muon.first_reach(curve, 2.5) == pytest.approx(15.0)
    assert adam_vs_muon.first_reach(curve, 3.5) == 10.0
    assert adam_vs_muon.first_reach(curve, 0.5) == math.inf


def test_steps_to_target_pairs_each_seed_with_plain_adamws_final_loss():
    from benchmarks._harness import RunRecord

    def rec(arm, seed, curve):
        return RunRecord(arm=arm, lr=1e-2, weight_decay=0.1, seed=seed, final_val_loss=curve[-1][1], tokens_per_s=1.0,
                         opt_step_share=0.5, wall_s=1.0, steps_lr_wd=1.0, matrix_rms=0.1, multiplier_scales={},
                         train_loss=[], val_loss=curve)

    records = [rec("adamw", 0, [(50, 3.0), (100, 2.0)]), rec("adamw", 1, [(50, 3.0), (100, 2.5)]),
               rec("muon", 0, [(50, 2.0), (100, 1.5)]), rec("muon", 1, [(50, 2.75), (100, 2.2)])]
    summary = {a: {"best": {"lr": 1e-2, "weight_decay": 0.1}} for a in ("adamw", "muon")}
    out = adam_vs_muon.steps_to_target(records, summary, steps=100)
    assert out["adamw"]["fraction"] == [1.0, 1.0]
    # muon seed 0 is at AdamW's 2.0 already at step 50; seed 1 crosses 2.5 between 50 (2.75) and 100 (2.2).
    assert out["muon"]["fraction"] == pytest.approx([0.5, (50 + 50 * 0.25 / 0.55) / 100])
    assert out["muon"]["reached"] == 2
