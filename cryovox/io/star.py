"""Low-level STAR reading and writing (RELION's text format).

Reading uses ``starfile``; writing is done here so that the output is exactly what RELION 3.1+
expects (``# version 30001``, ``data_optics`` then ``data_particles``, ``loop_`` with
numbered labels) with enough digits for angles to survive a round trip.
The particle-level logic (optics joins, image paths, units) lives in
:mod:`cryovox.io.particles`.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import starfile

from cryovox.errors import InputError
from cryovox.utils.files import write_atomic


def read_star_blocks(path: Path | str) -> dict[str, pd.DataFrame]:
    """All data blocks of a STAR file as DataFrames (column names without the leading ``_``).

    Block names are given without ``data_``; a non-loop block becomes a one-row DataFrame.
    InputError for a missing, unreadable or empty file.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a STAR file")
    if path.stat().st_size == 0:
        raise InputError(f"{path}: empty STAR file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(path, always_dict=True, parse_as_string=["rlnImageName", "rlnMicrographName",
                                                                           "rlnOpticsGroupName"])
    except Exception as err:  # starfile raises assorted parser errors on malformed text
        raise InputError(f"{path}: not a readable STAR file ({type(err).__name__}: {err})") from None
    out: dict[str, pd.DataFrame] = {}
    for name, block in (blocks or {}).items():
        if isinstance(block, pd.DataFrame):
            out[str(name)] = block
        elif isinstance(block, dict):
            out[str(name)] = pd.DataFrame([block])
    if not out:
        raise InputError(f"{path}: empty STAR file (no data blocks)")
    return out


def _column_text(col: pd.Series) -> list[str]:
    """One column as strings: floats in numpy's shortest round-trip form, ints as ints, and
    text with whitespace replaced (RELION splits on whitespace; a blank value would shift columns)."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_integer_dtype(col):
        return list(map(str, col.to_numpy(dtype=np.int64).tolist()))
    if pd.api.types.is_float_dtype(col):
        return list(map(repr, col.to_numpy(dtype=np.float64).tolist()))  # shortest exact form
    text = col.astype(str)
    if text.str.contains(r"\s", regex=True).any():
        text = text.str.replace(r"\s+", "_", regex=True)
    blank = text.isin(["", "nan", "<NA>", "None"])
    if blank.any():
        text = text.where(~blank, "None")
    return text.tolist()


def _format_frame(df: pd.DataFrame) -> str:
    if len(df) == 0:
        return ""
    cols = [_column_text(df[c]) for c in df.columns]
    return "\n".join(" ".join(row) for row in zip(*cols)) + "\n"


def star_text(blocks: dict[str, pd.DataFrame], *, version: int = 30001) -> str:
    """Text of a STAR file with each DataFrame written as a ``loop_`` block ``data_<name>``.

    Floats are written in their shortest exact form (round callers' values if they want fewer digits).
    """
    parts = []
    for name, df in blocks.items():
        parts.append(f"\n# version {version}\n\ndata_{name}\n\nloop_\n")
        parts.extend(f"_{c} #{i + 1}\n" for i, c in enumerate(df.columns))
        parts.append(_format_frame(df))
        parts.append("\n")
    return "".join(parts)


def write_star_blocks(path: Path | str, blocks: dict[str, pd.DataFrame]) -> Path:
    """Write DataFrames as STAR loop blocks, atomically."""
    text = star_text(blocks)
    return write_atomic(Path(path), lambda p: Path(p).write_text(text))


def as_numeric(path: Path, df: pd.DataFrame, column: str) -> np.ndarray:
    """Column as float64; InputError naming the file if a value is not a number."""
    try:
        return pd.to_numeric(df[column], errors="raise").to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        raise InputError(f"{path}: column {column} has non-numeric values") from None
