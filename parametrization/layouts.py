"""Built-in layouts and roles for known model families, and the paper's symmetry-free placement.

Role detection (:mod:`parametrization.roles`) knows ``nn.Linear``, convolutions, embeddings and
Hugging Face ``Conv1D`` by type. The families below store weights as raw ``nn.Parameter`` tensors
of their own module classes; this module teaches detection what they are, by structural rules
(Hugging Face has one experts class and one router class per MoE model, too many to list) plus
a few registered types. :func:`~parametrization.roles.register_layout` and
:func:`~parametrization.roles.register_role` stay the way to add others.

==============================================  ==========  =============================================
parameter                                       role        reason
==============================================  ==========  =============================================
fused experts ``gate_up_proj``, ``up_proj``,    matrix,     each expert is its own linear map:
``gate_proj``, ``down_proj`` (3-D, in a module  batch 0     ``r: [E, out]``, ``c: [E, in]``, Muon per
carrying HF's ``is_transposed`` flag)                       expert. ``is_transposed=False`` stores
                                                            ``[E, out, in]`` (Mixtral, Qwen-MoE, DeepSeek,
                                                            OLMoE), ``True`` ``[E, in, out]`` (GPT-OSS,
                                                            Aria)
MoE router ``weight`` (2-D, module class name   matrix      a Linear ``[E, hidden]`` read by
containing ``Router``)                                      ``F.linear``; Muon on routers is what
                                                            Moonlight trained its MoE with (Liu et al.
                                                            2025, every ≥2-D weight but embedding and
                                                            head); its multipliers start at 1 and give
                                                            each expert a learnable logit temperature
``*bias`` of any shape (expert biases           vector      a bias, per output; decay only shrinks it
``[E, out]``, ``e_score_correction_bias``)
depthwise conv kernel ``[C, 1, *k]``            vector      ``C`` independent k-tap filters, no mixing
(``groups == in_channels > 1``; Mamba's                     between channels: a per-channel gain, not
``conv1d``)                                                 a matrix (paper App. C: "conv1d is already
                                                            a per-channel scale"); AdamW, no decay
SSM ``A_log``, ``D``, ``dt_bias`` (module also  vector      per-channel decay rates, skip gains and time
holding ``A_log``), and anything marked                     step biases; mamba-ssm marks them
``p._no_weight_decay = True``                               ``_no_weight_decay`` for this reason
ViT/DeiT-style bare tokens and tables           embedding   learned rows added to or concatenated with
(``cls_token``, ``distillation_token``,                     the input sequence, like an embedding
``mask_token``, ``register_tokens``,                        table's rows: AdamW with the global decay,
``position_embeddings``, ``pos_embed``, ...)                no multipliers
a raw tensor with one non-singleton axis        vector      a per-channel vector in disguise (RWKV's
(``[1, 1, d]``)                                             ``time_mix_*``)
``nn.MultiheadAttention.in_proj_weight``        matrix      the fused q/k/v Linear ``[3d, d]``
``JetMoeParallelExperts.weight``                matrix,     ``[E, out, in]`` read by ``F.linear``
                                                batch 0
Llama-4 ``Llama4TextExperts``                   matrix,     ``[E, in, out]`` read by ``torch.bmm``
                                                batch 0     (not decorated with ``is_transposed``)
RecurrentGemma ``*_gate_weight``                matrix,     per-head block-diagonal gates
                                                batch 0     ``[H, in, out]`` read by ``baddbmm``
Zamba ``x_proj_weight``, ``dt_proj_weight``     matrix,     per-head projections ``[H, out, in]``
                                                batch 0     read by ``W[:, None] @ h``
==============================================  ==========  =============================================

A fused experts tensor in a module *without* the ``is_transposed`` flag is not guessed from its
shape (a square ``[E, 2·inter, hidden]`` with ``2·inter == hidden`` reads both ways): detection
raises and names ``register_layout(..., batch_dim=0)`` as the fix.
"""

from __future__ import annotations

import torch.nn as nn
from torch import Tensor

from .roles import _LAYOUT_RULES, _ROLE_RULES, Role, WeightLayout, register_layout, weight_layout

__all__ = ["EXPERT_PARAMS", "TOKEN_PARAMS", "SSM_VECTOR_PARAMS", "symmetry_free"]

EXPERT_PARAMS = ("gate_up_proj", "up_proj", "gate_proj", "down_proj")
"""Names of Hugging Face's fused expert tensors ``[E, ·, ·]``."""

TOKEN_PARAMS = (
    "cls_token",
    "class_token",
    "distillation_token",
    "dist_token",
    "mask_token",
    "register_tokens",
    "position_embeddings",
    "position_embedding",
    "pos_embed",
    "pos_embedding",
    "probe",
)
"""Names of bare learned tokens and position tables (ViT, DeiT, SigLIP, ...): role ``embedding``."""

SSM_VECTOR_PARAMS = ("A_log", "D", "dt_bias")
"""Per-channel SSM parameters of Mamba-style mixers: role ``vector``."""

_OUT_IN = WeightLayout(row_dim=1, col_dim=2, batch_dim=0)  # [E, out, in]
_IN_OUT = WeightLayout(row_dim=2, col_dim=1, batch_dim=0)  # [E, in, out]


def _fused_experts_layout(module: nn.Module, param: str, p: Tensor) -> WeightLayout | None:
    """HF fused experts: ``is_transposed`` (set by ``use_experts_implementation``) says the order."""
    if param not in EXPERT_PARAMS or p.ndim != 3:
        return None
    flag = module.__dict__.get("is_transposed")
    if not isinstance(flag, bool):
        return None
    return _IN_OUT if flag else _OUT_IN


def _router_layout(module: nn.Module, param: str, p: Tensor) -> WeightLayout | None:
    if param == "weight" and p.ndim == 2 and "router" in type(module).__name__.lower():
        return WeightLayout(0, 1)
    return None


def _is_depthwise(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.conv._ConvNd) and module.groups > 1 and module.groups == module.in_channels


def _family_role(module: nn.Module, param: str, p: Tensor) -> Role | None:
    if param == "weight" and _is_depthwise(module):
        return Role.VECTOR
    if p.ndim <= 1 or weight_layout(module, param) is not None:
        return None  # ≤1-D is vector anyway; a parameter with a known layout is a matrix
    if param.endswith("bias"):
        return Role.VECTOR
    if param in SSM_VECTOR_PARAMS and "A_log" in module._parameters:
        return Role.VECTOR
    if param in TOKEN_PARAMS:
        return Role.EMBEDDING
    if sum(d != 1 for d in p.shape) <= 1:
        return Role.VECTOR
    return None


_LAYOUT_RULES.extend([_fused_experts_layout, _router_layout])
_ROLE_RULES.append(_family_role)

register_layout(nn.MultiheadAttention, param="in_proj_weight", row_dim=0, col_dim=1)
register_layout("transformers.models.jetmoe.modeling_jetmoe.JetMoeParallelExperts", row_dim=1, col_dim=2, batch_dim=0)
for _p in ("gate_up_proj", "down_proj"):
    register_layout("transformers.models.llama4.modeling_llama4.Llama4TextExperts", param=_p, row_dim=2, col_dim=1, batch_dim=0)
for _p in ("x_proj_weight", "dt_proj_weight"):
    register_layout("transformers.models.zamba.modeling_zamba.ZambaMambaMixer", param=_p, row_dim=1, col_dim=2, batch_dim=0)
for _p in ("input_gate_weight", "recurrent_gate_weight"):
    register_layout(
        "transformers.models.recurrent_gemma.modeling_recurrent_gemma.RecurrentGemmaRglru", param=_p, row_dim=2, col_dim=1, batch_dim=0
    )


# --------------------------------------------------------------------------- placement preset

# Leaf module names, per the paper's App. C symmetry-free placement (see symmetry_free()).
_ROW_ONLY = ("q_proj", "gate_proj", "w1")
_ROW_COL = ("o_proj", "down_proj", "w2")


def symmetry_free(model: nn.Module) -> dict[str, str]:
    """The paper's symmetry-free placement (App. C) as a ``multipliers=`` dict for ``model``.

    Returns ``{module or weight FQN: letters}`` for :func:`parametrization.parametrize`::

        mp = P.parametrize(model, multipliers=P.layouts.symmetry_free(model))

    Per block, with pre-norm weights present (they already are the column multipliers of the
    first matrices):

    * attention: ``W_Q`` row, ``W_O`` row + column, ``W_K``, ``W_V`` none (Q rather than K and
      col(``W_O``) rather than row(``W_V``): per-head scales survive GQA);
    * gated MLP: ``W_gate`` row, ``W_down`` row + column, ``W_up`` none. Fused experts
      (``gate_up_proj``, ``[gate; up]`` rows) get row and ``down_proj`` row only: row(``W_up``)
      and col(``W_down``) are the same degree of freedom, so keeping the first is as
      expressive and still free of that symmetry;
    * Mamba2 mixer: the fused ``in_proj`` (``[z, x, B, C, dt]`` rows) row, ``out_proj`` row, plus
      column when the mixer has no internal RMSNorm (Falcon-H1 with ``mamba_rms_norm=False``).
      The paper puts no multiplier on ``W_X``, ``W_B``, ``W_C`` (the depthwise conv already
      scales those channels); on a fused ``in_proj`` their rows come with ``z`` and ``dt``'s,
      a redundancy the multipliers' small weight decay keeps from drifting;
    * embedding: row + column (removing them hurt, §5); head: none.

    Matrices not named above get no multipliers. Names follow Hugging Face (Llama, Mistral,
    Qwen, Mixtral, Mamba2, Falcon-H1) and the reference GPT.
    """
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    head_weight = head._parameters.get("weight") if isinstance(head, nn.Module) else None
    out: dict[str, str] = {}
    for name, module in model.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if module is head:
            continue
        if "A_log" in module._parameters:  # an SSM mixer
            norm = getattr(module, "norm", None)
            has_norm = isinstance(norm, nn.Module) and any(True for _ in norm.parameters())
            for sub in ("in_proj", "out_proj"):
                if isinstance(getattr(module, sub, None), nn.Module):
                    out[f"{name}.{sub}"] = "r" if sub == "in_proj" or has_norm else "rc"
        elif "gate_up_proj" in module._parameters and "down_proj" in module._parameters:
            out[f"{name}.gate_up_proj"] = "r"
            out[f"{name}.down_proj"] = "r"
        elif isinstance(module, (nn.Embedding, nn.EmbeddingBag)):
            if module._parameters.get("weight") is not head_weight:  # a tied table is the head
                out[name] = "rc"
        elif leaf in _ROW_ONLY:
            out[name] = "r"
        elif leaf in _ROW_COL:
            out[name] = "rc"
    return out
