"""Tests for reference_models/train.py: schedule, config validation, the four arms train,
checkpoint resume is bit-identical, metrics are written."""

import json
import math

import pytest
import torch

from reference_models import ByteCorpus, GPTConfig
from reference_models.train import (
    TrainConfig,
    Trainer,
    autocast_context,
    build_model,
    build_optimizer,
    lr_schedule_factor,
    resolve_device,
    train,
)

ARMS = [("adamw", "none"), ("adamw", "vector"), ("muon", "none"), ("muon", "vector")]


@pytest.fixture(scope="module")
def corpus() -> ByteCorpus:
    return ByteCorpus.load()


def _cfg(**overrides) -> TrainConfig:
    base = dict(steps=12, warmup_steps=2, batch_size=4, seq_len=32, lr=3e-3, weight_decay=0.1,
                eval_batches=2, progress=False, device="cpu")
    return TrainConfig(**{**base, **overrides})


# ---------------------------------------------------------------------------- schedule


@pytest.mark.parametrize("schedule", ["cosine", "linear", "wsd"])
def test_lr_schedule_factor_warms_up_linearly_then_decays_to_min_ratio(schedule):
    kw = dict(total_steps=100, warmup_steps=10, schedule=schedule, decay_fraction=0.3, min_lr_ratio=0.1)
    values = [lr_schedule_factor(s, **kw) for s in range(100)]
    assert values[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    assert max(values) == pytest.approx(1.0)
    assert values[-1] == pytest.approx(0.1)
    after = values[10:]
    assert all(a >= b - 1e-12 for a, b in zip(after, after[1:]))  # non-increasing after warmup


def test_wsd_is_constant_until_the_decay_phase():
    kw = dict(total_steps=100, warmup_steps=5, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    assert all(lr_schedule_factor(s, **kw) == 1.0 for s in range(5, 80))
    assert lr_schedule_factor(80, **kw) < 1.0


def test_scheduler_drives_every_group_including_multipliers(corpus):
    cfg = _cfg(optimizer="muon", multipliers="vector", steps=6, warmup_steps=2, min_lr_ratio=0.25,
               schedule="linear", multiplier_lr=1e-3)
    trainer = Trainer.from_config(GPTConfig.preset("tiny"), cfg, corpus)
    initial = [g["initial_lr"] for g in trainer.optimizer.param_groups]
    assert [g["lr"] for g in trainer.optimizer.param_groups] == pytest.approx([0.5 * lr for lr in initial])
    trainer.fit()
    final = [g["lr"] for g in trainer.optimizer.param_groups]
    assert final == pytest.approx([0.25 * lr for lr in initial])
    assert any(g["role"] == "multiplier" and g["initial_lr"] == 1e-3 for g in trainer.optimizer.param_groups)


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(optimizer="sgd"), "optimizer"),
        (dict(lr=0.0), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(steps=0), "steps"),
        (dict(warmup_steps=50, steps=10), "warmup_steps"),
        (dict(schedule="step"), "schedule"),
        (dict(batch_size=2.5), "batch_size"),
        (dict(betas=(0.9, 1.0)), "betas"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(decay_fraction=1.5), "decay_fraction"),
    ],
)
def test_bad_train_config_raises_naming_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        _cfg(**overrides)


def test_device_and_dtype_choice():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device"):
        resolve_device("potato")
    with autocast_context(torch.device("cpu")):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_steps_lr_wd_product_is_reported():
    assert _cfg(steps=1000, lr=3e-3, weight_decay=1.0).lr_times_wd_times_steps == pytest.approx(3.0)


# ---------------------------------------------------------------------------- training


@pytest.mark.parametrize("optimizer, multipliers", ARMS)
def test_tiny_preset_trains_well_below_uniform_loss(corpus, optimizer, multipliers):
    cfg = _cfg(optimizer=optimizer, multipliers=multipliers, steps=40, warmup_steps=4, batch_size=8,
               seq_len=64, lr=1e-2, schedule="cosine")
    result = train(GPTConfig.preset("tiny"), cfg, corpus)
    end = sum(result.train_loss[-5:]) / 5
    assert result.train_loss[0] > 0.97 * math.log(256)
    assert end < 0.65 * math.log(256)
    assert result.final_val_loss < 0.7 * math.log(256)
    assert result.steps == 40 and len(result.train_loss) == 40
    assert 0.0 < result.opt_step_share < 1.0 and result.tokens_per_s > 0


def test_optimizer_routes_matrices_to_muon_and_multipliers_to_adamw(corpus):
    cfg = _cfg(optimizer="muon", multipliers="vector")
    model, mp = build_model(GPTConfig.preset("tiny"), cfg)
    opt = build_optimizer(mp, cfg)
    by_role = {}
    for g in opt.param_groups:
        by_role.setdefault(g["role"], set()).add(g["algorithm"])
    assert by_role["matrix"] == {"muon"}
    assert by_role["multiplier"] == {"adamw"}
    n_params = sum(len(g["params"]) for g in opt.param_groups)
    assert n_params == len(list(model.parameters()))


@pytest.mark.parametrize("optimizer, multipliers", [("adamw", "none"), ("muon", "vector")])
def test_checkpoint_resume_continues_bit_identically(corpus, tmp_path, optimizer, multipliers):
    model_config = GPTConfig.preset("tiny", n_layer=1)
    common = dict(optimizer=optimizer, multipliers=multipliers, steps=10, warmup_steps=3, schedule="cosine")

    straight = Trainer.from_config(model_config, _cfg(**common), corpus)
    straight.fit()

    ckpt = tmp_path / "ckpt.pt"
    first = Trainer.from_config(model_config, _cfg(**common, checkpoint_path=str(ckpt), checkpoint_every=4), corpus)
    for _ in range(6):  # runs past the checkpoint at step 4 and then "crashes"
        first.train_step()
        if first.step == 4:
            first.save(ckpt)
    resumed = Trainer.from_config(model_config, _cfg(**common, checkpoint_path=str(ckpt), seed=123, data_seed=0), corpus)
    resumed.fit(resume=True)  # different init seed: everything must come from the checkpoint

    assert resumed.step == 10
    assert resumed.train_loss == straight.train_loss
    a = dict(straight.mp.model.named_parameters())
    b = dict(resumed.mp.model.named_parameters())
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.val_loss == straight.val_loss


def test_metrics_are_written_as_json_lines(corpus, tmp_path):
    path = tmp_path / "metrics.jsonl"
    result = train(GPTConfig.preset("tiny", n_layer=1), _cfg(steps=8, log_every=2, eval_every=4, metrics_path=str(path)), corpus)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    train_records = [r for r in records if "loss" in r]
    val_records = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in train_records] == [2, 4, 6, 8]
    assert [r["step"] for r in val_records] == [4, 8]
    assert train_records[-1]["loss"] == result.train_loss[-1]
    assert val_records[-1]["val_loss"] == result.final_val_loss
    assert all(r["lr"] > 0 and r["tokens_per_s"] > 0 for r in train_records)


def test_data_parallel_ranks_get_different_batches(corpus):
    cfg = _cfg()
    model, mp = build_model(GPTConfig.preset("tiny", n_layer=1), cfg)
    opt = build_optimizer(mp, cfg)
    from reference_models.train import build_scheduler

    sched = build_scheduler(opt, cfg)
    r0 = Trainer(model, mp, opt, sched, corpus, cfg, data_rank=0, data_world_size=2)
    r1 = Trainer(model, mp, opt, sched, corpus, cfg, data_rank=1, data_world_size=2)
    assert not torch.equal(r0.batch(0)[0], r1.batch(0)[0])
    assert torch.equal(r1.batch(0)[0], corpus.train_batch(1, 4, 32, seed=0)[0])
    with pytest.raises(ValueError, match="data_rank"):
        Trainer(model, mp, opt, sched, corpus, cfg, data_rank=2, data_world_size=2)


def test_too_long_seq_len_for_corpus_is_rejected(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("abc" * 100)
    with pytest.raises(ValueError, match="too small"):
        Trainer.from_config(GPTConfig.preset("tiny"), _cfg(batch_size=8, seq_len=64), ByteCorpus.load(path))


# ---------------------------------------------------------------------------- rules the README states


def test_train_config_defaults_are_pinned():
    cfg = TrainConfig()
    assert cfg.multiplier_weight_decay == 2e-3
    assert cfg.muon_lr_scale == "match_rms_adamw"
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.betas) == ("adamw", 3e-3, 0.1, 1.0, (0.9, 0.95))
    assert (cfg.schedule, cfg.warmup_steps, cfg.decay_fraction, cfg.min_lr_ratio) == ("wsd", 20, 0.2, 0.1)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_build_optimizer_hands_the_config_to_every_group(optimizer):
    cfg = _cfg(optimizer=optimizer, multipliers="vector", lr=1e-2, weight_decay=0.5, multiplier_weight_decay=7e-3,
               optimizer_kwargs={"decay": "independent"})
    _, mp = build_model(GPTConfig.preset("tiny", n_layer=1), cfg)
    opt = build_optimizer(mp, cfg)
    by_role = {g["role"]: g for g in opt.param_groups}
    assert by_role["multiplier"]["weight_decay"] == 7e-3
    assert by_role["matrix"]["weight_decay"] == 0.5 and by_role["matrix"]["lr"] == 1e-2
    assert all(g["decay"] == "independent" for g in opt.param_groups)  # optimizer_kwargs reach the optimizer
    if optimizer == "muon":
        assert by_role["matrix"]["lr_scale"] == "match_rms_adamw"
        other = build_optimizer(mp, _cfg(optimizer="muon", muon_lr_scale="spectral", adamw_lr=3e-3))
        assert {g["lr_scale"] for g in other.param_groups if g["algorithm"] == "muon"} == {"spectral"}


def test_trainer_clips_without_the_multipliers(corpus):
    """The clipped gradients the optimizer sees: non-multipliers scaled by max_norm / their own norm,
    multiplier gradients untouched (torch's clip over all parameters would scale them too)."""
    model_config = GPTConfig.preset("tiny", n_layer=1)
    cfg = _cfg(optimizer="muon", multipliers="vector", grad_clip=1e-3, steps=2, warmup_steps=1)
    trainer = Trainer.from_config(model_config, cfg, corpus)
    seen = {}
    trainer.optimizer.register_step_pre_hook(
        lambda opt, args, kwargs: seen.update({n: p.grad.clone() for n, p in trainer.mp.model.named_parameters()}))
    # The same model, unclipped gradients of the same batch.
    ref_model, ref_mp = build_model(model_config, cfg)
    x, y = trainer.batch(0)
    ref_model(x, y).backward()
    raw = {n: p.grad for n, p in ref_model.named_parameters()}
    trainer.train_step()
    mult = {n for n in raw if ref_mp.roles[n] == "multiplier"}
    assert mult
    norm = torch.linalg.vector_norm(torch.stack([raw[n].norm() for n in raw if n not in mult]))
    scale = 1e-3 / (norm + 1e-6)
    for n in raw:
        expected = raw[n] if n in mult else raw[n] * scale
        torch.testing.assert_close(seen[n], expected, rtol=1e-5, atol=1e-9)


def test_stats_are_logged_to_the_metrics_when_asked(corpus, tmp_path):
    path = tmp_path / "metrics.jsonl"
    cfg = _cfg(steps=6, stats_every=4, metrics_path=str(path), multipliers="vector", optimizer="muon")
    train(GPTConfig.preset("tiny", n_layer=1), cfg, corpus)
    stats = [json.loads(line) for line in path.read_text().splitlines() if '"stats"' in line]
    assert [r["step"] for r in stats] == [4, 6]
    entry = stats[-1]["stats"]["blocks.0.attn.q_proj.weight"]
    lr_now = 3e-3 * 0.1  # the lr at the end of the schedule (min_lr_ratio 0.1); Muon with match_rms_adamw: ρ = 0.2
    assert entry["role"] == "matrix" and entry["equilibrium_rms"] == pytest.approx(0.2 * math.sqrt(lr_now / (2 * 0.1)), rel=1e-6)
    assert {"rms_w", "rms_w_eff", "row_norm_spread", "col_norm_spread", "mult_row_min"} <= set(entry)


def test_optimizer_kwargs_with_an_object_are_recorded_by_repr():
    marker = object()
    cfg = _cfg(optimizer_kwargs={"process_group": marker, "nonfinite": "skip"})
    assert cfg.to_dict()["optimizer_kwargs"] == {"process_group": repr(marker), "nonfinite": "skip"}
