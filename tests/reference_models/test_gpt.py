"""Tests for reference_models/gpt.py: config validation, shapes, causality, naming, tying."""

import math

import pytest
import torch
from torch import nn

from reference_models import GPT, GPTConfig
from reference_models.gpt import apply_rope, rope_cos_sin


def _tiny(**overrides) -> GPTConfig:
    return GPTConfig.preset("tiny", **overrides)


@pytest.mark.parametrize("name", sorted(GPTConfig.PRESETS))
def test_presets_construct_and_forward_shapes(name):
    config = GPTConfig.preset(name, n_layer=1)  # one layer keeps the larger presets cheap
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (2, 8))
    logits = model(idx)
    assert logits.shape == (2, 8, config.vocab_size)
    loss = model(idx, idx)
    assert loss.shape == ()
    assert torch.isfinite(loss)


def test_initial_loss_is_near_uniform():
    torch.manual_seed(0)
    model = GPT(_tiny())
    idx = torch.randint(0, 256, (4, 32))
    loss = model(idx, torch.randint(0, 256, (4, 32)))
    assert abs(loss.item() - math.log(256)) < 0.1


@pytest.mark.parametrize("n_kv_head", [1, 2, 4])
def test_future_token_never_changes_earlier_logits(n_kv_head):
    torch.manual_seed(0)
    model = GPT(_tiny(n_kv_head=n_kv_head)).eval()
    idx = torch.randint(0, 256, (2, 24))
    changed = idx.clone()
    t = 13
    changed[:, t] = (changed[:, t] + 7) % 256
    with torch.no_grad():
        a, b = model(idx), model(changed)
    assert torch.equal(a[:, :t], b[:, :t])
    # The changed position itself and later ones do see the edit (so the test can fail).
    assert not torch.allclose(a[:, t:], b[:, t:])


def test_gradient_of_early_logit_wrt_later_embedding_is_zero():
    torch.manual_seed(0)
    model = GPT(_tiny())
    idx = torch.randint(0, 256, (1, 16))
    x = model.wte(idx).detach().requires_grad_(True)
    h = x
    cos, sin = model.rope_cos[:16], model.rope_sin[:16]
    for block in model.blocks:
        h = block(h, cos, sin)
    logits = model.lm_head(model.norm(h))
    logits[0, 5].sum().backward()
    assert x.grad[0, 6:].abs().max() == 0
    assert x.grad[0, :6].abs().max() > 0


def test_parameters_are_plain_modules_with_expected_names():
    config = _tiny()
    model = GPT(config)
    names = dict(model.named_modules())
    for suffix in ("q_proj", "k_proj", "v_proj", "o_proj"):
        assert isinstance(names[f"blocks.0.attn.{suffix}"], nn.Linear)
    for suffix in ("gate_proj", "up_proj", "down_proj"):
        assert isinstance(names[f"blocks.1.mlp.{suffix}"], nn.Linear)
    assert isinstance(names["wte"], nn.Embedding)
    assert isinstance(names["lm_head"], nn.Linear)
    assert isinstance(names["blocks.0.attn_norm"], nn.RMSNorm)
    assert model.get_output_embeddings() is model.lm_head
    assert model.get_input_embeddings() is model.wte
    kv = config.kv_heads * config.head_dim
    assert model.blocks[0].attn.k_proj.weight.shape == (kv, config.d_model)
    assert model.blocks[0].mlp.gate_proj.weight.shape == (config.mlp_hidden, config.d_model)


def test_tied_embeddings_share_one_parameter():
    tied = GPT(_tiny(tie_embeddings=True))
    untied = GPT(_tiny(tie_embeddings=False))
    assert tied.lm_head.weight is tied.wte.weight
    assert untied.lm_head.weight is not untied.wte.weight
    assert untied.num_parameters() - tied.num_parameters() == 256 * tied.config.d_model


def test_residual_projections_use_smaller_init():
    torch.manual_seed(0)
    config = GPTConfig.preset("small")
    model = GPT(config)
    q_std = model.blocks[0].attn.q_proj.weight.std().item()
    o_std = model.blocks[0].attn.o_proj.weight.std().item()
    assert q_std == pytest.approx(config.init_std, rel=0.05)
    assert o_std == pytest.approx(config.init_std / math.sqrt(2 * config.n_layer), rel=0.05)


def test_rope_preserves_norm_and_relative_position():
    cos, sin = rope_cos_sin(32, 16)
    torch.manual_seed(0)
    q, k = torch.randn(16), torch.randn(16)
    qs = apply_rope(q.expand(32, 16), cos, sin)
    ks = apply_rope(k.expand(32, 16), cos, sin)
    assert torch.allclose(qs.norm(dim=-1), q.norm().expand(32), atol=1e-5)
    # <R_m q, R_n k> depends only on m - n.
    assert torch.allclose(qs[5] @ ks[2], qs[20] @ ks[17], atol=1e-4)
    assert not torch.allclose(qs[5] @ ks[2], qs[5] @ ks[3], atol=1e-4)


@pytest.mark.parametrize(
    "overrides, error",
    [
        (dict(d_model=65), ValueError),  # not divisible by n_head
        (dict(n_head=4, n_kv_head=3), ValueError),
        (dict(d_model=24, n_head=8), ValueError),  # odd head_dim
        (dict(n_layer=0), ValueError),
        (dict(seq_len=-1), ValueError),
        (dict(vocab_size=2.5), ValueError),
        (dict(init_std=0.0), ValueError),
        (dict(tie_embeddings="yes"), TypeError),
    ],
)
def test_bad_config_raises_naming_the_field(overrides, error):
    with pytest.raises(error) as info:
        _tiny(**overrides)
    assert any(key in str(info.value) for key in list(overrides) + ["head_dim"])


def test_unknown_preset_and_field_raise():
    with pytest.raises(ValueError, match="huge"):
        GPTConfig.preset("huge")
    with pytest.raises(TypeError, match="widht"):
        GPTConfig.preset("tiny", widht=3)


def test_forward_rejects_too_long_sequence_and_bad_targets():
    model = GPT(_tiny())
    with pytest.raises(ValueError, match="seq_len"):
        model(torch.zeros(1, model.config.seq_len + 1, dtype=torch.long))
    with pytest.raises(ValueError, match="targets"):
        model(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 5, dtype=torch.long))
