"""The Hugging Face ``Trainer`` integration: clipping callback, optimizer hand-over, checkpoints.

Tiny models built from configs and a random token dataset built here; a few CPU steps each.
"""

from __future__ import annotations

import copy
import json
import importlib
import sys

import pytest
import torch

import parametrization as P
from optimizers import Muon

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")  # the Trainer needs it

from parametrization.huggingface import (  # noqa: E402
    ClipGradNormCallback,
    folded_state_dict,
    load_unfolded,
    save_folded,
)

VOCAB = 64
transformers.logging.set_verbosity_error()


def _llama() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                   tie_word_embeddings=False, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


def _gpt2() -> torch.nn.Module:  # tied head, Conv1D weights stored (in, out)
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _data(n: int = 16) -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [{"input_ids": x, "labels": x} for x in torch.randint(0, VOCAB, (n, 12), generator=g)]


def _args(out, **kw) -> "transformers.TrainingArguments":
    base = dict(output_dir=str(out), use_cpu=True, report_to=[], per_device_train_batch_size=4, max_steps=2,
                max_grad_norm=0.0, save_strategy="no", disable_tqdm=True, seed=0,
                lr_scheduler_type="linear", warmup_steps=4)  # after 2 steps every lr is at 2/4 of its own
    return transformers.TrainingArguments(**{**base, **kw})


def _trainer(mp, args, callbacks=()) -> "transformers.Trainer":
    opt = Muon(mp.param_groups("muon", lr=1e-2, weight_decay=0.1))
    return transformers.Trainer(model=mp.model, args=args, train_dataset=_data(), optimizers=(opt, None),
                                callbacks=list(callbacks))


def _perturb_multipliers(mp) -> None:
    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.mul_(1 + 0.3 * torch.randn_like(p))


def _logits(model, x) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


class _GradProbe(transformers.TrainerCallback):
    """Records every gradient at the first optimizer step."""

    def __init__(self, model):
        self.model, self.grads, self.calls = model, None, 0

    def on_pre_optimizer_step(self, args, state, control, **kw):
        self.calls += 1
        if self.grads is None:
            self.grads = {n: p.grad.clone() for n, p in self.model.named_parameters() if p.grad is not None}


# --------------------------------------------------------------------------- clipping


def test_importing_parametrization_does_not_need_transformers(monkeypatch):
    # Re-import the package with transformers made unimportable; the old modules come back after.
    for name in [m for m in sys.modules if m == "parametrization" or m.startswith("parametrization.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "transformers", None)  # "import transformers" now raises
    fresh = importlib.import_module("parametrization")
    assert fresh is not P and "parametrize" in fresh.__all__
    with pytest.raises(ImportError, match="pip install transformers"):
        importlib.import_module("parametrization.huggingface")


def test_callback_refuses_to_run_while_the_trainer_clips_too(tmp_path):
    mp = P.parametrize(_llama())
    with pytest.raises(ValueError, match=r"max_grad_norm=0"):
        _trainer(mp, _args(tmp_path, max_grad_norm=1.0), [ClipGradNormCallback(mp)])
    with pytest.raises(ValueError, match="max_norm"):
        ClipGradNormCallback(mp, max_norm=0.0)
    # A handle of another model would clip gradients the Trainer never steps.
    other = P.parametrize(_llama())
    with pytest.raises(ValueError, match="not the model mp parametrized"):
        _trainer(mp, _args(tmp_path), [ClipGradNormCallback(other)])


def test_trainer_step_clips_like_mp_clip_grad_norm_and_leaves_multipliers_unscaled(tmp_path):
    max_norm = 1e-3  # far below the gradient norm: clipping is active
    mp = P.parametrize(_llama())
    mult = {n for n, r in mp.roles.items() if r == "multiplier"}
    before, after = _GradProbe(mp.model), _GradProbe(mp.model)
    clip = ClipGradNormCallback(mp, max_norm=max_norm)
    trainer = _trainer(mp, _args(tmp_path, gradient_accumulation_steps=2), [before, clip, after])
    trainer.train()
    assert before.calls == after.calls == trainer.state.global_step == 2  # once per step, after accumulation

    pre, post = before.grads, after.grads
    assert mult and mult <= set(pre)
    for n in mult:  # multipliers: neither counted nor rescaled
        assert torch.equal(post[n], pre[n]), n
    others = [n for n in pre if n not in mult]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(pre[n]) for n in others]))
    assert norm > 100 * max_norm
    for n in others:
        torch.testing.assert_close(post[n], pre[n] * (max_norm / (norm + 1e-6)), rtol=1e-6, atol=0)
    # Same result as mp.clip_grad_norm_ on the same gradients.
    for n, p in mp.model.named_parameters():
        p.grad = pre[n].clone()
    expected_norm = mp.clip_grad_norm_(max_norm)
    for n, p in mp.model.named_parameters():
        assert torch.equal(p.grad, post[n]), n

    # The first step's norm is what mp.clip_grad_norm_ reports; the last is recorded too.
    assert torch.equal(expected_norm, torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(pre[n]) for n in others])))
    assert clip.last_norm is not None and torch.isfinite(clip.last_norm)
    # The Trainer scheduled our optimizer: every group at the same fraction of its own lr.
    assert len(trainer.optimizer.param_groups) > 1
    for g in trainer.optimizer.param_groups:
        assert g["lr"] == pytest.approx(0.5 * g["initial_lr"], rel=1e-12), g["role"]


def test_trainer_own_clipping_rescales_the_multipliers(tmp_path):
    """Why the callback exists: TrainingArguments(max_grad_norm=...) clips the multipliers too."""
    mp = P.parametrize(_llama())
    mult = [n for n, r in mp.roles.items() if r == "multiplier"]
    probe = _GradProbe(mp.model)  # runs after the Trainer's own clipping
    _trainer(mp, _args(tmp_path, max_grad_norm=1e-3, max_steps=1), [probe]).train()
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in probe.grads.values()]))
    assert total <= 1e-3 * (1 + 1e-4)  # everything, multipliers included, was scaled down together
    assert sum(probe.grads[n].norm() ** 2 for n in mult) > 0


def test_callback_unscales_fp16_gradients_once_before_clipping():
    from accelerate import Accelerator
    from accelerate.optimizer import AcceleratedOptimizer

    Accelerator(cpu=True)  # accelerate's wrapper needs its state initialized
    mp = P.parametrize(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2)))
    x = torch.randn(5, 4)
    mp.model(x).square().sum().backward()
    ref = {n: p.grad.clone() for n, p in mp.model.named_parameters()}
    mp.model.zero_grad(set_to_none=True)
    inner = torch.optim.SGD(mp.model.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    opt = AcceleratedOptimizer(inner, scaler=scaler)
    scaler.scale(mp.model(x).square().sum()).backward()

    clip = ClipGradNormCallback(mp, max_norm=1e-2)
    clip.on_pre_optimizer_step(None, None, None, optimizer=opt)
    for n, p in mp.model.named_parameters():
        p.grad, ref[n] = ref[n], p.grad
    expected = mp.clip_grad_norm_(1e-2)
    torch.testing.assert_close(clip.last_norm, expected)
    for n, p in mp.model.named_parameters():
        torch.testing.assert_close(ref[n], p.grad, rtol=1e-6, atol=0)
    opt.step()  # the scaler sees the optimizer as unscaled already and does not divide again
    assert scaler.get_scale() == 1024.0


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    "build, kwargs",
    [(_llama, {}), (_gpt2, {}), (_llama, {"base_width": 16})],
    ids=["llama", "gpt2-tied-conv1d", "llama-mup-head-factor"],
)
def test_save_folded_reloads_exactly_into_the_plain_class(tmp_path, build, kwargs):
    model = build().eval()
    plain_keys = set(model.state_dict())
    mp = P.parametrize(model, **kwargs)
    _perturb_multipliers(mp)
    x = torch.randint(0, VOCAB, (2, 12))
    training_state = {k: v.clone() for k, v in model.state_dict().items()}

    save_folded(mp, tmp_path / "folded")
    reloaded, info = type(model).from_pretrained(tmp_path / "folded", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert set(reloaded.state_dict()) == plain_keys
    assert not any(P.is_multiplied(m) for m in reloaded.modules())
    folded = copy.deepcopy(mp).fold()
    assert torch.equal(_logits(reloaded.eval(), x), _logits(folded, x))
    torch.testing.assert_close(_logits(reloaded, x), _logits(model, x), rtol=1e-5, atol=1e-5)
    # The training model is untouched: still multiplied, same tensors.
    assert not mp.folded and any(P.is_multiplied(m) for m in model.modules())
    assert all(torch.equal(v, training_state[k]) for k, v in model.state_dict().items())
    folded_sd, live = folded_state_dict(mp), model.state_dict()
    assert set(folded_sd) == plain_keys
    for a in folded_sd:  # tied weights (GPT-2's head and wte) stay one tensor
        for b in folded_sd:
            if live[a].data_ptr() == live[b].data_ptr():
                assert folded_sd[a] is folded_sd[b], (a, b)


def test_unfolded_checkpoint_is_wrong_in_the_plain_class_and_right_with_load_unfolded(tmp_path):
    model = _llama().eval()
    mp = P.parametrize(model)
    _perturb_multipliers(mp)
    x = torch.randint(0, VOCAB, (2, 12))
    model.save_pretrained(tmp_path / "unfolded")  # what a Trainer checkpoint holds

    plain, info = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "unfolded", output_loading_info=True)
    assert info["unexpected_keys"] and all("_mult_" in k for k in info["unexpected_keys"])
    assert not torch.allclose(_logits(plain.eval(), x), _logits(model, x), atol=1e-3)  # the multipliers are lost

    fresh = P.parametrize(_llama().eval())
    load_unfolded(fresh, tmp_path / "unfolded")
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in model.state_dict().items())
    assert torch.equal(_logits(fresh.model, x), _logits(model, x))

    # A plain (folded) checkpoint loads too, multipliers at 1: same function.
    save_folded(mp, tmp_path / "folded")
    again = P.parametrize(_llama().eval())
    load_unfolded(again, tmp_path / "folded")
    assert all(torch.equal(p, torch.ones_like(p)) for p in again.multiplier_parameters())
    torch.testing.assert_close(_logits(again.model, x), _logits(model, x), rtol=1e-5, atol=1e-5)


def test_load_unfolded_refuses_another_parametrization_and_changes_nothing(tmp_path):
    mp = P.parametrize(_llama())
    _perturb_multipliers(mp)
    mp.model.save_pretrained(tmp_path / "unfolded")
    other = P.parametrize(_llama(), multipliers="none")
    with torch.no_grad():
        for p in other.model.parameters():
            p.add_(1.0)
    state = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match="multipliers="):
        load_unfolded(other, tmp_path / "unfolded")
    assert all(torch.equal(v, state[k]) for k, v in other.model.state_dict().items())
    with pytest.raises(ValueError, match="model.safetensors"):
        load_unfolded(mp, tmp_path)
    wider = P.parametrize(transformers.LlamaForCausalLM(transformers.LlamaConfig(
        num_hidden_layers=2, hidden_size=32, intermediate_size=128, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=VOCAB, tie_word_embeddings=False)))
    state = {k: v.clone() for k, v in wider.model.state_dict().items()}
    with pytest.raises(ValueError, match="shape"):
        load_unfolded(wider, tmp_path / "unfolded")
    assert all(torch.equal(v, state[k]) for k, v in wider.model.state_dict().items())


def test_load_unfolded_keeps_multipliers_of_an_earlier_shard(tmp_path):
    """A weight loaded without its multipliers sets them to 1; one loaded before must survive."""
    from safetensors.torch import save_file

    mp = P.parametrize(_llama())
    _perturb_multipliers(mp)
    state = {k: v.contiguous() for k, v in mp.model.state_dict().items()}
    first = {k: v for k, v in state.items() if "_mult_" in k}  # multipliers in the shard read first
    second = {k: v for k, v in state.items() if k not in first}
    save_file(first, str(tmp_path / "a.safetensors"))
    save_file(second, str(tmp_path / "b.safetensors"))
    weight_map = {**{k: "a.safetensors" for k in first}, **{k: "b.safetensors" for k in second}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))

    fresh = P.parametrize(_llama())
    load_unfolded(fresh, tmp_path)
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in state.items())


def test_trainer_resume_of_an_unfolded_checkpoint_continues_exactly(tmp_path):
    def run(resume=None):
        mp = P.parametrize(_llama())  # parametrized the same way before the Trainer loads into it
        args = _args(tmp_path, max_steps=4, save_strategy="steps", save_steps=2)
        _trainer(mp, args, [ClipGradNormCallback(mp, max_norm=0.5)]).train(resume_from_checkpoint=resume)
        return mp

    straight = run()
    end = {k: v.clone() for k, v in straight.model.state_dict().items()}
    resumed = run(resume=str(tmp_path / "checkpoint-2"))
    assert all(torch.equal(v, resumed.model.state_dict()[k]) for k, v in end.items())
    assert not all(torch.equal(p, torch.ones_like(p)) for p in resumed.multiplier_parameters())

    outside = P.parametrize(_llama())  # resume outside the Trainer: load_unfolded
    load_unfolded(outside, tmp_path / "checkpoint-4")
    assert all(torch.equal(v, outside.model.state_dict()[k]) for k, v in end.items())


# transformers 5 saves Mixtral's fused experts under legacy per-expert keys and renames mlp →
# block_sparse_moe (multipliers included); from_pretrained converts back.


def _mixtral() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.MixtralConfig(num_hidden_layers=1, hidden_size=32, intermediate_size=64,
                                     num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                     num_local_experts=4, num_experts_per_tok=2, bos_token_id=0, eos_token_id=0)
    return transformers.MixtralForCausalLM(cfg)


def test_load_unfolded_reads_a_checkpoint_saved_under_converted_keys(tmp_path):
    mp = P.parametrize(_mixtral().eval())
    _perturb_multipliers(mp)
    with torch.no_grad():
        for p in mp.model.parameters():
            p.add_(0.01)
    mp.model.save_pretrained(tmp_path / "unfolded")
    from safetensors import safe_open

    with safe_open(str(tmp_path / "unfolded" / "model.safetensors"), "pt") as f:
        on_disk = set(f.keys())
    expert_multipliers = [k for k in mp.roles if ".experts." in k and mp.roles[k] == "multiplier"]
    assert expert_multipliers and not set(expert_multipliers) & on_disk  # saved under other names

    fresh = P.parametrize(_mixtral().eval())
    load_unfolded(fresh, tmp_path / "unfolded")
    assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in mp.model.state_dict().items())

    other = P.parametrize(_mixtral(), multipliers="none")
    state = {k: v.clone() for k, v in other.model.state_dict().items()}
    with pytest.raises(ValueError, match="multipliers="):
        load_unfolded(other, tmp_path / "unfolded")
    assert all(torch.equal(v, state[k]) for k, v in other.model.state_dict().items())

    save_folded(mp, tmp_path / "folded")
    reloaded, info = transformers.MixtralForCausalLM.from_pretrained(tmp_path / "folded", output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    x = torch.randint(0, VOCAB, (2, 8))
    assert torch.equal(_logits(reloaded.eval(), x), _logits(copy.deepcopy(mp).fold(), x))


def test_moe_resume_needs_load_unfolded_before_the_trainer_loads(tmp_path):
    """The Trainer's own resume loads the checkpoint's keys as they are: converted ones are skipped."""

    def run(resume=None, preload=False):
        mp = P.parametrize(_mixtral())
        if preload:
            load_unfolded(mp, resume)
        args = _args(tmp_path, max_steps=3, save_strategy="steps", save_steps=2)  # step 1 runs at lr 0 (warmup)
        _trainer(mp, args, [ClipGradNormCallback(mp, max_norm=0.5)]).train(resume_from_checkpoint=resume)
        return mp.model.state_dict()

    end = {k: v.clone() for k, v in run().items()}
    ckpt = str(tmp_path / "checkpoint-2")
    alone = run(ckpt)
    assert not all(torch.equal(v, alone[k]) for k, v in end.items())  # transformers' resume misses the experts
    resumed = run(ckpt, preload=True)
    assert all(torch.equal(v, resumed[k]) for k, v in end.items())
