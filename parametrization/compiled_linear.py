"""Opt-in C++ build of the multiplied ``nn.Linear``'s eager path.

The fused multiplier ops (:mod:`parametrization.multiplied_ops`) are Python
``torch.autograd.Function``\\ s. On small layers their per-call Python cost is larger than that of
the plain-autograd weight side they replace (the README's "Multiplier overhead"). The same Linear
op written as a C++ ``torch::autograd::Function`` (``csrc/multiplied_linear.cpp``) runs its
backward without the interpreter; its outputs and gradients are bitwise those of the Python op.

:func:`use_compiled_linear` builds it with ``torch.utils.cpp_extension.load`` (a C++ compiler and
``ninja`` are needed; the first build takes about 45 s on 2 cores and torch caches it under
``~/.cache/torch_extensions``) and switches every eager multiplied Linear to it. Off by default:
nothing is compiled unless asked. Calls the C++ op cannot serve keep the Python op: no gradient
needed, autocast on, the activation side, ``torch.compile`` tracing, functorch transforms, and
tensor subclasses such as ``DTensor``.
"""

from __future__ import annotations

import os
import shutil
import sys
from typing import Any, Callable

__all__ = ["use_compiled_linear", "compiled_linear_enabled"]

_SOURCE = os.path.join(os.path.dirname(__file__), "csrc", "multiplied_linear.cpp")
_module: Any = None


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


def _build() -> Any:
    global _module
    if _module is None:
        from torch.utils.cpp_extension import load

        _put_ninja_on_path()
        try:
            _module = load("lrm_multiplied_linear", [_SOURCE], extra_cflags=["-O2"], verbose=False)
        except Exception as err:  # compiler or ninja missing, or a build error: say which, keep nothing half-set
            raise RuntimeError(
                f"use_compiled_linear: building {_SOURCE} with torch.utils.cpp_extension failed ({type(err).__name__}: "
                f"{err}). It needs a C++ compiler and ninja (pip install ninja); the Python op stays in use."
            ) from err
    return _module


def use_compiled_linear(enabled: bool = True) -> bool:
    """Route every eager multiplied ``nn.Linear`` / ``Conv1D`` through the C++ op (``enabled=True``,
    building it on first use) or back to the Python op (``False``). Returns the previous setting.

    Raises ``RuntimeError`` (and changes nothing) when the build fails.
    """
    from . import multiplied_ops

    previous = multiplied_ops._compiled_linear is not None
    multiplied_ops._compiled_linear = _build().multiplied_linear if enabled else None
    return previous


def compiled_linear_enabled() -> bool:
    """True while :func:`use_compiled_linear` has the C++ op in use."""
    from . import multiplied_ops

    return multiplied_ops._compiled_linear is not None


def _op() -> Callable[..., Any]:
    """The built C++ op itself (tests and benchmarks)."""
    return _build().multiplied_linear
