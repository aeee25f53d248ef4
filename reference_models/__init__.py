"""Reference models, data and the training loop used by every benchmark."""

from .data import VOCAB_SIZE, ByteCorpus, load_corpus_bytes, stdlib_files
from .gpt import GPT, GPTConfig

__all__ = ["GPT", "GPTConfig", "ByteCorpus", "VOCAB_SIZE", "load_corpus_bytes", "stdlib_files"]
