"""Placement: the presets' table, glob resolution (the last matching glob wins), tied weights."""

from __future__ import annotations

import pytest

import parametrization as P
from parametrization.placement import Placement
from tests.parametrization._models import TinyLM


def _placements(model, multipliers) -> dict[str, str]:
    return {fqn: str(p) for fqn, p in P.parametrize(model, multipliers).placements.items()}


def test_vector_preset_puts_rows_and_columns_on_matrices_and_embedding_and_nothing_on_the_head():
    got = _placements(TinyLM(n_layer=1), "vector")
    matrices = [f"blocks.0.attn.{x}.weight" for x in "qkvo"] + [f"blocks.0.mlp.{x}.weight" for x in ("gate", "up", "down")]
    assert got == {"wte.weight": "rc", **{m: "rc" for m in matrices}}


def test_scalar_preset_puts_one_scalar_on_matrices_and_embedding_and_none_preset_nothing():
    got = _placements(TinyLM(n_layer=1), "scalar")
    assert set(got.values()) == {"s"} and "wte.weight" in got and "lm_head.weight" not in got and len(got) == 8
    assert _placements(TinyLM(n_layer=1), "none") == {}


def test_a_tied_embedding_gets_no_multipliers_under_a_preset():
    got = _placements(TinyLM(n_layer=1, tied=True), "vector")
    assert "wte.weight" not in got and "lm_head.weight" not in got and len(got) == 7


@pytest.mark.parametrize(
    "multipliers, down, gate",
    [
        ({"*.mlp.*": "r", "*.mlp.down": "src"}, "src", "r"),
        ({"*.mlp.down": "src", "*.mlp.*": "r"}, "r", "r"),
        ({"*.mlp.*": "rc", "*.mlp.down": "none"}, None, "rc"),
    ],
)
def test_the_last_matching_glob_wins(multipliers, down, gate):
    got = _placements(TinyLM(n_layer=1), multipliers)
    assert got.get("blocks.0.mlp.down.weight") == down
    assert got["blocks.0.mlp.gate.weight"] == gate


def test_globs_match_weight_and_module_names_and_unmatched_weights_get_none():
    got = _placements(TinyLM(n_layer=1), {"blocks.0.attn.q": "r", "blocks.0.attn.k.weight": "c", "lm_head": "s"})
    assert got == {"blocks.0.attn.q.weight": "r", "blocks.0.attn.k.weight": "c", "lm_head.weight": "s"}


@pytest.mark.parametrize("spec, expected", [("src", Placement(True, True, True)), ("", Placement()), ("none", Placement()), ("cr", Placement(row=True, col=True))])
def test_placement_letters(spec, expected):
    assert Placement.parse(spec) == expected


@pytest.mark.parametrize("spec", ["rr", "x", "vector"])
def test_bad_placement_letters_raise_naming_the_spec(spec):
    with pytest.raises(ValueError, match=repr(spec)):
        Placement.parse(spec)
