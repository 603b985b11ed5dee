"""Loader for the compiled slicing kernels (``cryovox._C``, optional ``cryovox._C_cuda``).

The extension registers ``torch.ops.cryovox.*`` (see ``csrc/``). :func:`ops` returns that
namespace when the kernels can serve a tensor's device, else ``None`` so that
:mod:`cryovox.core.slicing` falls back to the pure-PyTorch reference; the fallback is
announced with one warning per process and reason. ``CRYOVOX_NO_EXT=1`` forces the reference.
"""

from __future__ import annotations

import importlib
import os
import warnings

import torch

_state: dict = {}
_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _load() -> dict:
    if _state:
        return _state
    _state["cpu"] = False
    _state["cuda"] = False
    _state["error"] = None
    if os.environ.get("CRYOVOX_NO_EXT", "") not in ("", "0"):
        _state["error"] = "disabled by CRYOVOX_NO_EXT"
        return _state
    try:
        importlib.import_module("cryovox._C")
        _state["cpu"] = hasattr(torch.ops.cryovox, "project")
    except (ImportError, OSError, RuntimeError) as exc:  # not built, or built against another torch
        _state["error"] = f"{type(exc).__name__}: {exc}"
    if _state["cpu"]:
        try:
            importlib.import_module("cryovox._C_cuda")
            _state["cuda"] = True
        except (ImportError, OSError, RuntimeError):
            _state["cuda"] = False
    return _state


def available(device: torch.device | str = "cpu") -> bool:
    """Whether compiled kernels serve tensors on ``device`` (no warning)."""
    st = _load()
    kind = torch.device(device).type
    return bool(st["cpu"]) if kind == "cpu" else bool(st["cuda"]) if kind == "cuda" else False


def ops(device: torch.device | str):
    """``torch.ops.cryovox`` if the kernels serve ``device``, else ``None`` (warns once)."""
    kind = torch.device(device).type
    if available(device):
        return torch.ops.cryovox
    st = _load()
    if not st["cpu"]:
        _warn_once("missing", "cryovox: compiled slicing kernels unavailable "
                   f"({st['error']}); using the slower pure-PyTorch reference. "
                   "Rebuild with `pip install --no-build-isolation -e .`.")
    else:
        _warn_once(f"device-{kind}", f"cryovox: no compiled slicing kernels for {kind} tensors; "
                   "using the pure-PyTorch reference.")
    return None
