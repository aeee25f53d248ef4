"""Smoke test: the multiplier ablation script runs end to end on a minimal setting."""

import json

from benchmarks import multiplier_ablation


def test_smoke_ablation_runs_every_variant_and_the_baseline_delta_is_zero(tmp_path):
    out = tmp_path / "ablation.json"
    result = multiplier_ablation.main(["--preset", "smoke", "--workers", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    variants = set(multiplier_ablation.VARIANTS)
    assert {row["variant"] for row in saved["summary"]} == variants
    cells = sum(len(c) for c in multiplier_ablation.PRESETS["smoke"]["cells"].values())
    assert len(result["summary"]) == cells * len(variants)
    for row in result["summary"]:
        if row["variant"] == "none":
            assert row["delta_mean"] == 0.0
        assert row["mean"] > 0 and row["mean"] == row["mean"]  # a finite, positive loss
    # Different placements train different models: not every variant can land on the baseline loss.
    assert any(row["delta_mean"] != 0.0 for row in result["summary"] if row["variant"] != "none")


def test_smoke_ablation_deltas_are_the_seed_paired_differences_of_its_runs(tmp_path):
    result = multiplier_ablation.main(["--preset", "smoke", "--workers", "1", "--out", str(tmp_path / "a.json")])
    for row in result["summary"]:
        def losses(variant):
            return {r["seed"]: r["final_val_loss"] for r in result["runs"]
                    if r["optimizer"] == row["optimizer"] and r["variant"] == variant
                    and (r["lr"], r["weight_decay"]) == (row["lr"], row["weight_decay"])}
        mine, ref = losses(row["variant"]), losses("none")
        diffs = [mine[s] - ref[s] for s in mine]
        assert row["delta_mean"] == sum(diffs) / len(diffs)
        assert row["mean"] == sum(mine.values()) / len(mine)
