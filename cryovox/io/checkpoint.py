"""Checkpoints: atomic writes, safe loads (``weights_only=True``), exact resume.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts, with
``kind`` (which model wrote it) and ``format`` keys. RNG states are stored so that
``--resume`` continues bit-for-bit: torch's CPU (and CUDA) generator states as tensors,
NumPy's and Python's as plain lists.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from cryovox.errors import InputError
from cryovox.utils.files import write_atomic

FORMAT = 1


def rng_state() -> dict[str, Any]:
    import numpy as np
    import torch

    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [str(kind), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss), float(cached)],
        "python": [list(x) if isinstance(x, tuple) else x for x in random.getstate()],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: Path, state: dict[str, Any], *, kind: str) -> Path:
    """Write ``state`` (plus ``kind`` and ``format``) atomically with ``torch.save``."""
    import torch

    payload = dict(state, kind=kind, format=FORMAT)
    return write_atomic(Path(path), lambda tmp: torch.save(payload, tmp))


def load_checkpoint(path: Path, *, kind: str | None = None, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely; ``kind`` checks which model wrote it (InputError otherwise)."""
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"{path}: not a readable cryovox checkpoint ({first})") from err
    if not isinstance(state, dict) or "kind" not in state:
        raise InputError(f"{path}: not a cryovox checkpoint")
    if kind is not None and state["kind"] != kind:
        raise InputError(f"{path}: checkpoint of a {state['kind']} model; a {kind} model is needed")
    return state


def latest_checkpoint(outdir: Path, stem: str = "weights") -> Path | None:
    """The ``{stem}.N.pt`` in ``outdir`` with the highest N, or None."""
    best, best_n = None, -1
    for p in Path(outdir).glob(f"{stem}.*.pt"):
        m = re.fullmatch(rf"{re.escape(stem)}\.(\d+)\.pt", p.name)
        if m and int(m.group(1)) > best_n:
            best, best_n = p, int(m.group(1))
    return best
