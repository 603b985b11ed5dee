"""MRC maps and image stacks (``.mrc .map .mrcs .map.gz .mrc.gz``).

Files are opened with mrcfile in *permissive* mode, because real RELION stacks have
``ispg = 0`` or no ``MAP`` id and strict mode refuses them; the checks that matter are done
here instead: a readable data mode, a data block as long as the header says (truncated
files), finite values, square/cubic shapes, an isotropic voxel size.

- :func:`read_map` / :func:`write_map`: whole 3D maps as float32 ``[z, y, x]`` with voxel size
  (Å), origin (Å, ``(x, y, z)``) and ``nxstart/nystart/nzstart`` kept through read and write
  (EMDB maps put their position in ``nxstart``).
- :func:`open_stack` → :class:`ImageStack`: a lazy, memory-mapped stack of square images;
  indexing reads only the images asked for, so a stack larger than RAM streams.
- :class:`StackWriter` writes a stack chunk by chunk (never holding it whole);
  :func:`write_stack` writes a small in-memory array.
"""

from __future__ import annotations

import gzip
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import mrcfile
import numpy as np

from cryovox.errors import InputError
from cryovox.utils.files import temp_name, write_atomic

_HEADER_BYTES = 1024
# MRC modes we read: int8, int16, float32, uint16, float16 (complex modes 3/4 are not images)
_REAL_MODES = {0: np.int8, 1: np.int16, 2: np.float32, 6: np.uint16, 12: np.float16}


@dataclass
class MapData:
    """A map read from an MRC file.

    data: float32 array ``[z, y, x]``; apix: voxel size in Å (0.0 when the header has none);
    origin: header origin in Å, ``(x, y, z)``; nstart: ``(nxstart, nystart, nzstart)`` in voxels.
    """

    data: np.ndarray
    apix: float
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    nstart: tuple[int, int, int] = (0, 0, 0)

    @property
    def box(self) -> int:
        """Edge length in voxels (of a cubic map)."""
        return int(self.data.shape[-1])


def _is_gzip(path: Path) -> bool:
    with open(path, "rb") as f:
        return f.read(2) == b"\x1f\x8b"


def _check_exists(path: Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not an MRC file")
    return path


def _read_header(path: Path) -> np.recarray:
    """The 1024-byte header (with the right byte order), without reading the data."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True, header_only=True) as m:
                return m.header.copy()
    except (ValueError, OSError, EOFError) as err:
        raise InputError(f"{path}: not a readable MRC file ({err})") from None


def _dims(path: Path, header) -> tuple[int, int, int, np.dtype]:
    """(nx, ny, nz, dtype) from the header, with sanity checks."""
    mode = int(header.mode)
    if mode not in _REAL_MODES:
        raise InputError(f"{path}: MRC mode {mode} is not a supported real-valued mode (0, 1, 2, 6, 12)")
    nx, ny, nz = int(header.nx), int(header.ny), int(header.nz)
    if nx <= 0 or ny <= 0 or nz <= 0:
        raise InputError(f"{path}: MRC header gives dimensions {nx}×{ny}×{nz}")
    dtype = np.dtype(_REAL_MODES[mode]).newbyteorder(header.mode.dtype.byteorder)
    return nx, ny, nz, dtype


def _check_length(path: Path, header, nx: int, ny: int, nz: int, dtype: np.dtype) -> int:
    """Byte offset of the data block; InputError when an uncompressed file is truncated."""
    offset = _HEADER_BYTES + int(header.nsymbt)
    expected = offset + nx * ny * nz * dtype.itemsize
    if not _is_gzip(path):
        size = os.path.getsize(path)
        if size < expected:
            raise InputError(
                f"{path}: truncated MRC file ({size} bytes; the header ({nx}×{ny}×{nz}, "
                f"mode {int(header.mode)}) needs {expected})"
            )
    return offset


def _voxel_size(path: Path, header, axes: str = "xyz") -> float:
    """Isotropic voxel size in Å from cella/mxyz (0.0 when the header has none)."""
    sizes = []
    for ax in axes:
        cell = float(getattr(header.cella, ax))
        m = int(getattr(header, "m" + ax))
        sizes.append(cell / m if m > 0 else 0.0)
    sizes = [s for s in sizes if s > 0]
    if not sizes:
        return 0.0
    if max(sizes) - min(sizes) > 1e-3 * max(sizes):
        pretty = " × ".join(f"{s:.4f}" for s in sizes)
        raise InputError(f"{path}: anisotropic voxel size {pretty} Å; cryovox needs equal voxel sizes")
    return float(round(sizes[0], 6))


def _axis_permutation(header) -> tuple[int, int, int] | None:
    """Permutation taking the file's (section, row, column) axes to ``[z, y, x]``, or None."""
    labels = [int(header.maps), int(header.mapr), int(header.mapc)]
    if sorted(labels) != [1, 2, 3] or labels == [3, 2, 1]:
        return None
    return (labels.index(3), labels.index(2), labels.index(1))


def _check_finite(path: Path, data: np.ndarray, what: str = "map") -> None:
    if not np.isfinite(data).all():
        n_bad = int(data.size - np.isfinite(data).sum())
        raise InputError(f"{path}: {what} contains {n_bad} NaN/Inf values")


def read_map(path: Path | str, *, cubic: bool = True) -> MapData:
    """Read a 3D map (``.mrc .map .map.gz .mrc.gz``) as float32 ``[z, y, x]``.

    Raises InputError for a missing or unreadable file, an unsupported mode, a truncated data
    block, NaN/Inf values, an anisotropic voxel size, and (with ``cubic``) a non-cubic map.
    """
    path = _check_exists(Path(path))
    header = _read_header(path)
    nx, ny, nz, dtype = _dims(path, header)
    _check_length(path, header, nx, ny, nz, dtype)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(path, mode="r", permissive=True) as m:
                raw = m.data
                if raw is None:
                    raise InputError(f"{path}: MRC data block could not be read (truncated or corrupt)")
                data = np.array(raw, dtype=np.float32)
    except (ValueError, OSError, EOFError, gzip.BadGzipFile) as err:
        raise InputError(f"{path}: not a readable MRC file ({err})") from None
    if data.ndim == 2:
        data = data[None]
    perm = _axis_permutation(header)
    if perm is not None:
        data = np.ascontiguousarray(data.transpose(perm))
    _check_finite(path, data)
    if cubic and not (data.shape[0] == data.shape[1] == data.shape[2]):
        z, y, x = data.shape
        raise InputError(f"{path}: map is {x}×{y}×{z}; a cubic map is needed")
    apix = _voxel_size(path, header)
    origin = (float(header.origin.x), float(header.origin.y), float(header.origin.z))
    nstart = (int(header.nxstart), int(header.nystart), int(header.nzstart))
    return MapData(data=data, apix=apix, origin=origin, nstart=nstart)


def write_map(
    path: Path | str,
    data: np.ndarray,
    apix: float,
    origin: Sequence[float] | None = None,
    nstart: Sequence[int] | None = None,
) -> Path:
    """Write a 3D map ``[z, y, x]`` as float32 MRC (gzip when the name ends in ``.gz``), atomically.

    apix: voxel size in Å (> 0); origin: Å ``(x, y, z)``; nstart: ``(nxstart, nystart, nzstart)``.
    Refuses (InputError) to write NaN/Inf. Accepts a torch tensor too.
    """
    path = Path(path)
    data = _as_float32(data)
    if data.ndim != 3:
        raise ValueError(f"write_map expects a 3D array [z, y, x], got shape {data.shape}")
    _check_finite(path, data, "map to be written")
    if not apix or apix <= 0:
        raise ValueError(f"write_map: voxel size must be > 0 Å, got {apix}")

    def write(tmp: Path) -> None:
        compression = "gzip" if path.name.endswith(".gz") else None
        with mrcfile.new(tmp, overwrite=True, compression=compression) as m:
            m.set_data(data)
            m.set_volume()
            m.voxel_size = float(apix)
            if origin is not None:
                m.header.origin.x, m.header.origin.y, m.header.origin.z = (float(v) for v in origin)
            if nstart is not None:
                m.nstart = tuple(int(v) for v in nstart)

    return write_atomic(path, write)


def _as_float32(data) -> np.ndarray:
    if hasattr(data, "detach"):  # torch tensor
        data = data.detach().cpu().numpy()
    return np.ascontiguousarray(np.asarray(data, dtype=np.float32))


class ImageStack:
    """A lazy stack of ``n`` square ``D × D`` images in one MRC file (memory-mapped).

    ``len(stack)`` images; ``stack[i]`` / ``stack[a:b]`` / ``stack[np.array([...])]`` →
    float32 ``(k, D, D)`` (always 3D; indices 0-based). Only the images asked for are read.
    A single 2D image counts as a stack of one. Gzipped files cannot be memory-mapped and
    are loaded whole. ``apix`` is the header's pixel size in Å (0.0 when unset).
    Use as a context manager or call :meth:`close` to release the file.
    """

    def __init__(self, path: Path | str):
        path = _check_exists(Path(path))
        self.path = path
        header = _read_header(path)
        nx, ny, nz, dtype = _dims(path, header)
        offset = _check_length(path, header, nx, ny, nz, dtype)
        if nx != ny:
            raise InputError(f"{path}: images are {nx}×{ny} pixels; square images are needed")
        self.box = nx
        self.n = nz
        self.apix = _voxel_size(path, header, axes="xy")
        self._mrc = None
        if _is_gzip(path):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    with mrcfile.open(path, mode="r", permissive=True) as m:
                        if m.data is None:
                            raise InputError(f"{path}: MRC data block could not be read (truncated or corrupt)")
                        self._data = np.asarray(m.data).reshape(nz, ny, nx).copy()
            except (ValueError, OSError, EOFError, gzip.BadGzipFile) as err:
                raise InputError(f"{path}: not a readable MRC file ({err})") from None
        else:
            # a plain read-only memmap of the data block: no header validation, nothing read yet
            self._data = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(nz, ny, nx))

    def __len__(self) -> int:
        return self.n

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.n, self.box, self.box)

    def __getitem__(self, idx) -> np.ndarray:
        if isinstance(idx, (int, np.integer)):
            i = int(idx)
            if i < -self.n or i >= self.n:
                raise InputError(f"{self.path}: image index {i} is past the stack's end ({self.n} images)")
            out = self._data[i : i + 1] if i >= 0 else self._data[self.n + i : self.n + i + 1]
        elif isinstance(idx, slice):
            out = self._data[idx]
        else:
            idx = np.asarray(idx)
            if idx.dtype == bool:
                idx = np.flatnonzero(idx)
            idx = idx.astype(np.int64).reshape(-1)
            if idx.size and (idx.max() >= self.n or idx.min() < -self.n):
                bad = int(idx.max() if idx.max() >= self.n else idx.min())
                raise InputError(f"{self.path}: image index {bad} is past the stack's end ({self.n} images)")
            if idx.size > 1 and np.all(np.diff(idx) == 1) and idx[0] >= 0:
                out = self._data[idx[0] : idx[-1] + 1]  # contiguous: one sequential read
            else:
                out = self._data[idx]
        return np.array(out, dtype=np.float32)

    def __iter__(self):
        for i in range(self.n):
            yield self[i][0]

    def close(self) -> None:
        data = getattr(self, "_data", None)
        if isinstance(data, np.memmap) and data._mmap is not None:
            data._mmap.close()
        self._data = None

    def __enter__(self) -> "ImageStack":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ImageStack({str(self.path)!r}, n={self.n}, box={self.box}, apix={self.apix})"


def open_stack(path: Path | str) -> ImageStack:
    """Open an MRC stack (or a single 2D image) lazily; see :class:`ImageStack`."""
    return ImageStack(path)


class StackWriter:
    """Write an image stack chunk by chunk: ``with StackWriter(path, box, apix) as w: w.write(chunk)``.

    chunk: ``(k, box, box)`` or ``(box, box)`` images (numpy or torch), stored as float32.
    The header is written first and rewritten on close with the final count and statistics;
    images are appended as they come. The stack is written to a hidden temporary name and
    renamed to ``path`` only when the ``with`` block ends without an exception (otherwise
    the temporary file is removed). NaN/Inf images are refused.
    """

    def __init__(self, path: Path | str, box: int, apix: float):
        self.path = Path(path)
        self.box = int(box)
        self.apix = float(apix)
        if self.apix <= 0:
            raise ValueError(f"StackWriter: pixel size must be > 0 Å, got {apix}")
        self.n = 0
        self._tmp = None
        self._f = None
        self._sum = 0.0
        self._sumsq = 0.0
        self._min = np.inf
        self._max = -np.inf

    def __enter__(self) -> "StackWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = temp_name(self.path)
        self._f = open(self._tmp, "wb")
        self._f.write(self._header_bytes())
        return self

    def _header_bytes(self) -> bytes:
        """A 1024-byte MRC2014 header for the images written so far (image stack, ispg 0)."""
        m = mrcfile.mrcinterpreter.MrcInterpreter()
        m._create_default_attributes()
        h = m.header
        h.mode = 2
        h.nx = h.ny = h.mx = h.my = self.box
        h.nz = h.mz = self.n
        h.ispg = 0
        h.cella.x = h.cella.y = self.box * self.apix
        h.cella.z = self.n * self.apix
        h.nsymbt = 0
        if self.n:
            mean = self._sum / (self.n * self.box * self.box)
            var = max(self._sumsq / (self.n * self.box * self.box) - mean * mean, 0.0)
            h.dmin, h.dmax, h.dmean, h.rms = self._min, self._max, mean, np.sqrt(var)
        else:
            h.dmin, h.dmax, h.dmean, h.rms = 0.0, -1.0, -2.0, -1.0
        out = h.tobytes()
        assert len(out) == _HEADER_BYTES
        return out

    def write(self, images) -> None:
        """Append ``(k, box, box)`` or ``(box, box)`` images."""
        if self._f is None:
            raise RuntimeError("StackWriter.write outside its with-block")
        arr = _as_float32(images)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3 or arr.shape[1:] != (self.box, self.box):
            raise ValueError(f"StackWriter: expected (k, {self.box}, {self.box}) images, got {arr.shape}")
        if arr.shape[0] == 0:
            return
        _check_finite(self.path, arr, "stack to be written")
        arr = arr.astype("<f4", copy=False)
        self._f.write(arr.tobytes())
        a64 = arr.astype(np.float64)
        self._sum += float(a64.sum())
        self._sumsq += float((a64 * a64).sum())
        self._min = min(self._min, float(arr.min()))
        self._max = max(self._max, float(arr.max()))
        self.n += arr.shape[0]

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is None:
                self._f.seek(0)
                self._f.write(self._header_bytes())
                self._f.close()
                os.replace(self._tmp, self.path)
        finally:
            if self._f is not None and not self._f.closed:
                self._f.close()
            if self._tmp is not None and self._tmp.exists():
                self._tmp.unlink()
            self._f = None


def write_stack(path: Path | str, images, apix: float) -> Path:
    """Write a small in-memory stack ``(n, D, D)`` (or one ``(D, D)`` image) atomically."""
    arr = _as_float32(images)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        raise ValueError(f"write_stack expects (n, D, D) images, got shape {arr.shape}")
    with StackWriter(path, arr.shape[-1], apix) as w:
        w.write(arr)
    return Path(path)
