"""Byte-level text corpora: the Python standard library's own source by default, or any UTF-8 file.

Tokens are bytes (vocabulary 256), so there is no tokenizer to ship and nothing downloads.

* ``"stdlib"``: every ``*.py`` file under ``sysconfig.get_paths()["stdlib"]`` (``site-packages``
  excluded), read as raw bytes and concatenated, one ``\\n`` between files. The order is fixed and
  mixes domains: files are sorted by ``(crc32(relative path), relative path)``.
* a path: a UTF-8 text file, plain or gzip-compressed (``.gz``).

The split is the last ``val_fraction`` of the byte stream. Training batches are a pure function of
``(seed, step)``, so a resumed run sees exactly the batches it would have seen, and validation uses
fixed evenly spaced windows of the validation split.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import os
import sys
import sysconfig
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["ByteCorpus", "VOCAB_SIZE", "load_corpus_bytes", "stdlib_files"]

VOCAB_SIZE = 256
STDLIB = "stdlib"


def stdlib_files() -> list[Path]:
    """The standard library's ``*.py`` files in the corpus order: sorted by
    ``(crc32(posix relative path), posix relative path)``, ``site-packages``/``dist-packages`` excluded."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise FileNotFoundError(f"standard library directory {root} not found")
    rel = [
        p.relative_to(root).as_posix()
        for p in root.rglob("*.py")
        if p.is_file() and not {"site-packages", "dist-packages"} & set(p.relative_to(root).parts)
    ]
    rel.sort(key=lambda r: (zlib.crc32(r.encode()), r))
    return [root / r for r in rel]


def _cache_dir() -> Path:
    base = os.environ.get("LRM_OPTIM_CACHE") or os.environ.get("XDG_CACHE_HOME")
    return Path(base) / "lrm_optim" if base else Path.home() / ".cache" / "lrm_optim"


def _read_stdlib() -> np.ndarray:
    """Concatenate the stdlib files; cached on disk keyed by the stdlib path and Python version."""
    root = sysconfig.get_paths()["stdlib"]
    key = hashlib.sha1(f"{root}|{sys.version}|v1".encode()).hexdigest()[:16]
    cache = _cache_dir() / f"stdlib-{key}.bin"
    if cache.is_file():
        return np.fromfile(cache, dtype=np.uint8)
    data = np.frombuffer(b"\n".join(p.read_bytes() for p in stdlib_files()), dtype=np.uint8)
    try:  # A failed cache write (read-only home, full disk) only costs the re-read next time.
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_suffix(f".tmp{os.getpid()}")
        data.tofile(tmp)
        os.replace(tmp, cache)
    except OSError:
        pass
    return data


def _read_text_file(path: Path) -> np.ndarray:
    if not path.is_file():
        raise FileNotFoundError(f"corpus file {str(path)!r} does not exist")
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"corpus file {str(path)!r} is not UTF-8 text: {err}") from None
    return np.frombuffer(raw, dtype=np.uint8)


@functools.lru_cache(maxsize=4)
def _load_cached(source: str) -> np.ndarray:
    return _read_stdlib() if source == STDLIB else _read_text_file(Path(source))


def load_corpus_bytes(source: str | os.PathLike[str] = STDLIB) -> np.ndarray:
    """The corpus as a read-only ``uint8`` array: ``"stdlib"`` or the path of a UTF-8 text file
    (plain or ``.gz``). Results are cached per process (and the stdlib also on disk)."""
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source must be 'stdlib' or a path, got {type(source).__name__}")
    key = STDLIB if source == STDLIB else str(Path(source).resolve())
    data = _load_cached(key)
    if data.size == 0:
        raise ValueError(f"corpus {str(source)!r} is empty")
    data.flags.writeable = False
    return data


def _batch_generator(seed: int, step: int) -> torch.Generator:
    # A distinct, reproducible stream per (seed, step); 0x9E3779B97F4A7C15 is the 64-bit golden ratio.
    g = torch.Generator()
    g.manual_seed((seed * 0x9E3779B97F4A7C15 + step) % (2**63))
    return g


def _windows(data: Tensor, offsets: Tensor, seq_len: int) -> tuple[Tensor, Tensor]:
    """Inputs ``data[o : o+T]`` and next-byte targets ``data[o+1 : o+T+1]`` as int64 ``[B, T]``."""
    idx = offsets[:, None] + torch.arange(seq_len + 1)
    chunk = data[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


@dataclass(frozen=True)
class ByteCorpus:
    """A byte corpus split into train and validation parts (``uint8`` tensors)."""

    train: Tensor
    val: Tensor
    source: str
    vocab_size: int = VOCAB_SIZE

    @classmethod
    def load(cls, source: str | os.PathLike[str] = STDLIB, *, val_fraction: float = 0.02) -> "ByteCorpus":
        """Load ``source`` and hold out its last ``val_fraction`` of bytes for validation."""
        if not isinstance(val_fraction, float) or not 0.0 < val_fraction < 1.0:
            raise ValueError(f"val_fraction must be a float in (0, 1), got {val_fraction!r}")
        data = torch.from_numpy(load_corpus_bytes(source).copy())
        n_val = max(1, int(round(len(data) * val_fraction)))
        if n_val >= len(data):
            raise ValueError(f"corpus {str(source)!r} has {len(data)} bytes, too few to split")
        return cls(train=data[:-n_val], val=data[-n_val:], source=str(source))

    def check(self, batch_size: int, seq_len: int) -> None:
        """Raise ``ValueError`` unless each split holds at least ``batch_size * seq_len + 1`` bytes."""
        for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        need = batch_size * seq_len + 1
        for split in ("train", "val"):
            have = len(getattr(self, split))
            if have < need:
                raise ValueError(
                    f"corpus {self.source!r} is too small: its {split} split has {have} bytes but "
                    f"batch_size={batch_size} x seq_len={seq_len} needs at least {need}; "
                    f"use a larger corpus or a smaller batch_size/seq_len"
                )

    def train_batch(self, step: int, batch_size: int, seq_len: int, seed: int = 0) -> tuple[Tensor, Tensor]:
        """The training batch for ``step``: ``batch_size`` random windows, a pure function of
        ``(seed, step)``. Returns ``(inputs, targets)``, int64 ``[batch_size, seq_len]``."""
        self.check(batch_size, seq_len)
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        g = _batch_generator(seed, step)
        offsets = torch.randint(0, len(self.train) - seq_len, (batch_size,), generator=g)
        return _windows(self.train, offsets, seq_len)

    def val_batches(self, n_batches: int, batch_size: int, seq_len: int) -> Iterator[tuple[Tensor, Tensor]]:
        """``n_batches`` fixed validation batches of evenly spaced windows over the val split."""
        self.check(batch_size, seq_len)
        if not isinstance(n_batches, int) or n_batches < 1:
            raise ValueError(f"n_batches must be a positive int, got {n_batches!r}")
        n = n_batches * batch_size
        offsets = torch.linspace(0, len(self.val) - seq_len - 1, n).long()
        for i in range(n_batches):
            yield _windows(self.val, offsets[i * batch_size : (i + 1) * batch_size], seq_len)
