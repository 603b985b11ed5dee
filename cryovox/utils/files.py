"""Atomic writes: outputs are never half-written."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable


def temp_name(path: Path) -> Path:
    """Hidden temporary sibling of ``path`` (same filesystem, so ``os.replace`` is atomic).

    The suffix is kept so that libraries choosing a format by extension still work.
    """
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{''.join(path.suffixes[-1:])}")


def write_atomic(path: Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` then move ``tmp`` onto ``path``; removes ``tmp`` on failure."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_name(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_text_atomic(path: Path, text: str) -> Path:
    return write_atomic(path, lambda p: Path(p).write_text(text))


def to_plain(value: Any) -> Any:
    """``value`` as plain data for YAML, JSON and ``weights_only`` checkpoints: dicts (string keys),
    lists (from lists and tuples), str, int, float, bool and None; Paths and anything else become str."""
    if isinstance(value, dict):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)
