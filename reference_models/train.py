"""The training loop of every benchmark that trains to a loss.

Construction is factored so a caller can wrap the model (DDP, FSDP2, ``torch.compile``) between
building it and building the optimizer::

    model, mp = build_model(GPTConfig.preset("tiny"), cfg)      # GPT + parametrization, on device
    wrapped = DDP(model)                                          # optional
    optimizer = build_optimizer(mp, cfg)                          # from mp.param_groups(...)
    scheduler = build_scheduler(optimizer, cfg)                   # warmup + decay (LambdaLR)
    trainer = Trainer(wrapped, mp, optimizer, scheduler, corpus, cfg)
    result = trainer.fit()

or simply ``result = train(GPTConfig.preset("tiny"), cfg)``.

``cfg.stats_every = N`` adds ``{"step", "stats": mp.stats(optimizer)}`` records to the
JSON-lines metrics every N steps and at the end. Checkpoints load with ``weights_only=True``.

Each step: forward (bf16 autocast on CUDA, fp32 on CPU) -> backward -> ``mp.clip_grad_norm_``
(multipliers excluded from the norm and left unclipped, paper §4.3) -> optimizer step -> scheduler
step. Training batches are a pure function of ``(data_seed, step)``, and a checkpoint holds the
model, optimizer, scheduler and RNG states, so a resumed run continues bit-identically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Literal

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import Tensor, nn

import optimizers
import parametrization as P

from .data import ByteCorpus
from .gpt import GPT, GPTConfig

__all__ = [
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "autocast_context",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "lr_schedule_factor",
    "resolve_device",
    "train",
]

Schedule = Literal["cosine", "linear", "wsd"]

CHECKPOINT_FORMAT = "lrm-optim.Trainer"
CHECKPOINT_VERSION = 2  # 1: pickled config object, loaded with weights_only=False


@dataclass
class TrainConfig:
    """Everything a training run needs besides the model shape. Validated on construction.

    Optimizer: ``lr`` and ``weight_decay`` are the matrices' (Muon's with ``optimizer="muon"``);
    ``adamw_lr`` is the AdamW lr of the non-matrix parameters under Muon (``None``: ``lr``, which is
    the right scale with ``muon_lr_scale="match_rms_adamw"``); ``multiplier_lr`` ``None`` lets the
    parametrization choose (its default: ``adamw_lr``); ``rules`` are per-role/glob overrides
    passed to ``mp.param_groups``; ``optimizer_kwargs`` go to the optimizer's constructor as
    extra keyword arguments (e.g. ``{"process_group": dist.group.WORLD}`` for Muon under DDP).
    muP: ``mup_base_width`` (``None``: off) and ``mup_init_std`` go to ``parametrize`` as
    ``base_width`` and ``init_std``. Schedule: linear warmup over ``warmup_steps``, then
    ``schedule`` down to ``min_lr_ratio`` (see :func:`lr_schedule_factor`); the weight decay is applied
    as ``lr * wd`` so it follows the schedule. ``eval_every=0`` evaluates only at the end.
    ``stats_every=N > 0`` writes ``mp.stats(optimizer)`` (per-matrix RMS of W and W_eff, predicted
    equilibrium, norm spreads, multiplier ranges) to the metrics file every N steps and at the end.
    """

    optimizer: Literal["adamw", "muon"] = "adamw"
    lr: float = 3e-3
    weight_decay: float = 0.1
    adamw_lr: float | None = None
    betas: tuple[float, float] = (0.9, 0.95)
    muon_lr_scale: str = "match_rms_adamw"
    multipliers: Any = "none"
    multiplier_lr: float | None = None
    multiplier_weight_decay: float = 2e-3
    rules: dict[str, dict[str, Any]] | None = None
    optimizer_kwargs: dict[str, Any] | None = None
    mup_base_width: int | None = None
    mup_init_std: float | None = None
    steps: int = 200
    warmup_steps: int = 20
    schedule: Schedule = "wsd"
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.1
    grad_clip: float | None = 1.0
    batch_size: int = 16
    seq_len: int | None = None
    seed: int = 0
    data_seed: int | None = None
    eval_every: int = 0
    eval_batches: int = 8
    log_every: int = 10
    stats_every: int = 0
    metrics_path: str | None = None
    checkpoint_path: str | None = None
    checkpoint_every: int = 0
    progress: bool = True
    device: str = "auto"
    label: str = "train"

    def __post_init__(self) -> None:
        if self.optimizer not in ("adamw", "muon"):
            raise ValueError(f"TrainConfig.optimizer must be 'adamw' or 'muon', got {self.optimizer!r}")
        if self.schedule not in ("cosine", "linear", "wsd"):
            raise ValueError(
                f"TrainConfig.schedule must be 'cosine', 'linear' or 'wsd', got {self.schedule!r}"
            )
        _check_number("lr", self.lr, positive=True)
        for name in ("weight_decay", "multiplier_weight_decay", "min_lr_ratio"):
            _check_number(name, getattr(self, name), positive=False)
        for name in ("adamw_lr", "multiplier_lr", "grad_clip"):
            if getattr(self, name) is not None:
                _check_number(name, getattr(self, name), positive=True)
        if not 0.0 <= self.decay_fraction <= 1.0:
            raise ValueError(f"TrainConfig.decay_fraction must be in [0, 1], got {self.decay_fraction!r}")
        if self.min_lr_ratio > 1.0:
            raise ValueError(f"TrainConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio!r}")
        for name in ("steps", "batch_size", "eval_batches", "log_every"):
            _check_int(name, getattr(self, name), minimum=1)
        for name in ("warmup_steps", "eval_every", "checkpoint_every", "seed", "stats_every"):
            _check_int(name, getattr(self, name), minimum=0)
        if self.seq_len is not None:
            _check_int("seq_len", self.seq_len, minimum=1)
        if self.data_seed is not None:
            _check_int("data_seed", self.data_seed, minimum=0)
        if self.mup_base_width is not None:
            _check_int("mup_base_width", self.mup_base_width, minimum=1)
        if self.mup_init_std is not None:
            _check_number("mup_init_std", self.mup_init_std, positive=True)
        if self.optimizer_kwargs is not None and not isinstance(self.optimizer_kwargs, dict):
            raise TypeError(f"TrainConfig.optimizer_kwargs must be a dict or None, got {type(self.optimizer_kwargs).__name__}")
        if self.warmup_steps > self.steps:
            raise ValueError(
                f"TrainConfig.warmup_steps ({self.warmup_steps}) must not exceed steps ({self.steps})"
            )
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(self.betas[0]), float(self.betas[1]))

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain values; ``optimizer_kwargs`` values that are not numbers, strings
        or ``None`` (a process group) are replaced by their ``repr``."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        plain = (int, float, str, bool, type(None))
        if self.optimizer_kwargs is not None:
            out["optimizer_kwargs"] = {k: v if isinstance(v, plain) else repr(v) for k, v in self.optimizer_kwargs.items()}
        return out

    @property
    def lr_times_wd_times_steps(self) -> float:
        """``steps * lr * wd``: how many equilibrium time constants ``1/(lr wd)`` the run lasts."""
        return self.steps * self.lr * self.weight_decay


def _check_number(name: str, value: Any, *, positive: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ValueError(f"TrainConfig.{name} must be {kind} finite number, got {value!r}")


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"TrainConfig.{name} must be an int >= {minimum}, got {value!r}")


# ----------------------------------------------------------------------------------------------
# Pure pieces: schedule, device, dtype


def lr_schedule_factor(
    step: int,
    *,
    total_steps: int,
    warmup_steps: int,
    schedule: Schedule = "wsd",
    decay_fraction: float = 0.2,
    min_lr_ratio: float = 0.1,
) -> float:
    """Factor on the base lr at ``step`` (0-based; the factor used for the update of that step).

    Warmup: ``(step + 1) / warmup_steps`` for ``step < warmup_steps``. Then, with progress
    ``p`` in [0, 1] over the remaining steps and ``m = min_lr_ratio``:

    * ``"cosine"``: ``m + (1 - m) * (1 + cos(pi p)) / 2``
    * ``"linear"``: ``1 - (1 - m) p``
    * ``"wsd"`` (warmup-stable-decay): ``1`` until the last ``decay_fraction`` of the steps, then
      linear from 1 to ``m`` over them.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "wsd":
        decay_steps = max(1, round(decay_fraction * total_steps))
        start = total_steps - decay_steps
        if step < start:
            return 1.0
        p = min(1.0, (step - start + 1) / decay_steps)
        return 1.0 - (1.0 - min_lr_ratio) * p
    span = max(1, total_steps - warmup_steps)
    p = min(1.0, (step - warmup_steps + 1) / span)
    if schedule == "cosine":
        return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))
    if schedule == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * p
    raise ValueError(f"schedule must be 'cosine', 'linear' or 'wsd', got {schedule!r}")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``"auto"``: CUDA when available, else CPU; anything else is passed to ``torch.device``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device must be 'auto' or a torch device string, got {device!r}") from err


def autocast_context(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; nothing (fp32) elsewhere, since bf16 matmuls are slow on CPUs."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# Construction


def build_model(model_config: GPTConfig, cfg: TrainConfig, **parametrize_kwargs: Any) -> tuple[GPT, Any]:
    """Seeded ``GPT(model_config)``, parametrized in place with ``cfg.multipliers`` (and muP when
    ``cfg.mup_base_width`` is set), on the device. Extra keyword arguments go to
    ``parametrization.parametrize``."""
    torch.manual_seed(cfg.seed)
    model = GPT(model_config)
    if cfg.mup_base_width is not None:
        parametrize_kwargs = {"base_width": cfg.mup_base_width, "init_std": cfg.mup_init_std, **parametrize_kwargs}
    mp = P.parametrize(model, multipliers=cfg.multipliers, **parametrize_kwargs)
    model.to(resolve_device(cfg.device))
    return model, mp


def build_optimizer(mp: Any, cfg: TrainConfig) -> torch.optim.Optimizer:
    """``optimizers.AdamW`` or ``optimizers.Muon`` over ``mp.param_groups(...)``, with
    ``cfg.optimizer_kwargs`` as extra constructor arguments."""
    extra = dict(cfg.optimizer_kwargs or {})
    muon_only = {"lr_scale": cfg.muon_lr_scale} if cfg.optimizer == "muon" else {}
    groups = mp.param_groups(
        optimizer=cfg.optimizer,
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        **muon_only,  # the groups carry Muon's shape rule; the constructor's is only a default
        adamw_lr=cfg.adamw_lr,
        multiplier_lr=cfg.multiplier_lr,
        multiplier_weight_decay=cfg.multiplier_weight_decay,
        betas=cfg.betas,
        rules=cfg.rules,
    )
    if cfg.optimizer == "adamw":
        return optimizers.AdamW(groups, **{"lr": cfg.lr, "betas": cfg.betas, "weight_decay": cfg.weight_decay, **extra})
    kwargs = dict(
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        lr_scale=cfg.muon_lr_scale,
        adamw_lr=cfg.adamw_lr if cfg.adamw_lr is not None else cfg.lr,
        adamw_betas=cfg.betas,
    )
    return optimizers.Muon(groups, **{**kwargs, **extra})


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig) -> torch.optim.lr_scheduler.LambdaLR:
    """Warmup + decay as a ``LambdaLR`` over :func:`lr_schedule_factor` (scales every group's lr)."""
    fn = partial(
        lr_schedule_factor,
        total_steps=cfg.steps,
        warmup_steps=cfg.warmup_steps,
        schedule=cfg.schedule,
        decay_fraction=cfg.decay_fraction,
        min_lr_ratio=cfg.min_lr_ratio,
    )
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class TrainResult:
    """What a run measured. ``train_loss[i]`` is the loss of step ``i``; ``val_loss`` lists
    ``(step, loss)``; ``opt_step_share`` is optimizer-step time / training-step time."""

    train_loss: list[float]
    val_loss: list[tuple[int, float]]
    final_val_loss: float
    tokens_per_s: float
    opt_step_share: float
    wall_s: float
    steps: int
    device: str
    config: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class Trainer:
    """Runs ``cfg.steps`` steps of ``model`` (possibly wrapped) on ``corpus``.

    ``mp`` is the parametrization of the unwrapped model (its ``clip_grad_norm_`` and
    ``model.state_dict()`` are used). ``data_rank``/``data_world_size`` give each data-parallel
    rank its own batches: rank ``r`` of ``w`` takes the batch of index ``step * w + r``.
    """

    def __init__(
        self,
        model: nn.Module,
        mp: Any,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        corpus: ByteCorpus,
        cfg: TrainConfig,
        *,
        data_rank: int = 0,
        data_world_size: int = 1,
        console: Console | None = None,
    ) -> None:
        self.model = model
        self.mp = mp
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.corpus = corpus
        self.cfg = cfg
        self.device = resolve_device(cfg.device)
        base = getattr(mp, "model", model)
        self.seq_len = cfg.seq_len if cfg.seq_len is not None else base.config.seq_len
        corpus.check(cfg.batch_size, self.seq_len)
        if not 0 <= data_rank < data_world_size:
            raise ValueError(f"data_rank must be in [0, data_world_size), got {data_rank}, {data_world_size}")
        self.data_rank, self.data_world_size = data_rank, data_world_size
        self.data_seed = cfg.data_seed if cfg.data_seed is not None else cfg.seed
        self.console = console or Console(stderr=True)
        self.step = 0
        self.train_loss: list[float] = []
        self.val_loss: list[tuple[int, float]] = []
        self._step_time = 0.0
        self._opt_time = 0.0
        self._timed_tokens = 0

    @classmethod
    def from_config(
        cls, model_config: GPTConfig, cfg: TrainConfig, corpus: ByteCorpus | None = None, **kwargs: Any
    ) -> "Trainer":
        """Model, parametrization, optimizer and scheduler built from the configs."""
        model, mp = build_model(model_config, cfg)
        optimizer = build_optimizer(mp, cfg)
        scheduler = build_scheduler(optimizer, cfg)
        return cls(model, mp, optimizer, scheduler, corpus or ByteCorpus.load(), cfg, **kwargs)

    # -- single pieces ---------------------------------------------------------------------

    def batch(self, step: int) -> tuple[Tensor, Tensor]:
        index = step * self.data_world_size + self.data_rank
        x, y = self.corpus.train_batch(index, self.cfg.batch_size, self.seq_len, seed=self.data_seed)
        return x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def train_step(self) -> float:
        """One optimizer step; returns the training loss of the batch."""
        x, y = self.batch(self.step)
        self.model.train()
        _sync(self.device)
        t0 = time.perf_counter()
        with autocast_context(self.device):
            loss = self.model(x, y)
        loss.backward()
        if self.cfg.grad_clip is not None:
            self.mp.clip_grad_norm_(self.cfg.grad_clip)
        _sync(self.device)
        t1 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        t2 = time.perf_counter()
        self.scheduler.step()
        value = loss.item()
        if not math.isfinite(value):
            raise FloatingPointError(f"{self.cfg.label}: non-finite training loss {value} at step {self.step}")
        if self.step > 0:  # step 0 pays one-off costs (allocations, lazy init)
            self._step_time += t2 - t0
            self._opt_time += t2 - t1
            self._timed_tokens += x.numel()
        self.train_loss.append(value)
        self.step += 1
        return value

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean loss over ``cfg.eval_batches`` fixed validation batches."""
        self.model.eval()
        total = 0.0
        for x, y in self.corpus.val_batches(self.cfg.eval_batches, self.cfg.batch_size, self.seq_len):
            with autocast_context(self.device):
                total += self.model(x.to(self.device), y.to(self.device)).item()
        self.model.train()
        return total / self.cfg.eval_batches

    @torch.no_grad()
    def stats(self) -> dict[str, dict[str, Any]]:
        """``mp.stats(optimizer)``: per-matrix scales against the noise–weight-decay equilibrium."""
        return self.mp.stats(self.optimizer)

    @property
    def tokens_per_s(self) -> float:
        return self._timed_tokens / self._step_time if self._step_time > 0 else float("nan")

    @property
    def opt_step_share(self) -> float:
        return self._opt_time / self._step_time if self._step_time > 0 else float("nan")

    # -- checkpoints -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Plain containers and tensors only (loadable with ``torch.load(..., weights_only=True)``):
        format tag and version, step, model/optimizer/scheduler states, RNG states, curves, and
        the config as a JSON string."""
        base = getattr(self.mp, "model", self.model)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "model": base.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng,
            "train_loss": list(self.train_loss),
            "val_loss": [list(v) for v in self.val_loss],
            "config": json.dumps(self.cfg.to_dict(), default=repr),
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write a checkpoint atomically (temp file, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load(self, path: str | os.PathLike[str]) -> None:
        """Restore a checkpoint written by :meth:`save`; the next step continues bit-identically.

        Loads with ``weights_only=True`` (no pickled code runs). Raises ``ValueError`` naming the
        path for a truncated or foreign file, a checkpoint of another format version, or one
        whose model parameters (names or shapes) differ from this trainer's model.
        """
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # truncated zip, foreign pickle, disallowed global
            raise ValueError(
                f"checkpoint {str(path)!r} cannot be read as a trainer checkpoint (truncated, corrupt, or not "
                f"written by Trainer.save): {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
            ) from err
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint {str(path)!r} is not a Trainer checkpoint (no format tag {CHECKPOINT_FORMAT!r})")
        if state.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"checkpoint {str(path)!r} has format version {state.get('version')!r}; this code reads version "
                f"{CHECKPOINT_VERSION}. Load it with the version of lrm-optim that wrote it"
            )
        base = getattr(self.mp, "model", self.model)
        _check_same_model(path, base.state_dict(), state["model"])
        base.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"].cpu())
        if "cuda" in state["rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["rng"]["cuda"]])
        self.step = state["step"]
        self.train_loss = list(state["train_loss"])
        self.val_loss = [tuple(v) for v in state["val_loss"]]

    # -- the run -----------------------------------------------------------------------------

    def _progress(self) -> Progress:
        return Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.4f}  {task.fields[tps]:,.0f} tok/s"),
            TimeRemainingColumn(),
            console=self.console,
            disable=not self.cfg.progress,
            transient=True,
        )

    def _log(self, handle: Any, record: dict[str, Any]) -> None:
        if handle is not None:
            handle.write(json.dumps(record) + "\n")
            handle.flush()

    def fit(self, resume: bool = False) -> TrainResult:
        """Train until ``cfg.steps``; with ``resume=True`` first load ``cfg.checkpoint_path`` if it
        exists. Returns the measurements as a :class:`TrainResult`."""
        cfg = self.cfg
        if resume and cfg.checkpoint_path and Path(cfg.checkpoint_path).is_file():
            self.load(cfg.checkpoint_path)
        handle = None
        if cfg.metrics_path:
            Path(cfg.metrics_path).parent.mkdir(parents=True, exist_ok=True)
            handle = open(cfg.metrics_path, "a" if self.step > 0 else "w")
        start = time.perf_counter()
        try:
            with self._progress() as progress:
                task = progress.add_task(cfg.label, total=cfg.steps, completed=self.step, loss=float("nan"), tps=0.0)
                while self.step < cfg.steps:
                    lr = self.optimizer.param_groups[0]["lr"]
                    loss = self.train_step()
                    step = self.step
                    progress.update(task, completed=step, loss=loss, tps=self.tokens_per_s if step > 1 else 0.0)
                    if step % cfg.log_every == 0 or step == cfg.steps:
                        self._log(handle, {"step": step, "loss": loss, "lr": lr, "tokens_per_s": self.tokens_per_s})
                    if cfg.eval_every and step % cfg.eval_every == 0 and step < cfg.steps:
                        self.val_loss.append((step, self.evaluate()))
                        self._log(handle, {"step": step, "val_loss": self.val_loss[-1][1]})
                    if cfg.stats_every and step % cfg.stats_every == 0 and step < cfg.steps:
                        self._log(handle, {"step": step, "stats": self.stats()})
                    if cfg.checkpoint_path and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                        self.save(cfg.checkpoint_path)
            if not self.val_loss or self.val_loss[-1][0] != self.step:
                self.val_loss.append((self.step, self.evaluate()))
                self._log(handle, {"step": self.step, "val_loss": self.val_loss[-1][1]})
            if cfg.stats_every:
                self._log(handle, {"step": self.step, "stats": self.stats()})
        finally:
            if handle is not None:
                handle.close()
        return TrainResult(
            train_loss=list(self.train_loss),
            val_loss=list(self.val_loss),
            final_val_loss=self.val_loss[-1][1],
            tokens_per_s=self.tokens_per_s,
            opt_step_share=self.opt_step_share,
            wall_s=time.perf_counter() - start,
            steps=self.step,
            device=str(self.device),
            config=cfg.to_dict(),
        )


def _check_same_model(path: Any, mine: dict[str, Tensor], theirs: Any) -> None:
    """Raise ``ValueError`` naming the first parameter whose name or shape differs."""
    if not isinstance(theirs, dict):
        raise ValueError(f"checkpoint {str(path)!r} has no model state dict")
    missing = sorted(set(mine) - set(theirs))
    extra = sorted(set(theirs) - set(mine))
    if missing or extra:
        raise ValueError(
            f"checkpoint {str(path)!r} is from another model: missing {missing[:3]}, unexpected {extra[:3]} "
            "(build the model with the config the checkpoint was trained with)"
        )
    for key, t in mine.items():
        if tuple(theirs[key].shape) != tuple(t.shape):
            raise ValueError(
                f"checkpoint {str(path)!r} is from another model: {key!r} has shape {tuple(theirs[key].shape)}, "
                f"this model's is {tuple(t.shape)} (build the model with the config the checkpoint was trained with)"
            )


def train(model_config: GPTConfig, cfg: TrainConfig, corpus: ByteCorpus | None = None) -> TrainResult:
    """Build everything from the configs and run :meth:`Trainer.fit` (resuming when
    ``cfg.checkpoint_path`` exists)."""
    return Trainer.from_config(model_config, cfg, corpus).fit(resume=True)
