"""Roles, multipliers and fold on real Hugging Face ``transformers`` causal LMs built from a config.

Nothing is downloaded: the models are built from small configs with random weights.
"""

from __future__ import annotations

import pytest
import torch

import parametrization as P
from optimizers import Muon

transformers = pytest.importorskip("transformers")

VOCAB = 64


def _gpt2() -> torch.nn.Module:
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _llama(tied: bool) -> torch.nn.Module:
    cfg = transformers.LlamaConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                                   num_attention_heads=2, num_key_value_heads=1, vocab_size=VOCAB,
                                   tie_word_embeddings=tied, bos_token_id=0, eos_token_id=0)
    return transformers.LlamaForCausalLM(cfg)


MODELS = {"gpt2": _gpt2, "llama-tied": lambda: _llama(True), "llama-untied": lambda: _llama(False)}


def _logits(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(x).logits


@pytest.mark.parametrize("name", sorted(MODELS))
def test_hf_causal_lm_roles_identity_and_fold(name):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    plain_keys = sorted(model.state_dict().keys())
    x = torch.randint(0, VOCAB, (2, 12))
    before = _logits(model, x)

    mp = P.parametrize(model, multipliers="vector")
    roles = mp.roles
    # The head comes from get_output_embeddings(); a tied embedding is the head, an untied one is not.
    assert roles["lm_head.weight"] == "head"
    matrices = [k for k, r in roles.items() if r == "matrix"]
    if name == "gpt2":
        assert roles["transformer.wte.weight"] == "head"  # tied to lm_head in GPT-2
        assert roles["transformer.wpe.weight"] == "embedding"
        assert "transformer.h.0.attn.c_attn.weight" in matrices
        # Conv1D stores its weight as (in, out): the row multiplier must have out = 3·n_embd entries.
        c_attn = model.transformer.h[0].attn.c_attn
        assert c_attn.weight_mult_row.shape == (96,) and c_attn.weight_mult_col.shape == (32,)
    else:
        embed_role = roles["model.embed_tokens.weight"]
        assert embed_role == ("head" if name == "llama-tied" else "embedding")
        assert "model.layers.0.self_attn.q_proj.weight" in matrices and "model.layers.1.mlp.down_proj.weight" in matrices
    assert all(r == "vector" for k, r in roles.items() if "norm" in k or k.endswith(".bias"))
    assert torch.equal(_logits(model, x), before)  # multipliers at 1: the plain model's output

    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.mul_(1 + 0.2 * torch.randn_like(p))
    moved = _logits(model, x)
    assert not torch.allclose(moved, before)
    plain = mp.fold()
    assert sorted(plain.state_dict().keys()) == plain_keys
    folded = _logits(plain, x)
    assert (folded - moved).norm() <= 1e-5 * moved.norm()


def test_hf_llama_trains_a_step_with_muon_groups():
    torch.manual_seed(0)
    model = _llama(tied=False)
    mp = P.parametrize(model)
    groups = mp.param_groups("muon", lr=1e-2, weight_decay=0.1)
    assert all(g["algorithm"] == "adamw" for g in groups if g["role"] != "matrix")
    opt = Muon(groups, lr_scale="match_rms_adamw")
    x = torch.randint(0, VOCAB, (2, 12))
    w = model.model.layers[0].self_attn.q_proj
    before = P.raw_weight(w).detach().clone()
    loss = model(x, labels=x).loss
    loss.backward()
    mp.clip_grad_norm_(1.0)
    opt.step()
    assert not torch.equal(P.raw_weight(w), before)
    assert torch.isfinite(model(x, labels=x).loss)
