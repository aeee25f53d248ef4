"""The model zoo: ``parametrize`` on Hugging Face architectures built from tiny configs, no ``roles=``.

For every model: identity at init; every trainable parameter in exactly one param group; only
matrices in Muon groups; ≥ 90% of the Muon-bound elements carry multipliers under ``"vector"``;
3 Muon steps stay finite; a layer frozen before parametrizing stays unchanged; fold restores the
original module types and ``state_dict`` keys and the trained function; the folded model
round-trips through ``save_pretrained``/``from_pretrained`` exactly. Nothing is downloaded.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import parametrization as P
from optimizers import Muon

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)

VOCAB = 64
IDS = dict(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0)
DENSE = dict(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, **IDS)
MOE = dict(DENSE, num_key_value_heads=1, num_experts_per_tok=2)


@dataclass
class Case:
    build: Callable[[], nn.Module]
    frozen: str  # a module frozen before parametrize
    vision: bool = False


def _causal(config_cls: str, **kw) -> Callable[[], nn.Module]:
    return lambda: transformers.AutoModelForCausalLM.from_config(getattr(transformers, config_cls)(**kw))


CASES: dict[str, Case] = {
    "gpt2": Case(_causal("GPT2Config", n_layer=2, n_embd=32, n_head=2, n_positions=32, **IDS), "transformer.h.0.attn.c_attn"),
    "llama-tied": Case(_causal("LlamaConfig", num_key_value_heads=1, tie_word_embeddings=True, **DENSE), "model.layers.0.self_attn.q_proj"),
    "llama-untied": Case(_causal("LlamaConfig", num_key_value_heads=1, tie_word_embeddings=False, **DENSE), "model.layers.0.self_attn.q_proj"),
    "mistral": Case(_causal("MistralConfig", num_key_value_heads=1, **DENSE), "model.layers.0.mlp.up_proj"),
    "qwen2": Case(_causal("Qwen2Config", num_key_value_heads=1, **DENSE), "model.layers.1.self_attn.k_proj"),
    "qwen2-moe": Case(
        _causal("Qwen2MoeConfig", num_experts=4, moe_intermediate_size=16, shared_expert_intermediate_size=32, **MOE),
        "model.layers.0.mlp.experts",
    ),
    "mixtral": Case(_causal("MixtralConfig", num_local_experts=4, **MOE), "model.layers.1.mlp.experts"),
    "deepseek-v3": Case(
        _causal("DeepseekV3Config", n_routed_experts=4, n_shared_experts=1, moe_intermediate_size=16, first_k_dense_replace=1,
                kv_lora_rank=16, q_lora_rank=16, qk_rope_head_dim=8, qk_nope_head_dim=8, v_head_dim=16, n_group=1, topk_group=1,
                **MOE),
        "model.layers.1.mlp.shared_experts.down_proj",
    ),
    "gpt-oss": Case(
        _causal("GptOssConfig", num_local_experts=4, head_dim=16, layer_types=["full_attention"] * 2, **MOE),
        "model.layers.0.self_attn.o_proj",
    ),
    "mamba": Case(
        _causal("MambaConfig", num_hidden_layers=2, hidden_size=32, state_size=8, expand=2, conv_kernel=4, time_step_rank=4, **IDS),
        "backbone.layers.0.mixer.in_proj",
    ),
    "mamba2": Case(
        _causal("Mamba2Config", num_hidden_layers=2, hidden_size=32, state_size=8, expand=2, num_heads=4, head_dim=16,
                n_groups=1, conv_kernel=4, chunk_size=8, **IDS),
        "backbone.layers.1.mixer.out_proj",
    ),
    "falcon-h1": Case(
        _causal("FalconH1Config", num_key_value_heads=1, head_dim=16, mamba_n_heads=4, mamba_d_head=16, mamba_d_ssm=64,
                mamba_d_state=8, mamba_n_groups=1, mamba_d_conv=4, mamba_chunk_size=8, **DENSE),
        "model.layers.0.mamba.in_proj",
    ),
    "bert": Case(
        lambda: transformers.BertForMaskedLM(transformers.BertConfig(max_position_embeddings=32, **DENSE)),
        "bert.encoder.layer.0.attention.self.query",
    ),
    "bart": Case(
        lambda: transformers.BartForConditionalGeneration(transformers.BartConfig(
            d_model=32, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2,
            encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=32, decoder_start_token_id=0, **IDS)),
        "model.encoder.layers.0.fc1",
    ),
    "deit": Case(
        lambda: transformers.DeiTForImageClassificationWithTeacher(transformers.DeiTConfig(
            image_size=16, patch_size=8, num_channels=3, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
            num_attention_heads=2, num_labels=5)),
        "deit.layers.0.attention.q_proj",
        vision=True,
    ),
}


def _inputs(case: Case) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    if case.vision:
        return {"pixel_values": torch.randn(2, 3, 16, 16, generator=g)}
    return {"input_ids": torch.randint(1, VOCAB, (2, 12), generator=g)}


def _logits(model: nn.Module, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    return model(**inputs).logits


def _loss(logits: torch.Tensor) -> torch.Tensor:
    target = torch.arange(logits.numel() // logits.shape[-1]) % logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target)


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return CASES[name].build().eval()


@pytest.mark.parametrize("name", list(CASES))
def test_model_zoo(name, tmp_path):
    case = CASES[name]
    model = _build(name)
    inputs = _inputs(case)
    plain_types = {n: type(m) for n, m in model.named_modules()}
    plain_keys = list(model.state_dict())
    before = _logits(model, inputs).detach()
    frozen = model.get_submodule(case.frozen)
    frozen.requires_grad_(False)

    mp = P.parametrize(model, multipliers="vector")
    with torch.no_grad():
        assert torch.equal(_logits(model, inputs), before), "multipliers at 1 must give the plain model's output"
    frozen_before = {k: v.detach().clone() for k, v in frozen.state_dict().items()}
    frozen_eff = {n: getattr(frozen, n).detach().clone() for n, _ in frozen.named_parameters(recurse=False) if "_mult_" not in n}

    groups = mp.param_groups("muon", lr=1e-2, weight_decay=0.1, lr_scale="match_rms_adamw")
    name_of = {id(p): fqn for fqn, p in model.named_parameters()}
    grouped = [name_of[id(p)] for g in groups for p in g["params"]]
    trainable = [fqn for fqn, p in model.named_parameters() if p.requires_grad]
    assert sorted(grouped) == sorted(trainable), "every trainable parameter in exactly one group"
    assert not any(fqn.startswith(case.frozen + ".") for fqn in grouped)

    muon = [(name_of[id(p)], p) for g in groups if g["algorithm"] == "muon" for p in g["params"]]
    assert muon, "a transformer has matrices for Muon"
    modules = dict(model.named_modules())
    for fqn, p in muon:
        assert mp.role_of(fqn) is P.Role.MATRIX and p.ndim >= 2, fqn
        owner = modules[fqn.rpartition(".")[0]]
        depthwise = isinstance(owner, nn.modules.conv._ConvNd) and owner.groups == owner.in_channels > 1
        assert not depthwise, f"{fqn} is a depthwise conv kernel (one filter per channel), not a matrix"
    carried = sum(p.numel() for fqn, p in muon if fqn in mp.placements)
    assert carried >= 0.9 * sum(p.numel() for _, p in muon), f"{carried} of the Muon-bound elements carry multipliers"

    opt = Muon(groups)
    model.train()
    for _ in range(3):
        loss = _loss(_logits(model, inputs))
        assert torch.isfinite(loss)
        loss.backward()
        mp.clip_grad_norm_(1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    for k, v in frozen.state_dict().items():
        assert torch.equal(v, frozen_before[k]), f"frozen {case.frozen}.{k} moved"
    for n, v in frozen_eff.items():
        assert torch.equal(getattr(frozen, n), v), f"frozen {case.frozen}.{n} (effective) moved"

    with torch.no_grad():
        for p in mp.multiplier_parameters():
            if p.requires_grad:
                p.mul_(1 + 0.1 * torch.randn_like(p))
        trained = _logits(model, inputs)
    plain = mp.fold()
    assert {n: type(m) for n, m in plain.named_modules()} == plain_types
    assert list(plain.state_dict()) == plain_keys
    with torch.no_grad():
        folded = _logits(plain, inputs)
    assert (folded - trained).norm() <= 1e-5 * trained.norm()

    plain.save_pretrained(tmp_path)
    loaded = type(plain).from_pretrained(tmp_path).eval()
    ours, theirs = plain.state_dict(), loaded.state_dict()
    assert list(theirs) == plain_keys
    assert all(torch.equal(ours[k], theirs[k]) for k in plain_keys)
    with torch.no_grad():
        assert torch.equal(_logits(loaded, inputs), folded)


def test_roles_of_tied_and_untied_heads_and_conv1d_multipliers():
    for name, tied in (("llama-tied", True), ("llama-untied", False)):
        roles = P.parametrize(_build(name)).roles
        assert roles["lm_head.weight"] == "head"
        assert roles["model.embed_tokens.weight"] == ("head" if tied else "embedding")
        assert roles["model.layers.0.self_attn.q_proj.weight"] == "matrix"
    model = _build("gpt2")
    roles = P.parametrize(model).roles
    assert roles["transformer.wte.weight"] == "head" and roles["transformer.wpe.weight"] == "embedding"
    # Conv1D stores (in, out): the row multiplier has out = 3·n_embd entries.
    c_attn = model.transformer.h[0].attn.c_attn
    assert c_attn.weight_mult_row.shape == (96,) and c_attn.weight_mult_col.shape == (32,)


def test_moe_experts_get_a_multiplier_pair_per_expert_and_fold_exactly():
    model = _build("mixtral")
    experts = model.model.layers[0].mlp.experts
    E, two_inter, hidden = experts.gate_up_proj.shape
    mp = P.parametrize(model, multipliers="vector")
    assert experts.gate_up_proj_mult_row.shape == (E, two_inter)
    assert experts.gate_up_proj_mult_col.shape == (E, hidden)
    assert experts.down_proj_mult_row.shape == (E, hidden)
    with torch.no_grad():
        r, c = experts.gate_up_proj_mult_row, experts.gate_up_proj_mult_col
        r.uniform_(0.5, 1.5)
        c.uniform_(0.5, 1.5)
        raw = experts._parameters["gate_up_proj"]
        want = r[:, :, None] * raw * c[:, None, :]
    mp.fold()
    assert torch.equal(experts.gate_up_proj, want)


def test_transposed_experts_follow_the_is_transposed_flag():
    # GPT-OSS stores each expert as (in, out): the row multiplier indexes the last axis.
    model = _build("gpt-oss")
    experts = model.model.layers[0].mlp.experts
    assert experts.is_transposed
    E, hidden, two_inter = experts.gate_up_proj.shape
    mp = P.parametrize(model)
    assert experts.gate_up_proj_mult_row.shape == (E, two_inter)
    assert experts.gate_up_proj_mult_col.shape == (E, hidden)
    assert mp.roles["model.layers.0.mlp.experts.gate_up_proj_bias"] == "vector"
    assert mp.roles["model.layers.0.mlp.router.weight"] == "matrix"
    views = {n: g["matrix_view"] for g in mp.param_groups("muon") if g["algorithm"] == "muon" for n in g["param_names"]}
    assert views["model.layers.0.mlp.experts.gate_up_proj"] == "batch_in_out"
    assert views["model.layers.0.mlp.router.weight"] == "out_in"
    assert _views(_build("mixtral"))["model.layers.0.mlp.experts.down_proj"] == "batch_out_in"


def _views(model: nn.Module) -> dict[str, str]:
    groups = P.parametrize(model).param_groups("muon")
    return {n: g["matrix_view"] for g in groups if g["algorithm"] == "muon" for n in g["param_names"]}


def test_a_multipliers_glob_may_ask_for_experts():
    model = _build("qwen2-moe")
    mp = P.parametrize(model, multipliers={"*.experts.down_proj": "s", "*.experts.gate_up_proj": "r"})
    experts = model.model.layers[0].mlp.experts
    assert experts.down_proj_mult_scalar.shape == (experts.down_proj.shape[0],)
    assert set(mp.placements) == {f"model.layers.{i}.mlp.experts.{p}" for i in range(2) for p in ("down_proj", "gate_up_proj")}


def test_ssm_parameters_are_vectors_and_depthwise_conv_is_not_a_muon_matrix():
    model = _build("falcon-h1")
    mp = P.parametrize(model)
    mixer = "model.layers.0.mamba"
    for p in ("A_log", "D", "dt_bias", "conv1d.weight"):
        assert mp.roles[f"{mixer}.{p}"] == "vector", p
    assert f"{mixer}.in_proj.weight" in mp.placements and f"{mixer}.out_proj.weight" in mp.placements
    conv = model.get_submodule(f"{mixer}.conv1d").weight
    groups = mp.param_groups("muon")
    assert all(g["algorithm"] == "adamw" for g in groups if any(p is conv for p in g["params"]))


def test_no_weight_decay_marker_makes_a_vector_whatever_its_shape():
    model = _build("mamba")
    p = model.backbone.layers[0].mixer.x_proj.weight
    p._no_weight_decay = True  # what mamba-ssm sets on its A_log/D
    assert P.detect_roles(model).roles["backbone.layers.0.mixer.x_proj.weight"] is P.Role.VECTOR


def test_vision_tokens_and_position_table_are_embeddings():
    mp = P.parametrize(_build("deit"))
    for p in ("cls_token", "distillation_token", "position_embeddings"):
        assert mp.roles[f"deit.embeddings.{p}"] == "embedding", p
    assert mp.roles["deit.embeddings.patch_embeddings.projection.weight"] == "matrix"


def test_torch_multihead_attention_in_proj_is_a_matrix_with_multipliers():
    torch.manual_seed(0)
    model = nn.Sequential(nn.TransformerEncoderLayer(32, 2, 64, dropout=0.0, batch_first=True), nn.Linear(32, 5))
    x = torch.randn(2, 6, 32)
    before = model(x)
    mp = P.parametrize(model)
    assert mp.roles["0.self_attn.in_proj_weight"] == "matrix"
    assert model[0].self_attn.in_proj_weight_mult_row.shape == (96,)
    assert torch.equal(model(x), before)
    with torch.no_grad():
        model[0].self_attn.in_proj_weight_mult_row.uniform_(0.5, 1.5)
    moved = model(x)
    plain = mp.fold()
    assert type(plain[0].self_attn) is nn.MultiheadAttention
    assert (plain(x) - moved).norm() <= 1e-5 * moved.norm()


def test_an_unknown_raw_matrix_still_raises_naming_it_and_the_fix():
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.table = nn.Parameter(torch.randn(4, 8, 3))
            self.lin = nn.Linear(3, 3)

    with pytest.raises(ValueError, match=r"'table'.*roles=.*register_layout"):
        P.parametrize(Odd())


def test_register_role_teaches_a_raw_parameter():
    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.memory = nn.Parameter(torch.randn(4, 8))
            self.lin = nn.Linear(8, 8)

    P.register_role(Tokens, param="memory", role="embedding")
    assert P.detect_roles(Tokens()).roles["memory"] is P.Role.EMBEDDING
    with pytest.raises(ValueError, match="register_layout"):
        P.register_role(Tokens, param="memory", role="matrix")


def test_symmetry_free_preset_follows_the_paper_on_a_hybrid_model():
    model = _build("falcon-h1")
    placement = P.symmetry_free(model)
    layer = "model.layers.0"
    assert placement[f"{layer}.self_attn.q_proj"] == "r" and placement[f"{layer}.self_attn.o_proj"] == "rc"
    assert f"{layer}.self_attn.k_proj" not in placement and f"{layer}.self_attn.v_proj" not in placement
    assert placement[f"{layer}.feed_forward.gate_proj"] == "r" and placement[f"{layer}.feed_forward.down_proj"] == "rc"
    # Falcon-H1's mixer has no internal RMSNorm by default, so out_proj keeps its column multiplier.
    assert placement[f"{layer}.mamba.in_proj"] == "r"
    assert placement[f"{layer}.mamba.out_proj"] == ("r" if model.config.mamba_rms_norm else "rc")
    assert placement["model.embed_tokens"] == "rc" and "lm_head" not in placement
    x = _inputs(CASES["falcon-h1"])
    before = _logits(model, x).detach()
    mp = P.parametrize(model, multipliers=placement)
    with torch.no_grad():
        assert torch.equal(_logits(model, x), before)
    assert model.get_submodule(f"{layer}.self_attn.q_proj").weight_mult_row is not None
    assert not hasattr(model.get_submodule(f"{layer}.self_attn.k_proj"), "weight_mult_row")
    assert mp.placements


@pytest.mark.parametrize("lr_scale", ["spectral", "match_rms_adamw", "none"])
def test_linear_and_transposed_conv1d_get_the_same_update(lr_scale):
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    lin = nn.Linear(32, 128, bias=False)
    conv = Conv1D(128, 32)
    with torch.no_grad():
        conv.weight.copy_(lin.weight.T)
        conv.bias.zero_()
    head = nn.Linear(128, 4)
    x = torch.randn(8, 32)
    updates = []
    for layer in (lin, conv):
        model = nn.Sequential(layer, copy.deepcopy(head))
        mp = P.parametrize(model, multipliers="none")
        groups = mp.param_groups("muon", lr=0.1, weight_decay=0.0, lr_scale=lr_scale, adamw_lr=1e-3)
        assert {g["lr_scale"] for g in groups if g["algorithm"] == "muon"} == {lr_scale}
        opt = Muon(groups)
        before = layer.weight.detach().clone()
        model(x).square().mean().backward()
        opt.step()
        delta = layer.weight.detach() - before
        updates.append(delta if layer is lin else delta.T)
    torch.testing.assert_close(updates[1], updates[0], rtol=1e-4, atol=1e-7)


# ----------------------------------------------------------------------------- smoke loop
# More causal LMs from transformers' registry, one tiny generic config each: they must
# parametrize correctly (identity, groups, coverage, exact fold) or raise the clear error.

SMOKE_OK = (
    "bamba", "bloom", "cohere2_moe", "ernie4_5_moe", "falcon", "falcon_mamba", "gemma2", "glm4_moe",
    "gpt_neox", "granitemoe", "jamba", "jetmoe", "lfm2", "llama4_text", "minimax", "olmo2", "olmoe", "opt", "phi",
    "phi3", "qwen3", "qwen3_moe", "recurrent_gemma", "rwkv", "stablelm", "starcoder2", "gptj",
)
SMOKE_CLEAR = ("deepseek_v4",)  # hyper-connection mixing tensors: raw matrices of an unknown layout
_GENERIC = dict(
    vocab_size=VOCAB, pad_token_id=0, bos_token_id=0, eos_token_id=0, hidden_size=32, n_embd=32, d_model=32,
    intermediate_size=64, ffn_dim=64, num_hidden_layers=2, n_layer=2, num_layers=2, num_attention_heads=2, n_head=2,
    num_key_value_heads=1, head_dim=16, moe_intermediate_size=16, num_experts=4, num_local_experts=4, n_routed_experts=4,
    num_experts_per_tok=2, max_position_embeddings=64, n_positions=64, state_size=8, expand=2, conv_kernel=4,
    time_step_rank=4, n_groups=1, mamba_n_heads=4, mamba_d_head=16, mamba_d_ssm=64, mamba_d_state=8, mamba_n_groups=1,
    mamba_headdim=16, attention_window_size=8, lru_width=32, block_width=16,
)


_EXTRA = {
    "gptj": dict(rotary_dim=8),
}


def _smoke_model(model_type: str) -> nn.Module:
    cfg = transformers.AutoConfig.for_model(model_type)
    for key, value in {**_GENERIC, **_EXTRA.get(model_type, {})}.items():
        try:
            setattr(cfg, key, value)
        except (AttributeError, NotImplementedError):
            pass  # a derived (read-only) attribute of this config
    torch.manual_seed(0)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


@pytest.mark.parametrize("model_type", SMOKE_OK)
def test_causal_lm_smoke(model_type):
    model = _smoke_model(model_type)
    x = {"input_ids": torch.randint(1, VOCAB, (2, 8), generator=torch.Generator().manual_seed(1)), "use_cache": False}
    plain_types = {n: type(m) for n, m in model.named_modules()}
    plain_keys = list(model.state_dict())
    before = _logits(model, x)  # grad mode on, as after parametrizing (matmul picks its path by requires_grad)
    mp = P.parametrize(model)
    assert torch.equal(_logits(model, x), before)
    groups = mp.param_groups("muon")
    name_of = {id(p): fqn for fqn, p in model.named_parameters()}
    trainable = sorted(fqn for fqn, p in model.named_parameters() if p.requires_grad)
    assert sorted(name_of[id(p)] for g in groups for p in g["params"]) == trainable
    muon = [(name_of[id(p)], p) for g in groups if g["algorithm"] == "muon" for p in g["params"]]
    assert all(mp.role_of(fqn) is P.Role.MATRIX and p.ndim >= 2 for fqn, p in muon)
    assert sum(p.numel() for f, p in muon if f in mp.placements) >= 0.9 * sum(p.numel() for _, p in muon)
    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.mul_(1 + 0.1 * torch.randn_like(p))
    moved = _logits(model, x).detach()
    plain = mp.fold()
    assert {n: type(m) for n, m in plain.named_modules()} == plain_types and list(plain.state_dict()) == plain_keys
    folded = _logits(plain, x).detach()
    assert (folded - moved).norm() <= 1e-5 * moved.norm()


@pytest.mark.parametrize("model_type", SMOKE_CLEAR)
def test_causal_lm_that_cannot_be_classified_raises_the_clear_error(model_type):
    model = _smoke_model(model_type)
    keys = list(model.state_dict())
    with pytest.raises(ValueError, match=r"cannot decide the role of '[^']+' \(shape .*roles=\{"):
        P.parametrize(model)
    assert list(model.state_dict()) == keys  # nothing changed
