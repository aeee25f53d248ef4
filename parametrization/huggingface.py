"""The Hugging Face ``Trainer`` with learnable multipliers: clipping, optimizer, checkpoints.

Import it explicitly (``import parametrization`` does not, so the package keeps working without
``transformers``)::

    from parametrization.huggingface import ClipGradNormCallback, save_folded, load_unfolded

What the ``Trainer`` gets wrong on a parametrized model, and what this module does instead:

* **Clipping.** With ``TrainingArguments(max_grad_norm > 0)`` (default 1.0) the ``Trainer``
  clips over *all* parameters, multipliers included; the paper keeps multipliers out of the
  global norm (§4.3: their early large gradients would throttle every other parameter).
  :class:`ClipGradNormCallback` clips with ``mp.clip_grad_norm_`` right before each optimizer
  step and refuses to run while the ``Trainer`` would clip as well.
* **Optimizer.** Hand the ``Trainer`` a ready optimizer built from ``mp.param_groups(...)``:
  ``Trainer(..., optimizers=(Muon(mp.param_groups(...)), None))``; the ``Trainer`` then builds
  its lr schedule on top of it, scaling every group's own lr.
* **Checkpoints.** A ``Trainer`` checkpoint of a parametrized model holds the raw ``W`` and the
  multipliers. Reloaded into the plain class with ``from_pretrained``, the multipliers are
  "unexpected keys" and are dropped, leaving the raw ``W`` (a different model).
  :func:`save_folded` writes the plain, folded model (``from_pretrained`` loads it exactly)
  without touching the training model; :func:`load_unfolded` (or
  ``trainer.train(resume_from_checkpoint=...)`` on a model parametrized the same way) resumes
  an unfolded checkpoint with its multipliers. For models that transformers saves under legacy
  keys (Mixtral's experts), the ``Trainer``'s resume skips those tensors (plain models too):
  call :func:`load_unfolded` first, then ``train(resume_from_checkpoint=...)``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as e:  # transformers is an optional dependency of this module only
    raise ImportError(
        "parametrization.huggingface needs transformers (and accelerate for the Trainer): "
        "pip install transformers accelerate"
    ) from e

from .fold import check_foldable
from .multipliers import multiplied_fqn, multiplied_params
from .parametrize import Parametrization
from .roles import Role

__all__ = ["ClipGradNormCallback", "folded_state_dict", "save_folded", "load_unfolded"]

_SAFE_WEIGHTS, _SAFE_INDEX = "model.safetensors", "model.safetensors.index.json"


class ClipGradNormCallback(TrainerCallback):
    """Take over the ``Trainer``'s gradient clipping: ``mp.clip_grad_norm_`` before every step.

    The multipliers' gradients are neither counted in the global norm nor rescaled; every other
    gradient is rescaled by ``min(1, max_norm / (norm + 1e-6))``, exactly as
    :meth:`Parametrization.clip_grad_norm_` does outside the ``Trainer``. Runs on the
    ``on_pre_optimizer_step`` event, i.e. once per optimizer step, after gradient accumulation.
    With fp16 mixed precision (a ``GradScaler`` on the ``Trainer``'s optimizer) the gradients are
    unscaled first, as the ``Trainer`` does before its own clipping.

    Use with ``TrainingArguments(max_grad_norm=0)``: otherwise the ``Trainer`` has already clipped
    over all parameters, multipliers included, before this callback runs. The callback raises
    ``ValueError`` at ``Trainer(...)`` construction and at ``train()`` if ``max_grad_norm > 0``.
    The ``grad_norm`` the ``Trainer`` logs is then its own unclipped norm over all parameters;
    the norm used here (multipliers left out, before clipping) is :attr:`last_norm`.

    Args:
        mp: the handle returned by ``parametrization.parametrize`` for the model the ``Trainer``
            trains.
        max_norm: the clipping threshold (default 1.0). Must be > 0.
        norm_type: the norm's order (default 2.0).

    Attributes:
        last_norm: the total norm of the non-multiplier gradients at the last step, before
            clipping (``None`` before the first step).
    """

    def __init__(self, mp: Parametrization, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        if not isinstance(mp, Parametrization):
            raise TypeError(
                f"mp must be the Parametrization returned by parametrization.parametrize(model), got {type(mp).__name__}"
            )
        if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float)) or not max_norm > 0:
            raise ValueError(f"max_norm must be a positive number, got {max_norm!r}")
        self.mp = mp
        self.max_norm = float(max_norm)
        self.norm_type = float(norm_type)
        self.last_norm: Tensor | None = None

    def _check(self, args: TrainingArguments, model: nn.Module | None) -> None:
        if args.max_grad_norm is not None and args.max_grad_norm > 0:
            raise ValueError(
                f"TrainingArguments(max_grad_norm={args.max_grad_norm!r}) makes the Trainer clip over all "
                "parameters, multipliers included, before ClipGradNormCallback runs; write "
                f"TrainingArguments(max_grad_norm=0, ...) and ClipGradNormCallback(mp, max_norm={args.max_grad_norm!r})"
            )
        if getattr(args, "deepspeed", None):
            raise ValueError(
                "ClipGradNormCallback does not work under DeepSpeed, which clips inside its engine "
                "(over all parameters); train without deepspeed= or leave clipping to DeepSpeed"
            )
        if model is not None and model is not self.mp.model:
            ours = {id(p) for p in self.mp.model.parameters()}
            if ours != {id(p) for p in model.parameters()}:
                raise ValueError(
                    f"the Trainer trains a {type(model).__name__} that is not the model mp parametrized "
                    f"({type(self.mp.model).__name__}); pass the parametrized model itself as Trainer(model=...) "
                    "(model_init=, which builds a new model, is not supported)"
                )

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._check(args, kwargs.get("model"))

    def on_train_begin(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        self._check(args, kwargs.get("model"))

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        _unscale_fp16_gradients(kwargs.get("optimizer"))
        self.last_norm = self.mp.clip_grad_norm_(self.max_norm, self.norm_type)


def _unscale_fp16_gradients(optimizer: Any) -> None:
    """Unscale the gradients in place if an fp16 ``GradScaler`` scales them (accelerate's wrapper).

    ``GradScaler.unscale_`` records the optimizer as unscaled, so the wrapper's ``step`` does not
    unscale again (the same sequence as ``Accelerator.clip_grad_norm_``).
    """
    scaler = getattr(optimizer, "scaler", None)
    if scaler is None or not scaler.is_enabled():
        return
    inner = optimizer
    while hasattr(inner, "scaler") and hasattr(inner, "optimizer"):
        inner = inner.optimizer
    scaler.unscale_(inner)


# --------------------------------------------------------------------------- checkpoints


def folded_state_dict(mp: Parametrization, *, device: torch.device | str | None = "cpu") -> dict[str, Tensor]:
    """The plain model's ``state_dict`` with the multipliers folded in; the model is not changed.

    Every multiplied weight ``W`` is replaced by ``W_eff = f·s·diag(r)·W·diag(c)`` (what
    ``mp.fold()`` would write into it) and the multiplier entries are dropped, so the keys and
    shapes are exactly those of the un-parametrized model. Tensors are detached and moved to
    ``device`` one at a time (default ``"cpu"``: no second copy of the model on the accelerator;
    ``None`` keeps each tensor where it is). Tied weights stay one shared tensor.

    Raises:
        ValueError: ``mp`` is already folded, a multiplied weight is tied to another module
            (as ``mp.fold()`` raises), or sharded (FSDP2 DTensor; gather the full model first,
            e.g. with ``torch.distributed.checkpoint``).
    """
    if mp.folded:
        raise ValueError("mp is already folded: its model is the plain model; use mp.model.state_dict()")
    model = mp.model
    modules = dict(model.named_modules())
    multiplier_keys = {fqn for fqn, role in mp.roles.items() if role == Role.MULTIPLIER.value}
    folded: dict[str, Tensor] = {}  # FQN of a multiplied parameter → W_eff
    # Every parameter fold() would change, a muP head's fixed output factor without learnable
    # multipliers included; check_foldable raises on a tied multiplied weight, as fold() does.
    for module_name in check_foldable(model):
        module = modules[module_name]
        for param in multiplied_params(module):
            fqn = f"{module_name}.{param}" if module_name else param
            if _is_dtensor(module._parameters[param]):
                raise ValueError(
                    f"{fqn!r} is a sharded DTensor (FSDP2): folded_state_dict needs the full weight; "
                    "save with torch.distributed.checkpoint and fold the gathered model in one process"
                )
            with torch.no_grad():
                folded[fqn] = getattr(module, param).detach()  # reading the attribute gives W_eff
    out: dict[str, Tensor] = {}
    moved: dict[tuple[int, int, tuple[int, ...]], Tensor] = {}  # tied entries stay one tensor after the move
    for key, value in model.state_dict().items():
        if key in multiplier_keys:
            continue
        tensor = folded.get(key, value)
        where = _storage_key(tensor)
        if where not in moved:
            moved[where] = tensor if device is None else tensor.to(device)
        out[key] = moved[where]
    return out


def save_folded(mp: Parametrization, save_directory: str | os.PathLike[str], **save_pretrained_kwargs: Any) -> None:
    """``save_pretrained`` the folded, plain model without folding the training model.

    ``type(model).from_pretrained(save_directory)`` then loads into the plain class with no
    missing or unexpected keys and computes what the parametrized model computes (exactly what
    ``mp.fold()`` would give). The training model keeps its multipliers and goes on training.
    Extra keyword arguments go to ``save_pretrained`` (``state_dict`` is set here).
    """
    model = mp.model
    if not hasattr(model, "save_pretrained"):
        raise TypeError(
            f"save_folded needs a Hugging Face PreTrainedModel, got {type(model).__name__}; for any other "
            "module use torch.save(folded_state_dict(mp), path)"
        )
    if "state_dict" in save_pretrained_kwargs:
        raise TypeError("save_folded sets state_dict itself (the folded one); drop the state_dict= argument")
    model.save_pretrained(save_directory, state_dict=folded_state_dict(mp), **save_pretrained_kwargs)


def load_unfolded(mp: Parametrization, checkpoint_dir: str | os.PathLike[str]) -> Parametrization:
    """Load an unfolded checkpoint (``save_pretrained``/``Trainer`` of a parametrized model) into ``mp``.

    Build the plain model (from its config, or ``from_pretrained`` of the starting weights),
    parametrize it exactly as the run that saved the checkpoint did, then call this: every
    weight and multiplier is loaded. A plain checkpoint loads too (multipliers set to 1).
    ``model.safetensors`` or a sharded ``model.safetensors.index.json`` are read; keys the
    checkpoint drops because they are tied to another loaded key are not missing.

    transformers ≥ 5 saves some models under their legacy keys (e.g. Mixtral's fused experts as
    per-expert ``block_sparse_moe.experts.N.w1.weight``) and converts them back in
    ``from_pretrained``. Such a checkpoint is read through ``type(model).from_pretrained`` (a
    second, temporary copy of the model in CPU memory) for the weights, and the multipliers are
    matched to the names ``save_pretrained`` gave them.

    Raises:
        ValueError: the checkpoint has keys the model lacks (typically multipliers where this
            model has none: parametrize with the same ``multipliers=``), lacks keys the model
            has, or holds a tensor of another shape; all checked before anything is loaded, so
            the model is then unchanged.
    """
    from safetensors import safe_open

    folder = os.fspath(checkpoint_dir)
    if os.path.isfile(os.path.join(folder, _SAFE_INDEX)):
        with open(os.path.join(folder, _SAFE_INDEX), encoding="utf-8") as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.isfile(os.path.join(folder, _SAFE_WEIGHTS)):
        files = [_SAFE_WEIGHTS]
    else:
        raise ValueError(f"checkpoint_dir={folder!r} has neither {_SAFE_WEIGHTS} nor {_SAFE_INDEX}")
    model = mp.model
    expected = model.state_dict()
    shapes: dict[str, tuple[int, ...]] = {}
    where: dict[str, str] = {}
    for name in files:
        with safe_open(os.path.join(folder, name), framework="pt") as f:
            for k in f.keys():
                shapes[k], where[k] = tuple(f.get_slice(k).get_shape()), name
    if set(shapes) <= set(expected):
        _load_same_keys(model, folder, files, expected, shapes)
    else:
        _load_converted(model, folder, expected, shapes, where)
    return mp


def _check_keys(folder: str, expected: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]) -> None:
    """Raise before anything is loaded if ``shapes`` (checkpoint key → shape) does not fit ``expected``."""
    unexpected = sorted(k for k in shapes if k not in expected)
    if unexpected:
        raise ValueError(
            f"checkpoint {folder!r} has keys the model lacks, e.g. {unexpected[:3]}; parametrize the model "
            "exactly as the run that saved it (same multipliers=, roles=) before load_unfolded"
        )
    missing = _missing_untied(expected, set(shapes))
    if missing:
        raise ValueError(
            f"checkpoint {folder!r} lacks {len(missing)} of the model's keys, e.g. {missing[:3]}; it was saved "
            "from a different model or parametrization"
        )
    wrong = [f"{k}: {s} vs {tuple(expected[k].shape)}" for k, s in sorted(shapes.items()) if s != tuple(expected[k].shape)]
    if wrong:
        raise ValueError(
            f"checkpoint {folder!r} has {len(wrong)} tensors whose shape differs from the model's "
            f"(checkpoint vs model), e.g. {wrong[:3]}; build the model from the checkpoint's config"
        )


def _load_same_keys(
    model: nn.Module, folder: str, files: list[str], expected: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]]
) -> None:
    from safetensors.torch import load_file

    _check_keys(folder, expected, shapes)
    done: set[str] = set()
    for name in files:  # one shard in memory at a time
        shard = load_file(os.path.join(folder, name))
        # A weight loaded without its multipliers sets them to 1 (plain-checkpoint semantics); keep
        # the multipliers an earlier shard already loaded.
        current = model.state_dict()
        shard.update({k: current[k] for k in done if k not in shard and multiplied_fqn(k) is not None})
        model.load_state_dict(shard, strict=False)
        done.update(shard)


def _load_converted(
    model: nn.Module, folder: str, expected: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], where: Mapping[str, str]
) -> None:
    """A checkpoint whose keys transformers renamed or split on save: weights via ``from_pretrained``."""
    from safetensors import safe_open
    from transformers.utils import logging as hf_logging

    if not hasattr(type(model), "from_pretrained"):
        _check_keys(folder, expected, shapes)  # raises: the keys differ and nothing can convert them
    mult_keys = [k for k in expected if multiplied_fqn(k) is not None]
    saved_as = _saved_names(model, mult_keys)  # model key → checkpoint key
    multipliers = {m: d for m, d in saved_as.items() if d in shapes}
    # Weights and everything else: transformers' own conversion, into a temporary plain model.
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report would list the multipliers as unexpected
    try:
        plain, info = type(model).from_pretrained(folder, config=model.config, output_loading_info=True)
    finally:
        hf_logging.set_verbosity(verbosity)
    # transformers reports them under the model's names or the checkpoint's, depending on its version
    unexpected = sorted(set(info["unexpected_keys"]) - set(multipliers) - set(multipliers.values()))
    if unexpected or info["missing_keys"] or info["mismatched_keys"]:
        raise ValueError(
            f"checkpoint {folder!r} does not fit {type(model).__name__}: unexpected {unexpected[:3]}, missing "
            f"{sorted(info['missing_keys'])[:3]}, other shape {list(info['mismatched_keys'])[:3]}; parametrize the "
            "model exactly as the run that saved it (same multipliers=, roles=) and build it from the same config"
        )
    weights = plain.state_dict()
    converted = {k: tuple(v.shape) for k, v in weights.items()}
    converted.update({m: shapes[d] for m, d in multipliers.items()})
    _check_keys(folder, expected, converted)
    model.load_state_dict(weights, strict=False)  # multipliers of these weights are set to 1 here
    del plain, weights
    loaded: dict[str, Tensor] = {}
    for m, d in multipliers.items():
        with safe_open(os.path.join(folder, where[d]), framework="pt") as f:
            loaded[m] = f.get_tensor(d)
    model.load_state_dict(loaded, strict=False)


def _saved_names(model: nn.Module, keys: list[str]) -> dict[str, str]:
    """Model key → the key ``save_pretrained`` writes it under (transformers ≥ 5 renames some)."""
    try:
        from transformers.core_model_loading import revert_weight_conversion
    except ImportError:  # transformers < 5: keys are saved as they are
        return {k: k for k in keys}
    probes = {k: torch.empty(0) for k in keys}  # distinct objects, followed through the renaming
    by_id = {id(t): k for k, t in probes.items()}
    reverted = revert_weight_conversion(model, dict(probes))
    return {by_id[id(t)]: saved for saved, t in reverted.items() if id(t) in by_id}


def _missing_untied(expected: Mapping[str, Tensor], loaded: set[str]) -> list[str]:
    """Keys not loaded and not sharing storage with a loaded key (tied weights are saved once)."""
    loaded_storage = {_storage_key(expected[k]) for k in loaded}
    # Multipliers of a weight loaded without them are set to 1 (a plain checkpoint), on purpose.
    multiplier_fill = {k for k in expected if multiplied_fqn(k) in loaded}
    return [
        k for k in expected
        if k not in loaded and k not in multiplier_fill and _storage_key(expected[k]) not in loaded_storage
    ]


def _storage_key(t: Tensor) -> tuple[int, int, tuple[int, ...]]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape))


def _is_dtensor(t: Tensor) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
