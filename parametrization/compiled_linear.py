"""The C++ build of the multiplied ``nn.Linear``'s eager path, on by default where it builds.

The fused multiplier ops (:mod:`parametrization.multiplied_ops`) are Python
``torch.autograd.Function``\\ s. On small layers their per-call Python cost is larger than that of
the plain-autograd weight side they replace (the README's "Multiplier overhead"). The same Linear
op written as a C++ ``torch::autograd::Function`` (``csrc/multiplied_linear.cpp``) runs its
backward without the interpreter and makes the module's per-call checks in C++; its outputs and
gradients are bitwise those of the Python op.

It is built with ``torch.utils.cpp_extension.load`` (a C++ compiler and ``ninja``, a dependency of
this package, are needed). Settings (:func:`use_compiled_linear`; the environment variable
``LRM_COMPILED_LINEAR=0``, read at import, starts from ``False``):

* ``"auto"`` (default): the first eager multiplied Linear call builds it (about 45 s on 2 cores,
  logged once; torch caches it under ``~/.cache/torch_extensions``, per torch version and installed
  copy of this package, so later processes load it in a fraction of a second). If the build fails,
  one ``RuntimeWarning`` says why and the Python op stays in use: same results, slower on small
  layers.
* ``True``: build now; a failed build raises ``RuntimeError`` and changes nothing.
* ``False``: the Python op everywhere; nothing is compiled.

Calls the C++ op cannot serve keep the Python op: the activation side, autocast on, multipliers
that do not fit the weight (the Python op raises the error naming the layer), ``torch.compile``
tracing, functorch transforms, and tensor subclasses such as ``DTensor``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import sys
import warnings
from typing import Any, Callable, Literal

import torch

__all__ = ["use_compiled_linear", "compiled_linear_enabled"]

Setting = bool | Literal["auto"]

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "multiplied_linear.cpp")
# One build per torch version (an extension built against another torch's ABI would not import) and
# per installed copy of this file (torch rebuilds when the same name's source path changes, so two
# checkouts on one machine would otherwise rebuild over each other on every switch).
_NAME = "lrm_multiplied_linear_{}_{}".format(re.sub(r"\W", "_", torch.__version__), hashlib.sha1(_SOURCE.encode()).hexdigest()[:8])
_ENV = "LRM_COMPILED_LINEAR"
_module: Any = None
_log = logging.getLogger(__name__)


def _put_ninja_on_path() -> None:
    """torch's builder runs ``ninja`` from ``PATH``; the ``ninja`` wheel installs it next to the
    interpreter of a virtual environment, which is not on ``PATH`` unless the environment is active."""
    if shutil.which("ninja") is not None:
        return
    for folder in (os.path.dirname(sys.executable), getattr(_import_ninja(), "BIN_DIR", None)):
        if folder and shutil.which("ninja", path=folder):
            os.environ["PATH"] = folder + os.pathsep + os.environ.get("PATH", "")
            return


def _import_ninja() -> Any:
    try:
        import ninja  # type: ignore[import-not-found]

        return ninja
    except ImportError:
        return None


def _announce_build() -> None:
    """Log once that a first build (about a minute) is starting, unless torch's cache holds one."""
    try:
        from torch.utils.cpp_extension import _get_build_directory  # private: only for this message

        folder = _get_build_directory(_NAME, verbose=False)
        if any(f.startswith(_NAME) and f.endswith((".so", ".pyd")) for f in os.listdir(folder)):
            return
    except Exception:  # the message is a courtesy; the build itself reports real failures
        folder = "torch's extension cache"
    _log.warning("parametrization: building the C++ multiplied Linear (once per torch version and installed copy; about a minute) in %s", folder)


def _build() -> Any:
    """The compiled module (built or loaded once per process); ``RuntimeError`` saying why if not."""
    global _module
    if _module is None:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        _announce_build()
        try:
            _module = load(_NAME, [_SOURCE], extra_cflags=["-O2"], verbose=False)
        except Exception as err:  # compiler or ninja missing, or a build error: say which, keep nothing half-set
            raise RuntimeError(
                f"building {_SOURCE} with torch.utils.cpp_extension failed ({type(err).__name__}: {err}). "
                "It needs a C++ compiler and ninja (pip install ninja)."
            ) from err
    return _module


def _resolve_auto() -> Callable[..., Any] | None:
    """Leave the ``"auto"`` setting: the built op, or ``None`` after one warning saying why not."""
    from . import multiplied_ops

    try:
        op = _build().multiplied_linear
    except RuntimeError as err:
        warnings.warn(
            f"parametrization: the C++ multiplied Linear is not available, so the Python op is used "
            f"(same results, slower on small layers): {err} "
            f"Silence with parametrization.use_compiled_linear(False) or {_ENV}=0.",
            RuntimeWarning,
            stacklevel=3,
        )
        op = None
    multiplied_ops._compiled_linear = op
    return op


def _build_on_first_call(*args: Any) -> Any:
    """The op slot's value under ``"auto"`` until its first call, which builds and then serves."""
    op = _resolve_auto()
    return None if op is None else op(*args)


def initial_op() -> Callable[..., Any] | None:
    """The op slot's value at import: ``None`` if ``LRM_COMPILED_LINEAR=0``, else ``"auto"``."""
    value = os.environ.get(_ENV, "auto").strip().lower()
    if value not in ("auto", "", "0"):
        raise ValueError(f"{_ENV}={value!r}: expected 'auto' (the default) or '0' (Python op only)")
    return None if value == "0" else _build_on_first_call


def use_compiled_linear(enabled: Setting = True) -> Setting:
    """Route eager multiplied ``nn.Linear`` / ``Conv1D`` calls through the C++ op (``True``: build it
    now), back to the Python op (``False``), or to the default ``"auto"`` (build on first use, fall
    back with a warning if that fails). Returns the previous setting, so it can be restored.

    ``True`` raises ``RuntimeError`` (and changes nothing) when the build fails.
    """
    from . import multiplied_ops

    if enabled is not True and enabled is not False and enabled != "auto":
        raise ValueError(f"use_compiled_linear: enabled must be True, False or 'auto', got {enabled!r}")
    current = multiplied_ops._compiled_linear
    previous: Setting = "auto" if current is _build_on_first_call else current is not None
    if enabled == "auto":
        multiplied_ops._compiled_linear = _module.multiplied_linear if _module is not None else _build_on_first_call
    else:
        multiplied_ops._compiled_linear = _build().multiplied_linear if enabled else None
    return previous


def compiled_linear_enabled() -> bool:
    """True when eager multiplied Linears run the C++ op (under ``"auto"``, this builds it first)."""
    from . import multiplied_ops

    if multiplied_ops._compiled_linear is _build_on_first_call:
        _resolve_auto()
    return multiplied_ops._compiled_linear is not None


def _op() -> Callable[..., Any]:
    """The built C++ op itself (tests and benchmarks)."""
    return _build().multiplied_linear
