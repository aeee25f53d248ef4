"""Role detection on several architectures, overrides, and its errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import parametrization as P
from parametrization.roles import Role, detect_roles, register_layout
from tests.parametrization._models import Conv1D, ConvNet, GPT2Like, TinyLM, mlp


def _roles(model: nn.Module, **kw) -> dict[str, str]:
    return {k: v.value for k, v in detect_roles(model, **kw).roles.items()}


def test_roles_of_a_small_transformer():
    roles = _roles(TinyLM())
    assert roles["wte.weight"] == "embedding"
    assert roles["lm_head.weight"] == "head"
    assert roles["blocks.0.attn.q.weight"] == "matrix"
    assert roles["blocks.1.mlp.down.weight"] == "matrix"
    assert roles["blocks.0.norm1.weight"] == "vector"
    assert roles["norm.weight"] == "vector"
    assert set(roles) == {n for n, _ in TinyLM().named_parameters()}


def test_roles_of_a_plain_mlp_take_the_last_linear_as_head():
    roles = _roles(mlp())
    assert roles == {
        "0.weight": "matrix", "0.bias": "vector", "2.weight": "matrix", "2.bias": "vector",
        "4.weight": "head", "4.bias": "vector",
    }


def test_tied_embedding_and_head_is_one_head_parameter_with_an_alias():
    table = detect_roles(TinyLM(tied=True))
    assert table.roles["wte.weight"] is Role.HEAD
    assert "lm_head.weight" not in table.roles
    assert table.aliases == {"lm_head.weight": "wte.weight"}
    assert table.role_of("lm_head.weight") is Role.HEAD


def test_roles_of_a_conv_net():
    roles = _roles(ConvNet())
    assert roles["conv1.weight"] == "matrix"
    assert roles["conv2.weight"] == "matrix"
    assert roles["up.weight"] == "matrix"
    assert roles["bn.weight"] == "vector" and roles["bn.bias"] == "vector"
    assert roles["fc.weight"] == "head"


def test_transposed_conv1d_is_a_matrix_once_its_layout_is_registered(monkeypatch):
    import parametrization.roles as roles_module

    monkeypatch.setattr(roles_module, "_LAYOUTS", dict(roles_module._LAYOUTS))
    model = GPT2Like()
    with pytest.raises(ValueError, match="c_fc.weight"):
        detect_roles(model)
    register_layout(Conv1D, row_dim=1, col_dim=0)
    roles = _roles(model)
    assert roles["c_fc.weight"] == "matrix" and roles["c_proj.weight"] == "matrix"
    assert roles["wte.weight"] == "head"  # tied, no get_output_embeddings: found through the tie


def test_get_output_embeddings_returning_none_means_no_head():
    model = TinyLM()
    model.get_output_embeddings = lambda: None  # type: ignore[method-assign]
    assert "head" not in _roles(model).values()


def test_overrides_by_glob_last_one_wins():
    roles = _roles(TinyLM(), overrides={"*.mlp.*": "vector", "*.mlp.down.weight": "matrix"})
    assert roles["blocks.0.mlp.gate.weight"] == "vector"
    assert roles["blocks.0.mlp.down.weight"] == "matrix"


def test_overriding_the_head_replaces_the_automatic_head():
    roles = _roles(mlp(), overrides={"2.weight": "head"})
    assert roles["2.weight"] == "head" and roles["4.weight"] == "matrix"


class _Router(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(4, 4)
        self.table = nn.Parameter(torch.zeros(3, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) @ self.table.T


def test_raw_matrix_parameter_is_an_error_naming_it_and_the_fix():
    with pytest.raises(ValueError, match=r"'table'.*roles=\{"):
        detect_roles(_Router())
    assert _roles(_Router(), overrides={"table": "vector"})["table"] == "vector"


@pytest.mark.parametrize(
    "overrides, match",
    [({"*.q.weight": "bogus"}, "not a role"), ({"nothing.here": "matrix"}, "matches no parameter"), ({"*": "multiplier"}, "reserved")],
)
def test_bad_overrides_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        detect_roles(TinyLM(), overrides=overrides)


def test_parametrized_roles_cover_every_parameter_name_once():
    model = TinyLM(tied=True)
    mp = P.parametrize(model)
    names = {n for n, _ in model.named_parameters(remove_duplicate=False)}
    assert set(mp.roles) == names
    assert mp.roles["blocks.0.attn.q.weight_mult_row"] == "multiplier"
