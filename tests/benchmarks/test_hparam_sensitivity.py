"""benchmarks/hparam_sensitivity.py: the analysis functions on hand cases, the forward sweep's
default point reproducing the default run, learnable and fixed forward multipliers agreeing at
init, muP equal to SP at the base width, and a smoke run of both experiments."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

import parametrization as P
from benchmarks import hparam_sensitivity as hs
from benchmarks._harness import ARMS, run
from reference_models import GPT, ByteCorpus, GPTConfig, TrainConfig

MODEL = GPTConfig.preset("tiny", n_layer=1)
BASE = TrainConfig(steps=4, warmup_steps=1, batch_size=2, seq_len=16, eval_batches=1, progress=False, device="cpu")


@pytest.fixture(scope="module")
def corpus() -> ByteCorpus:
    return ByteCorpus.load()


def test_parabola_fit_finds_the_vertex_between_grid_points():
    xs = [0.0, 1.0, 2.5, 4.0]
    ys = [(x - 2) ** 2 + 1 for x in xs]
    assert hs.parabola_min(xs, ys) == pytest.approx((2.0, 1.0, True))
    assert hs.parabola_min(xs, [3.0, 2.0, 1.5, 1.0]) == (4.0, 1.0, False)  # minimum at the edge


def test_interpolate_and_forward_summary():
    assert hs.interpolate([0.0, 1.0, 3.0], [1.0, 3.0, 7.0], 2.0) == pytest.approx(5.0)
    assert hs.interpolate([0.0, 1.0], [1.0, 3.0], -5.0) == 1.0
    s = hs.forward_summary({0.25: [2.0, 2.2], 1.0: [1.9, 2.0], 4.0: [2.5, 2.1]})
    assert s["spread"] == pytest.approx([0.6, 0.2]) and s["worst"] == pytest.approx([0.6, 0.2])
    assert s["spread_mean"][0] == pytest.approx(0.4)


def test_default_sweep_point_reproduces_the_default_run(corpus):
    plain = run(MODEL, BASE, ARMS["adamw"], lr=3e-3, weight_decay=0.1, seed=0, corpus=corpus)
    point = run(MODEL.replace(logit_multiplier=1.0, embedding_multiplier=1.0), BASE, ARMS["adamw"], lr=3e-3,
                weight_decay=0.1, seed=0, corpus=corpus)
    assert point.train_loss == plain.train_loss and point.final_val_loss == plain.final_val_loss
    mult = run(MODEL, BASE, ARMS["muon+mult"], lr=1e-2, weight_decay=0.1, seed=0, corpus=corpus,
               multipliers=hs.FORWARD_PLACEMENT)
    mult_point = run(MODEL, BASE, ARMS["muon+mult"], lr=1e-2, weight_decay=0.1, seed=0, corpus=corpus,
                     multipliers=hs.FORWARD_PLACEMENT, multiplier_init={"lm_head.weight_mult_scalar": 1.0})
    assert mult_point.train_loss == mult.train_loss


@pytest.mark.parametrize("knob", sorted(hs.FORWARD))
def test_learnable_multiplier_starts_where_the_fixed_one_is(knob):
    field, mult = hs.FORWARD[knob]
    idx = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(0))
    torch.manual_seed(0)
    fixed = GPT(MODEL.replace(**{field: 4.0}))
    torch.manual_seed(0)
    learnable = GPT(MODEL)
    mp = P.parametrize(learnable, multipliers=hs.FORWARD_PLACEMENT)
    hits = [p for n, p in learnable.named_parameters() if mp.roles[n] == "multiplier" and __import__("fnmatch").fnmatchcase(n, mult)]
    assert hits
    with torch.no_grad():
        for p in hits:
            p.fill_(4.0)
    torch.testing.assert_close(learnable(idx), fixed(idx), rtol=1e-4, atol=1e-4)
    assert not torch.allclose(GPT(MODEL)(idx), fixed(idx), atol=1e-3)  # the factor does change the forward


@pytest.mark.slow
def test_smoke_preset_runs_both_experiments(tmp_path: Path):
    out = tmp_path / "hs.json"
    hs.main(["--preset", "smoke", "--workers", "1", "--no-progress", "--out", str(out)])
    saved = json.loads(out.read_text())
    p = hs.PRESETS["smoke"]
    table = saved["forward"]["table"]
    assert set(table) == set(ARMS)
    for arm, knobs in table.items():
        for knob, row in knobs.items():
            losses = {float(f): v for f, v in row["losses"].items()}
            assert sorted(losses) == sorted(p["factors"])
            # The default point is one run shared by every knob of the arm.
            assert losses[1.0] == next(iter(knobs.values()))["losses"]["1.0"]
            assert row["spread"] == pytest.approx([max(v[0] for v in losses.values()) - min(v[0] for v in losses.values())])
    tr = saved["transfer"]
    w0 = str(p["widths"][0])
    # muP at its base width is SP: same runs, same losses.
    assert tr["arms"]["adamw muP"]["widths"][w0]["loss"] == tr["arms"]["adamw SP"]["widths"][w0]["loss"]
    wide = str(p["widths"][-1])
    assert tr["arms"]["adamw muP"]["widths"][wide]["loss"] != tr["arms"]["adamw SP"]["widths"][wide]["loss"]
    for arm in tr["arms"].values():
        assert arm["regret"] >= -1e-9 or not arm["widths"][wide]["interior"]
        assert math.isfinite(arm["drift_octaves"])


@pytest.mark.slow
def test_transfer_with_two_seeds_reports_each_seed(tmp_path: Path):
    out = tmp_path / "hs.json"
    hs.main(["--preset", "smoke", "--experiment", "transfer", "--transfer-seeds", "0,1", "--workers", "1", "--no-progress",
             "--out", str(out)])
    tr = json.loads(out.read_text())["transfer"]
    p = hs.PRESETS["smoke"]
    w0, wide = str(p["widths"][0]), str(p["widths"][-1])
    for label, arm in tr["arms"].items():
        assert [q["seed"] for q in arm["per_seed"]] == [0, 1]
        runs = {(r["seed"], r["lr"]): r["final_val_loss"] for r in tr["runs"]
                if r["setting"]["arm"] == label and r["setting"]["width"] == int(w0)}
        # The reported curve is the seed mean of the runs; the two seeds' runs differ.
        for lr, loss in zip(tr["lrs"], arm["widths"][w0]["loss"]):
            assert loss == pytest.approx((runs[(0, lr)] + runs[(1, lr)]) / 2)
        assert any(runs[(0, lr)] != runs[(1, lr)] for lr in tr["lrs"])
        for q in arm["per_seed"]:
            assert math.isfinite(q["drift_octaves"]) and math.isfinite(q["regret"])
        assert arm["widths"][wide]["loss"]
