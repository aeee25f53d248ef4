"""Train the reference GPT data-parallel under FSDP2 or DDP; launch with ``torchrun``.

    torchrun --nproc-per-node 2 benchmarks/distributed.py --parallel fsdp2 --optimizer muon --multipliers vector

Every rank takes its own batches (rank ``r`` of ``W`` reads batch ``step·W + r``), so the global
batch is ``W × --batch-size``. Backend: NCCL when CUDA is available (one GPU per rank), else gloo on
CPU. Muon under FSDP2 orthogonalizes whole matrices with the work split over the ranks
(``optimizers.distributed``); under DDP ``--ddp-newton-schulz split`` (default) does the same with
an all-gather of the updates, ``redundant`` makes every rank orthogonalize every matrix. Rank 0
prints a table and writes JSON (``--json``). The loop itself is :class:`reference_models.train.Trainer`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from rich.console import Console
from rich.table import Table
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import fully_shard
from torch.nn.parallel import DistributedDataParallel

from reference_models import GPTConfig
from reference_models.data import ByteCorpus
from reference_models.train import TrainConfig, Trainer, build_model, build_optimizer, build_scheduler


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--parallel", choices=["fsdp2", "ddp"], default="fsdp2")
    p.add_argument("--optimizer", choices=["muon", "adamw"], default="muon")
    p.add_argument("--multipliers", default="vector", help="'vector', 'scalar' or 'none'")
    p.add_argument("--preset", default="tiny", help="GPTConfig preset: tiny, small, medium")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--warmup-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=8, help="per rank")
    p.add_argument("--lr", type=float, default=0.02)
    p.add_argument("--adamw-lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--muon-lr-scale", default="spectral")
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ddp-newton-schulz", choices=["split", "redundant"], default="split")
    p.add_argument("--eval-batches", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="write the results here (rank 0)")
    return p.parse_args(argv)


def setup() -> tuple[int, int, torch.device, bool]:
    """Join the process group torchrun describes (a single process also works: W = 1).

    Returns ``(rank, world_size, device, created)``; an already initialized group is reused
    (``created`` False), which lets tests call :func:`main` inside their own processes.
    """
    if dist.is_initialized():
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        return dist.get_rank(), dist.get_world_size(), device, False
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if torch.cuda.is_available():
        local_rank = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        # Ranks share the machine's cores.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // dist.get_world_size()))
    return dist.get_rank(), dist.get_world_size(), device, True


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    rank, world, device, created = setup()
    try:
        model_config = GPTConfig.preset(args.preset)
        cfg = TrainConfig(
            optimizer=args.optimizer,
            lr=args.lr,
            adamw_lr=args.adamw_lr,
            weight_decay=args.weight_decay,
            muon_lr_scale=args.muon_lr_scale,
            multipliers=args.multipliers,
            steps=args.steps,
            warmup_steps=args.warmup_steps,
            grad_clip=args.grad_clip,
            batch_size=args.batch_size,
            eval_batches=args.eval_batches,
            seed=args.seed,
            device=str(device),
            progress=rank == 0 and sys.stderr.isatty(),
            label=f"{args.parallel} W={world}",
        )
        model, mp = build_model(model_config, cfg)  # same seed on every rank: identical init
        if args.parallel == "fsdp2":
            mesh = init_device_mesh(device.type, (world,))
            for block in model.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(model, mesh=mesh)
            wrapped = model
        else:
            wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        optimizer = build_optimizer(mp, cfg)  # param groups from FQN roles, after wrapping
        if args.parallel == "ddp" and args.optimizer == "muon" and args.ddp_newton_schulz == "split":
            optimizer.process_group = dist.group.WORLD  # see optimizers.Muon(process_group=...)
        scheduler = build_scheduler(optimizer, cfg)
        trainer = Trainer(
            wrapped, mp, optimizer, scheduler, ByteCorpus.load(), cfg, data_rank=rank, data_world_size=world
        )
        result = trainer.fit()

        seq = cfg.seq_len or model_config.seq_len
        step_s = args.batch_size * seq / result.tokens_per_s
        local = torch.tensor([result.tokens_per_s, step_s, result.opt_step_share * step_s], dtype=torch.float64)
        gathered = [torch.zeros_like(local) for _ in range(world)]
        dist.all_gather(gathered, local.to(device))
        per_rank = torch.stack([g.cpu() for g in gathered])
        summary = {
            "parallel": args.parallel,
            "world_size": world,
            "backend": dist.get_backend(),
            "device": str(device),
            "optimizer": args.optimizer,
            "multipliers": args.multipliers,
            "ddp_newton_schulz": args.ddp_newton_schulz if args.parallel == "ddp" else None,
            "preset": args.preset,
            "steps": result.steps,
            "global_batch": world * args.batch_size,
            "first_train_loss": result.train_loss[0],
            "final_train_loss_rank0": result.train_loss[-1],
            "final_val_loss": result.final_val_loss,
            "tokens_per_s_total": float(per_rank[:, 0].sum()),
            "step_ms_max_rank": 1e3 * float(per_rank[:, 1].max()),
            "optimizer_step_ms_max_rank": 1e3 * float(per_rank[:, 2].max()),
            "args": {k: str(v) for k, v in vars(args).items()},
        }
        if rank == 0:
            table = Table(title=f"GPT-{args.preset}, {args.optimizer} (multipliers={args.multipliers}), {args.parallel} × {world}")
            table.add_column("metric")
            table.add_column("value", justify="right")
            for key in ("backend", "global_batch", "first_train_loss", "final_val_loss", "tokens_per_s_total",
                        "step_ms_max_rank", "optimizer_step_ms_max_rank"):
                value = summary[key]
                table.add_row(key, f"{value:,.4f}" if isinstance(value, float) else str(value))
            Console().print(table)
            if args.json is not None:
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(summary, indent=2))
        return summary
    finally:
        if created:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
