"""Tests for optimizers/orthogonalize.py: the local, batched Newton–Schulz of a list of updates."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import optimizers
from optimizers import newton_schulz
from optimizers.orthogonalize import coefficients_key, orthogonalize_updates, resolve_method

CPU = torch.device("cpu")


@pytest.mark.parametrize(
    ("mn", "dtype", "expected"),
    [
        ((64, 128), None, "gram"),  # CPU default compute dtype is fp32
        ((64, 127), None, "standard"),  # aspect ratio below 2
        ((64, 128), torch.float64, "gram"),
        ((64, 128), torch.bfloat16, "standard"),  # Gram rounds too much in low precision
        ((64, 64), torch.float32, "standard"),
    ],
)
def test_auto_method_picks_gram_only_for_wide_matrices_in_fp32_or_fp64(mn, dtype, expected) -> None:
    assert resolve_method("auto", mn, CPU, dtype) == expected
    assert resolve_method("standard", mn, CPU, dtype) == "standard"
    assert resolve_method("gram", mn, CPU, dtype) == "gram"


def test_coefficients_key_is_hashable_and_equal_for_equal_schedules() -> None:
    assert coefficients_key("quintic") == "quintic"
    assert coefficients_key([[1, 2, 3]]) == coefficients_key(((1.0, 2.0, 3.0),))
    hash(coefficients_key([[1, 2, 3], (4, 5, 6)]))


def test_tall_and_wide_updates_of_transposed_shapes_match_their_own_newton_schulz() -> None:
    g = torch.Generator().manual_seed(0)
    updates = [torch.randn(6, 10, generator=g), torch.randn(10, 6, generator=g), torch.randn(2, 10, 6, generator=g)]
    for u, o in zip(updates, orthogonalize_updates(updates, steps=5, coefficients="quintic", dtype=None)):
        assert o.shape == u.shape
        torch.testing.assert_close(o, newton_schulz(u), atol=1e-5, rtol=0)


def test_vectors_raise_value_error_naming_the_update() -> None:
    with pytest.raises(ValueError, match=r"updates\[1\] must be \[m, n\] or \[k, m, n\]"):
        orthogonalize_updates([torch.ones(2, 3), torch.ones(4)], steps=5, coefficients="quintic", dtype=None)


def test_public_name_is_the_orthogonalize_module_function() -> None:
    assert optimizers.orthogonalize_updates is orthogonalize_updates


def _relative_imports(module: str) -> set[str]:
    tree = ast.parse(Path(optimizers.__file__).with_name(f"{module}.py").read_text())
    return {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.level == 1}


def test_orthogonalize_and_distributed_do_not_import_muon_or_each_other_back() -> None:
    # muon → distributed → orthogonalize → newton_schulz: arrows one way only, nothing lazy.
    assert _relative_imports("orthogonalize") == {"newton_schulz"}
    assert "muon" not in _relative_imports("distributed")
