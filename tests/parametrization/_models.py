"""Small models shared by the parametrization tests (defined here, independent of reference_models)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from parametrization import register_layout


def rope(x: Tensor, theta: float = 10_000.0) -> Tensor:
    """Rotate-half RoPE over the last dim of x [B, H, T, D]; pairs are (i, i + D/2)."""
    T, D = x.shape[-2], x.shape[-1]
    inv = theta ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    ang = torch.outer(torch.arange(T, dtype=torch.float64), inv)
    ang = torch.cat([ang, ang], dim=-1)
    cos, sin = ang.cos().to(x.dtype), ang.sin().to(x.dtype)
    a, b = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-b, a], dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.n_head, self.hd = n_head, d // n_head
        self.q = nn.Linear(d, d, bias=False)
        self.k = nn.Linear(d, d, bias=False)
        self.v = nn.Linear(d, d, bias=False)
        self.o = nn.Linear(d, d, bias=False)

    def scores(self, x: Tensor) -> Tensor:
        B, T, _ = x.shape
        q = rope(self.q(x).view(B, T, self.n_head, self.hd).transpose(1, 2))
        k = rope(self.k(x).view(B, T, self.n_head, self.hd).transpose(1, 2))
        return q @ k.transpose(-1, -2) / self.hd**0.5

    def forward(self, x: Tensor) -> Tensor:
        B, T, D = x.shape
        att = self.scores(x)
        mask = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        v = self.v(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        return self.o((att @ v).transpose(1, 2).reshape(B, T, D))


class MLP(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.gate = nn.Linear(d, 2 * d, bias=False)
        self.up = nn.Linear(d, 2 * d, bias=False)
        self.down = nn.Linear(2 * d, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class Block(nn.Module):
    def __init__(self, d: int, n_head: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.RMSNorm(d), Attention(d, n_head)
        self.norm2, self.mlp = nn.RMSNorm(d), MLP(d)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class TinyLM(nn.Module):
    """A two-block RoPE transformer; ``tied=True`` shares wte and lm_head."""

    def __init__(self, vocab: int = 32, d: int = 16, n_head: int = 2, n_layer: int = 2, tied: bool = False, out_embeddings: bool = True) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.blocks = nn.ModuleList([Block(d, n_head) for _ in range(n_layer)])
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        if tied:
            self.lm_head.weight = self.wte.weight
        self._out = out_embeddings

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx)
        for b in self.blocks:
            x = b(x)
        return self.lm_head(self.norm(x))


def mlp(d_in: int = 8, width: int = 16, d_out: int = 4) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, d_out))


class ConvNet(nn.Module):
    def __init__(self, c: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, c, 3, padding=1)
        self.bn = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.fc = nn.Linear(c, classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.relu(self.bn(self.conv1(x)))
        x = torch.relu(self.up(self.conv2(x)))
        return self.fc(x.mean(dim=(2, 3)))


class Conv1D(nn.Module):
    """A Hugging Face GPT-2 style Linear whose weight is stored transposed, (in, out)."""

    def __init__(self, nf: int, nx: int) -> None:
        super().__init__()
        self.nf = nf
        self.weight = nn.Parameter(torch.randn(nx, nf) * 0.1)
        self.bias = nn.Parameter(torch.zeros(nf))

    def forward(self, x: Tensor) -> Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(*x.shape[:-1], self.nf)


class GPT2Like(nn.Module):
    def __init__(self, vocab: int = 20, d: int = 8) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.c_fc = Conv1D(4 * d, d)
        self.c_proj = Conv1D(d, 4 * d)
        self.ln_f = nn.LayerNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx)
        x = x + self.c_proj(F.gelu(self.c_fc(x)))
        return self.lm_head(self.ln_f(x))


class ToyExperts(nn.Module):
    """Fused experts as transformers stores them: ``gate_up_proj [E, 2f, d]``, ``down_proj [E, d, f]``.

    Every token goes through every expert, mixed by softmax router weights (dense, so that every
    expert's multipliers get a gradient).
    """

    def __init__(self, d: int, f: int, n_experts: int) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(n_experts, 2 * f, d) / d**0.5)
        self.down_proj = nn.Parameter(torch.randn(n_experts, d, f) / f**0.5)

    def forward(self, x: Tensor, mix: Tensor) -> Tensor:
        gate, up = torch.einsum("btd,efd->btef", x, self.gate_up_proj).chunk(2, dim=-1)
        y = torch.einsum("btef,edf->bted", F.silu(gate) * up, self.down_proj)
        return torch.einsum("bted,bte->btd", y, mix)


# Each expert is a matrix: rows on axis 1, columns on axis 2, experts on axis 0.
register_layout(ToyExperts, param="gate_up_proj", row_dim=1, col_dim=2, batch_dim=0)
register_layout(ToyExperts, param="down_proj", row_dim=1, col_dim=2, batch_dim=0)


class ToyMoE(nn.Module):
    """Embedding → router + fused experts → norm → head."""

    def __init__(self, vocab: int = 32, d: int = 16, f: int = 24, n_experts: int = 3) -> None:
        super().__init__()
        self.wte = nn.Embedding(vocab, d)
        self.router = nn.Linear(d, n_experts, bias=False)
        self.experts = ToyExperts(d, f, n_experts)
        self.norm = nn.RMSNorm(d)
        self.lm_head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.wte(idx)
        x = x + self.experts(x, self.router(x).softmax(-1))
        return self.lm_head(self.norm(x))


class NeoXLike(nn.Module):
    """GPT-NeoX's names: a fused ``attention.query_key_value`` projection, ``embed_in``/``embed_out``."""

    class Layer(nn.Module):
        def __init__(self, d: int) -> None:
            super().__init__()
            self.input_layernorm = nn.LayerNorm(d)
            self.attention = nn.Module()
            self.attention.query_key_value = nn.Linear(d, 3 * d)
            self.attention.dense = nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x: Tensor) -> Tensor:
            q, k, v = self.attention.query_key_value(self.input_layernorm(x)).chunk(3, dim=-1)
            att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.attention.dense(att)
            return x + self.mlp(x)

    def __init__(self, vocab: int = 32, d: int = 16, n_layer: int = 2) -> None:
        super().__init__()
        self.embed_in = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList([NeoXLike.Layer(d) for _ in range(n_layer)])
        self.final_layer_norm = nn.LayerNorm(d)
        self.embed_out = nn.Linear(d, vocab, bias=False)

    def get_output_embeddings(self) -> nn.Module:
        return self.embed_out

    def forward(self, idx: Tensor) -> Tensor:
        x = self.embed_in(idx)
        for layer in self.layers:
            x = layer(x)
        return self.embed_out(self.final_layer_norm(x))
