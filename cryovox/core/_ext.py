"""Loader for the compiled slicing kernels (``cryovox._C``, built from ``csrc/`` by setup.py).

The extension registers ``torch.ops.cryovox.{project, project_backward, backproject}`` with CPU
kernels and, where built with CUDA, CUDA kernels. This module adds the autograd formula of
``project`` (its backward is the ``project_backward`` op) and thin wrappers. :func:`ops` says
whether the kernels serve a device; if not, :mod:`cryovox.core.slicing` falls back to the
pure-PyTorch reference, announced with one warning per process and reason.
``CRYOVOX_NO_EXT=1`` forces the reference.
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
        _state["cuda"] = torch._C._dispatch_has_kernel_for_dispatch_key("cryovox::project", "CUDA")
        torch.library.register_autograd("cryovox::project", _project_backward, setup_context=_project_setup)
    return _state


def _project_setup(ctx, inputs, output) -> None:
    basis, coeffs, bias, rot, radius, pad = inputs
    ctx.save_for_backward(basis, coeffs, bias, rot)
    ctx.radius, ctx.pad = radius, pad


def _project_backward(ctx, grad):
    basis, coeffs, bias, rot = ctx.saved_tensors
    needs = [bool(n) for n in ctx.needs_input_grad[:4]]
    g_basis, g_coeffs, g_bias, g_rot = torch.ops.cryovox.project_backward(
        grad, basis, coeffs, bias, rot, ctx.radius, ctx.pad, needs)
    return (g_basis if needs[0] else None, g_coeffs if needs[1] else None,
            g_bias if needs[2] else None, g_rot if needs[3] else None, None, None)


def project(basis, coeffs, bias, rot, radius: float, pad: int):
    """``torch.ops.cryovox.project`` (arguments checked by :func:`cryovox.core.slicing.project`)."""
    _load()
    return torch.ops.cryovox.project(basis, coeffs, bias, rot, float(radius), int(pad))


def backproject(images, rot, weights, radius: float, pad: int):
    """``torch.ops.cryovox.backproject`` → ``(data, weight)`` (not differentiable)."""
    _load()
    data, weight = torch.ops.cryovox.backproject(images, rot, weights, float(radius), int(pad))
    return data, weight


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
