"""A small decoder-only GPT in the modern style, readable top to bottom (nanoGPT-like).

Architecture: token embedding ``wte`` -> ``n_layer`` pre-norm blocks -> final RMSNorm -> ``lm_head``.
Each block is ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` with

* causal self-attention with rotary position embeddings (RoPE, rotate-half convention) applied to
  q and k, optional grouped-query attention (``n_kv_head < n_head``), ``F.scaled_dot_product_attention``;
* a SwiGLU MLP, ``down(silu(gate(x)) * up(x))``.

Only plain ``nn.Linear`` / ``nn.Embedding`` / ``nn.RMSNorm`` modules carry parameters, and every
projection is its own ``nn.Linear`` (``attn.q_proj``, ``attn.k_proj``, ``attn.v_proj``, ``attn.o_proj``,
``mlp.gate_proj``, ``mlp.up_proj``, ``mlp.down_proj``), so that a parametrization can recognise the
role of each parameter from its module type and place multipliers per layer by name.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

__all__ = ["GPT", "GPTConfig"]


@dataclass(frozen=True)
class GPTConfig:
    """Shape and initialisation of a :class:`GPT`. Validated on construction.

    Attributes:
        vocab_size: number of token ids (256 for the byte-level corpus).
        seq_len: the longest sequence the model accepts (the RoPE table length).
        n_layer: number of transformer blocks.
        d_model: residual-stream width.
        n_head: number of query heads; ``d_model`` must be divisible by it.
        n_kv_head: number of key/value heads (grouped-query attention); ``None`` means ``n_head``.
            ``n_head`` must be divisible by it.
        d_mlp: SwiGLU hidden width; ``None`` means ``8/3 * d_model`` rounded up to a multiple of 32.
        tie_embeddings: share one matrix between ``wte`` and ``lm_head``.
        rope_theta: RoPE base frequency.
        norm_eps: RMSNorm epsilon.
        init_std: std of the normal init of every matrix; the residual output projections
            (``o_proj``, ``down_proj``) use ``init_std / sqrt(2 * n_layer)`` (GPT-2).
        embedding_multiplier: fixed factor on the embedding output (a muP forward multiplier; 1).
        logit_multiplier: fixed factor on the output logits (1).
        attn_logit_multiplier: fixed factor on the attention logits, on top of ``1/sqrt(head_dim)`` (1).
    """

    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    d_model: int = 128
    n_head: int = 4
    n_kv_head: int | None = None
    d_mlp: int | None = None
    tie_embeddings: bool = False
    rope_theta: float = 10_000.0
    norm_eps: float = 1e-5
    init_std: float = 0.02
    embedding_multiplier: float = 1.0
    logit_multiplier: float = 1.0
    attn_logit_multiplier: float = 1.0

    # Named presets. `tiny` is for tests (trains in seconds on a CPU); `small` is the CPU benchmark
    # model; `medium` is for a GPU run of the benchmarks.
    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {
        "tiny": dict(seq_len=64, n_layer=2, d_model=64, n_head=4, n_kv_head=2),
        "small": dict(seq_len=128, n_layer=4, d_model=128, n_head=4, n_kv_head=2),
        "medium": dict(seq_len=256, n_layer=6, d_model=384, n_head=6, n_kv_head=2),
    }

    def __post_init__(self) -> None:
        for name in ("vocab_size", "seq_len", "n_layer", "d_model", "n_head"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {value!r}")
        for name in ("n_kv_head", "d_mlp"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"GPTConfig.{name} must be None or a positive int, got {value!r}")
        if self.d_model % self.n_head != 0:
            raise ValueError(
                f"GPTConfig.d_model ({self.d_model}) must be divisible by n_head ({self.n_head})"
            )
        if self.head_dim % 2 != 0:
            raise ValueError(
                f"GPTConfig head_dim = d_model / n_head = {self.head_dim} must be even for RoPE"
            )
        if self.n_head % self.kv_heads != 0:
            raise ValueError(
                f"GPTConfig.n_head ({self.n_head}) must be divisible by n_kv_head ({self.n_kv_head})"
            )
        if not isinstance(self.tie_embeddings, bool):
            raise TypeError(f"GPTConfig.tie_embeddings must be a bool, got {self.tie_embeddings!r}")
        for name in ("rope_theta", "norm_eps", "init_std", "embedding_multiplier", "logit_multiplier",
                     "attn_logit_multiplier"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
                raise ValueError(f"GPTConfig.{name} must be a positive number, got {value!r}")

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    @property
    def kv_heads(self) -> int:
        return self.n_head if self.n_kv_head is None else self.n_kv_head

    @property
    def mlp_hidden(self) -> int:
        if self.d_mlp is not None:
            return self.d_mlp
        return 32 * math.ceil(8 * self.d_model / 3 / 32)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "GPTConfig":
        """The named preset (``"tiny"``, ``"small"``, ``"medium"``), with optional field overrides."""
        if name not in cls.PRESETS:
            raise ValueError(f"unknown GPTConfig preset {name!r}; choose one of {sorted(cls.PRESETS)}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise TypeError(f"GPTConfig.preset got unknown field(s) {unknown}; fields are {sorted(known)}")
        return cls(**{**cls.PRESETS[name], **overrides})

    def replace(self, **changes: Any) -> "GPTConfig":
        """A copy with some fields changed (validated again)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# Rotary position embedding


def rope_cos_sin(seq_len: int, head_dim: int, theta: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """Cos and sin tables of shape ``[seq_len, head_dim]`` for RoPE (rotate-half convention).

    Frequency of pair ``i`` (dims ``i`` and ``i + head_dim/2``) is ``theta^(-2i/head_dim)``;
    the angle at position ``t`` is ``t * freq_i`` (Su et al. 2021, RoFormer).
    """
    inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    angles = torch.cat([angles, angles], dim=-1)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` of shape ``[..., T, head_dim]``: ``x * cos + rotate_half(x) * sin``,
    with ``rotate_half([a, b]) = [-b, a]`` over the two halves of the last dim."""
    a, b = x.chunk(2, dim=-1)
    rotated = torch.cat([-b, a], dim=-1)
    return x * cos + rotated * sin


# ----------------------------------------------------------------------------------------------
# Blocks


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with RoPE and optional grouped-query attention."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.n_head = config.n_head
        self.n_kv_head = config.kv_heads
        self.head_dim = config.head_dim
        d_kv = self.n_kv_head * self.head_dim
        self.q_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        self.k_proj = nn.Linear(config.d_model, d_kv, bias=False)
        self.v_proj = nn.Linear(config.d_model, d_kv, bias=False)
        self.o_proj = nn.Linear(config.d_model, config.d_model, bias=False)
        # None keeps SDPA's own 1/sqrt(head_dim) (and its exact arithmetic) at the default.
        m = config.attn_logit_multiplier
        self.scale = None if m == 1.0 else m / math.sqrt(self.head_dim)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        q = rearrange(self.q_proj(x), "b t (h d) -> b h t d", h=self.n_head)
        k = rearrange(self.k_proj(x), "b t (h d) -> b h t d", h=self.n_kv_head)
        v = rearrange(self.v_proj(x), "b t (h d) -> b h t d", h=self.n_kv_head)
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if self.n_kv_head != self.n_head:
            # Each kv head serves n_head / n_kv_head consecutive query heads.
            k = repeat(k, "b h t d -> b (h r) t d", r=self.n_head // self.n_kv_head)
            v = repeat(v, "b h t d -> b (h r) t d", r=self.n_head // self.n_kv_head)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=self.scale)
        return self.o_proj(rearrange(y, "b h t d -> b t (h d)"))


class SwiGLU(nn.Module):
    """Gated MLP ``down(silu(gate(x)) * up(x))`` (Shazeer 2020)."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        hidden = config.mlp_hidden
        self.gate_proj = nn.Linear(config.d_model, hidden, bias=False)
        self.up_proj = nn.Linear(config.d_model, hidden, bias=False)
        self.down_proj = nn.Linear(hidden, config.d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.attn = CausalSelfAttention(config)
        self.mlp_norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.mlp = SwiGLU(config)

    def forward(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


# ----------------------------------------------------------------------------------------------
# The model


class GPT(nn.Module):
    """Decoder-only language model.

    ``model(idx)`` returns logits ``[B, T, vocab_size]``; ``model(idx, targets)`` returns the mean
    next-token cross-entropy (a scalar), so a DDP/FSDP wrapper sees the loss as the forward output.
    """

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT(config) needs a GPTConfig, got {type(config).__name__}")
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.d_model)
        self.blocks = nn.ModuleList([Block(config) for _ in range(config.n_layer)])
        self.norm = nn.RMSNorm(config.d_model, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.lm_head.weight = self.wte.weight
        cos, sin = rope_cos_sin(config.seq_len, config.head_dim, config.rope_theta)
        # Not persistent: derived from the config, so checkpoints hold only learned state.
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Normal(0, init_std) for every matrix; residual output projections scaled by
        ``1/sqrt(2 n_layer)`` (GPT-2); RMSNorm weights to one."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, (nn.Linear, nn.Embedding)):
                is_residual_out = name.endswith(("o_proj", "down_proj"))
                nn.init.normal_(module.weight, mean=0.0, std=residual_std if is_residual_out else std)
            elif isinstance(module, nn.RMSNorm):
                nn.init.ones_(module.weight)

    def get_input_embeddings(self) -> nn.Embedding:
        return self.wte

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def num_parameters(self) -> int:
        """Number of distinct parameter elements (a tied matrix counts once)."""
        return sum(p.numel() for p in self.parameters())

    def forward(self, idx: Tensor, targets: Tensor | None = None) -> Tensor:
        if idx.dim() != 2:
            raise ValueError(f"GPT.forward expects idx of shape [batch, seq], got {tuple(idx.shape)}")
        T = idx.shape[1]
        if T > self.config.seq_len:
            raise ValueError(f"sequence length {T} exceeds GPTConfig.seq_len={self.config.seq_len}")
        cos, sin = self.rope_cos[:T], self.rope_sin[:T]
        x = self.wte(idx)
        if self.config.embedding_multiplier != 1.0:  # skipped at 1: the default stays bit-identical
            x = x * self.config.embedding_multiplier
        for block in self.blocks:
            x = block(x, cos, sin)
        logits = self.lm_head(self.norm(x))
        if self.config.logit_multiplier != 1.0:
            logits = logits * self.config.logit_multiplier
        if targets is None:
            return logits
        if targets.shape != idx.shape:
            raise ValueError(
                f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}"
            )
        return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
