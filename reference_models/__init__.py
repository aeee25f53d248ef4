"""Reference models, data and the training loop of the benchmarks."""

from .data import VOCAB_SIZE, ByteCorpus, load_corpus_bytes, stdlib_files
from .gpt import GPT, GPTConfig
from .train import (
    TrainConfig,
    Trainer,
    TrainResult,
    build_model,
    build_optimizer,
    build_scheduler,
    lr_schedule_factor,
    train,
)

__all__ = [
    "GPT",
    "GPTConfig",
    "ByteCorpus",
    "VOCAB_SIZE",
    "load_corpus_bytes",
    "stdlib_files",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "build_model",
    "build_optimizer",
    "build_scheduler",
    "lr_schedule_factor",
    "train",
]
