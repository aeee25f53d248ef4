"""Trainer checkpoints: weights_only loading, clear errors for truncated / foreign / other-version
files, and the torch RNG restored on resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from reference_models import ByteCorpus, GPTConfig
from reference_models.train import CHECKPOINT_VERSION, TrainConfig, Trainer

MODEL = GPTConfig.preset("tiny", n_layer=1)


@pytest.fixture(scope="module")
def corpus() -> ByteCorpus:
    return ByteCorpus.load()


def _cfg(**overrides) -> TrainConfig:
    base = dict(steps=6, warmup_steps=1, batch_size=2, seq_len=16, eval_batches=1, progress=False, device="cpu",
                optimizer="muon", multipliers="vector")
    return TrainConfig(**{**base, **overrides})


def _with_dropout(trainer: Trainer) -> Trainer:
    """Dropout on the embedding output: the only randomness of a step comes from the torch RNG."""
    trainer.mp.model.wte.register_forward_hook(lambda m, i, out: F.dropout(out, 0.3, m.training))
    return trainer


def test_resume_restores_the_torch_rng(corpus, tmp_path):
    ckpt = tmp_path / "ckpt.pt"
    torch.manual_seed(0)
    straight = _with_dropout(Trainer.from_config(MODEL, _cfg(), corpus))
    for _ in range(3):
        straight.train_step()
    straight.save(ckpt)
    rest = [straight.train_step() for _ in range(3)]

    resumed = _with_dropout(Trainer.from_config(MODEL, _cfg(seed=5, data_seed=0), corpus))
    torch.manual_seed(1234)  # a different RNG stream: only the checkpoint can bring the right one back
    resumed.load(ckpt)
    assert [resumed.train_step() for _ in range(3)] == rest


def test_checkpoint_holds_only_plain_containers_and_tensors(corpus, tmp_path):
    trainer = Trainer.from_config(MODEL, _cfg(steps=2), corpus)
    trainer.train_step()
    trainer.save(tmp_path / "c.pt")
    state = torch.load(tmp_path / "c.pt", weights_only=True)  # raises on any pickled object
    assert state["version"] == CHECKPOINT_VERSION and state["step"] == 1
    assert isinstance(state["config"], str)


def test_truncated_checkpoint_raises_a_clear_error(corpus, tmp_path):
    trainer = Trainer.from_config(MODEL, _cfg(steps=2), corpus)
    trainer.save(tmp_path / "c.pt")
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt.*truncated"):
        trainer.load(tmp_path / "cut.pt")


def test_pickled_code_is_not_run(corpus, tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pickled code ran",))

    torch.save({"format": "lrm-optim.Trainer", "payload": Payload()}, tmp_path / "evil.pt")
    trainer = Trainer.from_config(MODEL, _cfg(steps=2), corpus)
    with pytest.raises(ValueError, match="evil.pt"):
        trainer.load(tmp_path / "evil.pt")


def test_checkpoint_of_another_model_raises_naming_the_parameter(corpus, tmp_path):
    other = Trainer.from_config(MODEL.replace(d_model=32), _cfg(steps=2), corpus)
    other.save(tmp_path / "other.pt")
    trainer = Trainer.from_config(MODEL, _cfg(steps=2), corpus)
    with pytest.raises(ValueError, match="another model.*wte.weight"):
        trainer.load(tmp_path / "other.pt")
    before = {k: v.clone() for k, v in trainer.mp.model.state_dict().items()}
    assert all(torch.equal(before[k], v) for k, v in trainer.mp.model.state_dict().items())


def test_checkpoint_of_another_version_raises(corpus, tmp_path):
    trainer = Trainer.from_config(MODEL, _cfg(steps=2), corpus)
    state = trainer.state_dict()
    state["version"] = CHECKPOINT_VERSION + 1
    torch.save(state, tmp_path / "v.pt")
    with pytest.raises(ValueError, match=f"version {CHECKPOINT_VERSION + 1}"):
        trainer.load(tmp_path / "v.pt")
    torch.save({"step": 3}, tmp_path / "foreign.pt")
    with pytest.raises(ValueError, match="not a Trainer checkpoint"):
        trainer.load(tmp_path / "foreign.pt")
