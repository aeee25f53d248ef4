"""The tiny GPT, its data and the training loop shared by the FSDP2/DDP scenarios (run in the spawned
processes; see ``_harness.py``)."""

from __future__ import annotations

import torch
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor

import optimizers
import parametrization as P
from reference_models import GPT, GPTConfig

GLOBAL_BATCH = 6  # divisible by 2 and 3 ranks
STEPS = 3


def tiny_config() -> GPTConfig:
    # d_mlp = 37 and vocab 255 give uneven FSDP2 shards on 2 and on 3 ranks (gate/up/down, wte, lm_head).
    return GPTConfig(vocab_size=255, seq_len=16, n_layer=2, d_model=48, n_head=4, n_kv_head=2, d_mlp=37)


def batches(steps: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 255, (steps, GLOBAL_BATCH, 17), generator=gen)


def build(multipliers: str):
    torch.manual_seed(0)
    model = GPT(tiny_config())
    mp = P.parametrize(model, multipliers=multipliers)
    return model, mp


def make_optimizer(mp, **kw) -> optimizers.Muon:
    groups = mp.param_groups("muon", lr=0.02, weight_decay=0.1, lr_scale="spectral", adamw_lr=3e-3)
    return optimizers.Muon(groups, **kw)


def shard_fsdp(model: torch.nn.Module, mesh) -> None:
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)


def full_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in model.state_dict().items():
        if isinstance(v, DTensor):
            v = v.full_tensor()
        out[k.removeprefix("module.")] = v.detach().clone()
    return out


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if a.keys() != b.keys():
        raise KeyError(f"state keys differ: {sorted(a.keys() ^ b.keys())}")
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def train(model, opt, mp, data: torch.Tensor, rank: int, world: int, clip: float | None) -> list[float]:
    """``len(data)`` steps; this rank takes its slice of every global batch. Returns clip norms."""
    per = data.shape[1] // world
    norms = []
    for batch in data:
        x = batch[rank * per : (rank + 1) * per]
        loss = model(x[:, :-1], x[:, 1:])
        loss.backward()
        if clip is not None:
            norm = mp.clip_grad_norm_(clip)
            norms.append((norm.full_tensor() if isinstance(norm, DTensor) else norm).item())
        opt.step()
        opt.zero_grad(set_to_none=True)
    return norms


def reference(multipliers: str, data: torch.Tensor, clip: float | None, **opt_kw):
    model, mp = build(multipliers)
    opt = make_optimizer(mp, **opt_kw)
    norms = train(model, opt, mp, data, 0, 1, clip)
    return model, mp, norms, group_summary(opt)


def group_summary(opt) -> list[tuple]:
    return [(g.get("role"), g["algorithm"], len(g["params"]), g["lr"], g["weight_decay"]) for g in opt.param_groups]
