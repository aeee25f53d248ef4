"""Multiplied layers run one fused op: same outputs and gradients as plain autograd through W_eff,
no weight-sized tensor kept for backward, and they survive autocast, compile, checkpointing, copies."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from transformers.pytorch_utils import Conv1D

import parametrization as P
from parametrization.effective_weight import effective_weight, linear_activation_side
from parametrization.multipliers import _original_class, set_compute
from tests.parametrization._helpers import SavedBytes

LAYERS = {
    "linear": (lambda: nn.Linear(6, 5), lambda g: torch.randn(2, 3, 6, generator=g)),
    "hf_conv1d": (lambda: Conv1D(5, 6), lambda g: torch.randn(2, 3, 6, generator=g)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, padding=1), lambda g: torch.randn(2, 4, 7, generator=g)),
    "conv1d_same_even_kernel": (lambda: nn.Conv1d(4, 6, 4, padding="same", bias=False), lambda g: torch.randn(2, 4, 7, generator=g)),
    "conv2d_groups_reflect": (lambda: nn.Conv2d(4, 6, 3, stride=2, groups=2, padding=1, padding_mode="reflect"), lambda g: torch.randn(2, 4, 5, 5, generator=g)),
    "conv3d": (lambda: nn.Conv3d(2, 3, 2), lambda g: torch.randn(1, 2, 3, 3, 3, generator=g)),
    "conv_transpose2d": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, output_padding=1), lambda g: torch.randn(2, 4, 3, 3, generator=g)),
    "embedding_padding_idx": (lambda: nn.Embedding(9, 4, padding_idx=1), lambda g: torch.randint(0, 9, (2, 5), generator=g)),
}


def _multiplied(kind: str, spec: str = "src", fixed_seed: int = 0, dtype=torch.float64):
    torch.manual_seed(fixed_seed)
    make, data = LAYERS[kind]
    layer = make().to(dtype)
    # A second layer so that the first one is not the head (heads get no multipliers).
    P.parametrize(nn.ModuleList([layer, nn.Linear(2, 2).to(dtype)]), {"0": spec})
    g = torch.Generator().manual_seed(fixed_seed + 1)
    with torch.no_grad():
        for name in ("weight_mult_scalar", "weight_mult_row", "weight_mult_col"):
            if hasattr(layer, name):
                p = getattr(layer, name)
                p.copy_(torch.rand(p.shape, generator=g, dtype=dtype) + 0.5)
    x = data(g)
    return layer, (x.to(dtype) if x.is_floating_point() else x)


def _reference(layer: nn.Module, x: torch.Tensor, **weight_kw) -> torch.Tensor:
    """The layer's own class computing with W_eff built by plain autograd ops."""
    w, spec = P.raw_weight(layer), layer._lrm_specs["weight"]
    w_eff = effective_weight(w, layer._parameters.get("weight_mult_scalar"), layer._parameters.get("weight_mult_row"),
                             layer._parameters.get("weight_mult_col"), row_dim=spec.row_dim, col_dim=spec.col_dim, fixed=spec.fixed)
    plain_cls = _original_class(type(layer))
    return plain_cls.forward(_WithWeight(layer, w_eff), x)


class _WithWeight:
    """``layer`` with ``weight`` replaced, for calling the plain class's forward on W_eff."""

    def __init__(self, layer: nn.Module, weight: torch.Tensor):
        self.__dict__["_layer"], self.__dict__["weight"] = layer, weight

    def __getattr__(self, name):
        return getattr(self._layer, name)

    def _conv_forward(self, input, weight, bias):
        return _original_class(type(self._layer))._conv_forward(self, input, weight, bias)


def _params(layer: nn.Module) -> list[torch.Tensor]:
    return [p for p in layer.parameters()]


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("spec", ["src", "r", "c", "s"])
def test_fused_layer_matches_plain_autograd_through_w_eff(kind, spec):
    layer, x = _multiplied(kind, spec)
    if x.is_floating_point():
        x.requires_grad_()
    inputs = _params(layer) + ([x] if x.requires_grad else [])
    g = torch.Generator().manual_seed(9)
    out = layer(x)
    upstream = torch.randn(out.shape, generator=g, dtype=out.dtype)
    got = torch.autograd.grad(out, inputs, upstream)
    ref_out = _reference(layer, x)
    ref = torch.autograd.grad(ref_out, inputs, upstream)
    torch.testing.assert_close(out, ref_out)
    for a, e in zip(got, ref):
        torch.testing.assert_close(a, e)


@pytest.mark.parametrize("kind", list(LAYERS))
def test_fused_layer_saves_what_the_plain_layer_saves(kind):
    layer, x = _multiplied(kind, dtype=torch.float32)
    plain = copy.deepcopy(layer)
    P.fold(plain)
    if x.is_floating_point():
        x.requires_grad_()
    with SavedBytes(_params(layer)) as fused:
        layer(x)
    with SavedBytes(_params(plain)) as ref:
        plain(x)
    assert fused.bytes == ref.bytes


def test_bf16_autocast_matches_the_plain_autocast_layer_closely():
    layer, x = _multiplied("linear", dtype=torch.float32)
    x.requires_grad_()
    inputs = _params(layer) + [x]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        ref_out = _reference(layer, x)
    assert out.dtype == ref_out.dtype == torch.bfloat16
    torch.testing.assert_close(out, ref_out, rtol=0, atol=0)  # same casts, same matmul
    upstream = torch.randn(out.shape).to(torch.bfloat16)
    got = torch.autograd.grad(out, inputs, upstream)
    ref = torch.autograd.grad(ref_out, inputs, upstream)
    for a, e in zip(got, ref):
        assert a.dtype == e.dtype
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-6)  # fp32 eq. 4 sums, different order


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(11, 8)
        self.conv = nn.Conv1d(8, 8, 3, padding=1)
        self.hf = Conv1D(8, 8)
        self.fc = nn.Linear(8, 8)
        self.head = nn.Linear(8, 11, bias=False)

    def block(self, h):
        h = self.conv(h.transpose(1, 2)).transpose(1, 2).relu().contiguous()  # HF Conv1D views its input
        return self.fc(self.hf(h).relu())

    def forward(self, idx, ckpt: bool = False):
        h = self.emb(idx)
        h = checkpoint(self.block, h, use_reentrant=False) if ckpt else self.block(h)
        return self.head(h)

    def loss(self, idx, ckpt: bool = False):
        return F.cross_entropy(self(idx, ckpt).flatten(0, 1), idx.flatten())


def _net():
    torch.manual_seed(0)
    net = _Net()
    mp = P.parametrize(net)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in mp.multiplier_parameters():
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
    return net, torch.randint(0, 11, (2, 6), generator=g)


def _grads(net, loss):
    loss.backward()
    out = {n: p.grad.clone() for n, p in net.named_parameters()}
    net.zero_grad(set_to_none=True)
    return out


def test_net_compiles_with_zero_graph_breaks_and_matches_eager_gradients():
    import torch._dynamo

    torch._dynamo.reset()
    net, idx = _net()
    explanation = torch._dynamo.explain(net.loss)(idx)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    eager = _grads(net, net.loss(idx))
    compiled = torch.compile(net.loss, backend="aot_eager", fullgraph=True)
    got = _grads(net, compiled(idx))
    for name in eager:
        torch.testing.assert_close(got[name], eager[name], msg=name)


def _compiled_saved(layer: nn.Module, x: torch.Tensor) -> list[tuple[tuple[int, ...], torch.dtype]]:
    """Shapes and dtypes of what a compiled forward + loss keeps for backward (not parameters)."""
    import torch._dynamo

    torch._dynamo.reset()
    fn = torch.compile(lambda x: layer(x).square().sum(), backend="aot_eager", fullgraph=True)
    fn(x).backward()
    params = {p.untyped_storage().data_ptr() for p in layer.parameters()}
    seen: dict[int, tuple[tuple[int, ...], torch.dtype]] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.untyped_storage().data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = (tuple(t.shape), t.dtype)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn(x)
    return sorted(seen.values())


@pytest.mark.parametrize("kind", list(LAYERS))
@pytest.mark.parametrize("spec", ["src", "r"])
def test_compiled_layer_keeps_what_the_compiled_plain_layer_keeps(kind, spec):
    """Under torch.compile the backward's rebuild of W_eff must not be merged with the forward's
    (AOTAutograd CSE), which would keep a weight-sized W_eff alive for backward."""
    layer, x = _multiplied(kind, spec)
    plain = LAYERS[kind][0]().to(torch.float64)
    if x.is_floating_point():
        x.requires_grad_()
    fused_saved, plain_saved = _compiled_saved(layer, x), _compiled_saved(plain, x)
    assert fused_saved == plain_saved


def test_activation_checkpointing_gives_the_same_gradients():
    net, idx = _net()
    plain = _grads(net, net.loss(idx))
    ckpt = _grads(net, net.loss(idx, ckpt=True))
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=0, atol=0, msg=name)


def test_deepcopy_keeps_the_fused_forward_and_fold_is_exact():
    net, idx = _net()
    clone = copy.deepcopy(net)
    assert type(clone.conv) is type(net.conv) and type(clone.hf) is type(net.hf)
    torch.testing.assert_close(_grads(clone, clone.loss(idx)), _grads(net, net.loss(idx)), rtol=0, atol=0)
    with torch.no_grad():
        expected = net(idx)
    P.fold(clone)
    assert type(clone.conv) is nn.Conv1d and type(clone.hf) is Conv1D
    with torch.no_grad():
        torch.testing.assert_close(clone(idx), expected, rtol=1e-6, atol=1e-6)


# --------------------------------------------------------------------------- muP fixed factor


@pytest.mark.parametrize("spec", ["", "c", "r", "s", "rc", "src"])
@pytest.mark.parametrize("compute", ["activation", "weight", "auto"])
def test_fixed_factor_applies_with_every_placement_and_side(spec, compute):
    """The head's muP factor must reach the logits on the activation side too, also with no s or r."""
    torch.manual_seed(0)
    layer = nn.Linear(16, 8, bias=True)
    plain = copy.deepcopy(layer)
    from parametrization.multipliers import Placement, attach
    from parametrization.roles import WeightLayout

    attach(layer, Placement.parse(spec), WeightLayout(), fixed=0.25, compute=compute)
    for tokens in (1, 64):  # "auto" takes the activation side for 1 token, the weight side for 64
        x = torch.randn(tokens, 16)
        expected = F.linear(x, 0.25 * plain.weight, plain.bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("present", ["", "s", "r", "c", "sc", "rc"])
def test_activation_side_formula_keeps_the_fixed_factor_without_s_or_r(present):
    g = torch.Generator().manual_seed(0)
    x, w, b = torch.randn(3, 4, generator=g), torch.randn(5, 4, generator=g), torch.randn(5, generator=g)
    s = torch.rand(1, generator=g) + 0.5 if "s" in present else None
    r = torch.rand(5, generator=g) + 0.5 if "r" in present else None
    c = torch.rand(4, generator=g) + 0.5 if "c" in present else None
    torch.testing.assert_close(
        linear_activation_side(x, w, b, s, r, c, fixed=0.25), F.linear(x, effective_weight(w, s, r, c, fixed=0.25), b)
    )


def test_mup_head_logits_carry_the_factor_for_short_and_long_inputs():
    from tests.parametrization._models import TinyLM

    torch.manual_seed(0)
    base, wide = TinyLM(d=8), TinyLM(d=32)
    plain = copy.deepcopy(wide)
    P.parametrize(wide, "vector", base_width=base)
    assert not hasattr(wide.lm_head, "weight_mult_row")  # the head has only the fixed factor
    for length in (1, 40):  # one token takes the activation side under "auto"
        idx = torch.randint(0, 32, (1, length))
        h = plain.norm(wide.norm.forward(_hidden(wide, idx)))
        torch.testing.assert_close(wide.lm_head(h), plain.lm_head(h) * 0.25, rtol=1e-5, atol=1e-6)


def _hidden(model, idx):
    x = model.wte(idx)
    for block in model.blocks:
        x = block(x)
    return x


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("kind", ["linear", "hf_conv1d", "conv1d", "embedding_padding_idx"])
def test_wrong_multiplier_shape_dtype_or_device_raises_at_forward(kind):
    layer, x = _multiplied(kind, dtype=torch.float32)
    m = layer.weight_mult_row.shape[0]
    cases = [
        ("weight_mult_row", torch.ones(1), ValueError, "shape (1,)"),  # would broadcast silently
        ("weight_mult_col", torch.ones(layer.weight_mult_col.shape[0] + 1), ValueError, "needs"),
        ("weight_mult_row", torch.ones(m, dtype=torch.float64), TypeError, "torch.float64"),
        ("weight_mult_scalar", torch.ones(1, device="meta"), ValueError, "meta"),
    ]
    for name, bad, error, text in cases:
        broken = copy.deepcopy(layer)
        setattr(broken, name, nn.Parameter(bad))
        with pytest.raises(error, match=rf"{name.split('_')[-1]} multiplier.*{text}".replace("(", r"\(").replace(")", r"\)")):
            broken(x)


def test_wrong_multiplier_on_a_weight_read_through_the_property_raises():
    layer = nn.Bilinear(3, 3, 4)  # no fused forward: reads self.weight
    from parametrization.multipliers import Placement, attach
    from parametrization.roles import WeightLayout

    attach(layer, Placement.parse("r"), WeightLayout(1, 2, batch_dim=0))
    layer(torch.randn(2, 3), torch.randn(2, 3))
    layer.weight_mult_row = nn.Parameter(torch.ones(4, 1))
    with pytest.raises(ValueError, match=r"Bilinear.weight: the row multiplier r has shape \(4, 1\)"):
        layer(torch.randn(2, 3), torch.randn(2, 3))


def test_set_compute_sides_agree_for_linear_and_embedding():
    for kind in ("linear", "embedding_padding_idx"):
        layer, x = _multiplied(kind)
        outs = []
        for compute in ("weight", "activation"):
            set_compute(layer, compute)
            outs.append(layer(x))
        torch.testing.assert_close(outs[0], outs[1])
