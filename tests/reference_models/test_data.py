"""Tests for reference_models/data.py: corpus order, split and batch determinism, bad input."""

import gzip

import pytest
import torch

from reference_models import ByteCorpus, load_corpus_bytes, stdlib_files


@pytest.fixture(scope="module")
def stdlib() -> ByteCorpus:
    return ByteCorpus.load()


def test_stdlib_file_list_is_deterministic_and_python_only():
    a, b = stdlib_files(), stdlib_files()
    assert a == b
    assert len(a) > 100
    assert all(p.suffix == ".py" for p in a)
    assert not any("site-packages" in p.parts for p in a)


def test_stdlib_corpus_is_large_byte_text_and_split_is_fixed(stdlib):
    again = ByteCorpus.load()
    assert torch.equal(stdlib.train, again.train) and torch.equal(stdlib.val, again.val)
    assert stdlib.train.dtype == torch.uint8
    assert len(stdlib.train) > 1_000_000
    n = len(stdlib.train) + len(stdlib.val)
    assert len(stdlib.val) == round(0.02 * n)
    assert b"def " in bytes(stdlib.val[:100_000].tolist())


def test_train_batches_are_a_function_of_seed_and_step(stdlib):
    x1, y1 = stdlib.train_batch(7, 4, 32, seed=3)
    x2, y2 = stdlib.train_batch(7, 4, 32, seed=3)
    assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert not torch.equal(x1, stdlib.train_batch(8, 4, 32, seed=3)[0])
    assert not torch.equal(x1, stdlib.train_batch(7, 4, 32, seed=4)[0])
    assert x1.shape == (4, 32) and x1.dtype == torch.int64
    # Targets are the inputs shifted by one byte.
    assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_val_batches_are_fixed_and_come_from_val_split(stdlib):
    a = list(stdlib.val_batches(3, 2, 16))
    b = list(stdlib.val_batches(3, 2, 16))
    assert len(a) == 3
    assert all(torch.equal(x, u) and torch.equal(y, v) for (x, y), (u, v) in zip(a, b))
    first = bytes(a[0][0][0].tolist())
    assert first == bytes(stdlib.val[:16].tolist())


def test_text_file_plain_and_gz_give_the_same_corpus(tmp_path):
    text = ("hello wörld, a small corpus\n" * 200).encode()
    plain = tmp_path / "c.txt"
    plain.write_bytes(text)
    gz = tmp_path / "c.txt.gz"
    gz.write_bytes(gzip.compress(text))
    a = ByteCorpus.load(plain, val_fraction=0.1)
    b = ByteCorpus.load(gz, val_fraction=0.1)
    assert torch.equal(a.train, b.train) and torch.equal(a.val, b.val)
    assert bytes(torch.cat([a.train, a.val]).tolist()) == text
    assert load_corpus_bytes(plain).tobytes() == text


def test_too_small_corpus_gives_clear_error(tmp_path):
    path = tmp_path / "small.txt"
    path.write_text("x" * 1000)
    corpus = ByteCorpus.load(path, val_fraction=0.5)
    corpus.train_batch(0, 2, 16)  # fits
    with pytest.raises(ValueError, match="too small.*batch_size=64 x seq_len=64"):
        corpus.train_batch(0, 64, 64)
    with pytest.raises(ValueError, match="too small"):
        list(corpus.val_batches(1, 32, 32))


def test_bad_inputs_raise(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        ByteCorpus.load(tmp_path / "nope.txt")
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("caf\xe9 ".encode("latin-1") * 100)
    with pytest.raises(ValueError, match="UTF-8"):
        ByteCorpus.load(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(ValueError, match="empty"):
        ByteCorpus.load(empty)
    with pytest.raises(ValueError, match="val_fraction"):
        ByteCorpus.load(tmp_path / "latin1.txt", val_fraction=1.5)
    with pytest.raises(TypeError, match="source"):
        load_corpus_bytes(3)
    good = tmp_path / "good.txt"
    good.write_text("abc" * 1000)
    corpus = ByteCorpus.load(good)
    with pytest.raises(ValueError, match="batch_size"):
        corpus.train_batch(0, 0, 8)
    with pytest.raises(ValueError, match="step"):
        corpus.train_batch(-1, 2, 8)
