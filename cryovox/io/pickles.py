"""cryoDRGN pose/CTF pickles, read with a restricted unpickler.

A pickle can run arbitrary code when loaded, so :func:`safe_load_pickle` admits only numpy
arrays (ndarray reconstruction, dtypes, scalars) and plain Python containers/scalars; any
other global (``os.system``, ``builtins.eval``, a torch class, ...) is refused with an
InputError before anything is called.

cryoDRGN layouts (checked against the real files of cryoDRGN 4.3.1's test suite, see
``tests/io/test_pickles.py``):

- poses: ``(rot, trans)`` or just ``rot``. ``rot`` is ``(N, 3, 3)`` and equals RELION's matrix
  ``A = Euler_angles2matrix(rot, tilt, psi)`` exactly, i.e. cryovox's canonical ``R`` (for
  ``pose.star.pkl`` vs. its STAR: max difference 4e-16; for ``pose.cs.pkl``: ``rot`` equals
  ``Rotation.from_rotvec(alignments3D/pose).as_matrix().T`` to 4e-7, float32).
  ``trans`` is ``(N, 2)`` = ``+rlnOrigin`` in pixels divided by the box size ``D`` (same
  sign as RELION's origin, and as cryoSPARC's ``alignments3D/shift``, which cryoDRGN also
  divides by ``D`` without a sign change). So ``shifts_px = trans · D`` and
  ``shifts_Å = trans · D · apix``.
- CTF: float32 ``(N, 9)`` array with columns ``(D, apix, dfU Å, dfV Å, dfang deg, kV, Cs mm,
  amplitude contrast, phase shift deg)``; cryoSPARC's radians are converted to degrees.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from cryovox.errors import InputError
from cryovox.utils.files import write_atomic

CTF_COLUMNS = ("box", "apix", "defocus_u", "defocus_v", "defocus_angle", "voltage", "cs",
               "amplitude_contrast", "phase_shift")

# globals a numpy-array pickle needs (numpy 1.x and 2.x module paths), and plain builtins
_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy", "float64"), ("numpy", "float32"), ("numpy", "int64"), ("numpy", "int32"), ("numpy", "bool_"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "tuple"), ("builtins", "list"), ("builtins", "dict"), ("builtins", "set"),
    ("builtins", "frozenset"), ("builtins", "int"), ("builtins", "float"), ("builtins", "complex"),
    ("builtins", "bool"), ("builtins", "str"), ("builtins", "bytes"), ("builtins", "bytearray"),
    ("builtins", "slice"), ("builtins", "range"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),  # protocol 2 pickles of numpy arrays store the raw buffer this way
}


class _SafeUnpickler(pickle.Unpickler):
    def __init__(self, file, path: Path):
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise InputError(f"{self._path}: pickle contains {module}.{name}, refused (only numpy arrays and plain "
                         f"containers are loaded)")


def safe_load_pickle(path: Path | str):
    """Load a pickle holding only numpy arrays / plain containers; InputError otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    data = path.read_bytes()
    try:
        return _SafeUnpickler(io.BytesIO(data), path).load()
    except InputError:
        raise
    except Exception as err:  # truncated / not a pickle
        raise InputError(f"{path}: not a readable pickle ({type(err).__name__}: {err})") from None


def write_pickle(path: Path | str, obj) -> Path:
    """Pickle ``obj`` (numpy arrays / plain containers) to ``path`` atomically."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(obj, f, protocol=4)

    return write_atomic(Path(path), write)


def _as_array(path: Path, obj, what: str) -> np.ndarray:
    if not isinstance(obj, np.ndarray):
        raise InputError(f"{path}: expected a numpy array of {what}, found {type(obj).__name__}")
    return obj


def read_cryodrgn_poses(path: Path | str, box: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """cryoDRGN pose pickle → ``(rotations (N, 3, 3) float64, shifts_px (N, 2) float64 or None)``.

    rotations are RELION's matrices ``A`` (cryovox's ``R``); shifts are RELION's origin in
    pixels (``+trans · box``); None when the pickle holds rotations only. ``box`` (pixels) is
    needed to convert translations stored as a fraction of the box.
    """
    path = Path(path)
    obj = safe_load_pickle(path)
    trans = None
    if isinstance(obj, (tuple, list)):
        if len(obj) not in (1, 2):
            raise InputError(f"{path}: expected (rotations, translations), found a {len(obj)}-tuple")
        rot = _as_array(path, obj[0], "rotations")
        if len(obj) == 2:
            trans = _as_array(path, obj[1], "translations")
    else:
        rot = _as_array(path, obj, "rotations")
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise InputError(f"{path}: rotations have shape {rot.shape}; (N, 3, 3) is needed")
    rot = rot.astype(np.float64)
    det = np.linalg.det(rot)
    if not np.all(np.abs(det - 1) < 1e-3):
        raise InputError(f"{path}: rotations are not proper rotation matrices (det {det.min():.3g}..{det.max():.3g})")
    shifts = None
    if trans is not None:
        if trans.shape != (rot.shape[0], 2):
            raise InputError(f"{path}: translations have shape {trans.shape}; ({rot.shape[0]}, 2) is needed")
        if box is None or box <= 0:
            raise InputError(f"{path}: the box size is needed to convert translations (fraction of the box)")
        shifts = trans.astype(np.float64) * float(box)
    return rot, shifts


def write_cryodrgn_poses(path: Path | str, rotations, shifts_px=None, box: int | None = None) -> Path:
    """Write ``(rot (N,3,3) float32, trans (N,2) float32 = shifts_px / box)`` (or ``rot`` alone).

    rotations: RELION matrices ``A`` (N, 3, 3); shifts_px: RELION origin in pixels (N, 2).
    """
    rot = np.asarray(rotations, dtype=np.float32)
    if shifts_px is None:
        return write_pickle(path, rot)
    if box is None or box <= 0:
        raise ValueError("write_cryodrgn_poses: box is needed to store translations as a fraction of the box")
    trans = np.asarray(shifts_px, dtype=np.float64) / float(box)
    return write_pickle(path, (rot, trans.astype(np.float32)))


def read_cryodrgn_ctf(path: Path | str) -> dict[str, np.ndarray]:
    """cryoDRGN CTF pickle (N×9) → dict of (N,) float64 arrays keyed by :data:`CTF_COLUMNS`."""
    path = Path(path)
    arr = _as_array(path, safe_load_pickle(path), "CTF parameters")
    if arr.ndim != 2 or arr.shape[1] != 9:
        raise InputError(f"{path}: CTF array has shape {arr.shape}; (N, 9) is needed "
                         f"(D, Apix, dfU, dfV, dfang, kV, Cs, w, phase shift)")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise InputError(f"{path}: CTF array contains NaN/Inf")
    return {k: arr[:, i] for i, k in enumerate(CTF_COLUMNS)}


def write_cryodrgn_ctf(path: Path | str, ctf: dict[str, np.ndarray]) -> Path:
    """Write a cryoDRGN N×9 float32 CTF array from a dict with the keys of :data:`CTF_COLUMNS`."""
    n = len(np.atleast_1d(ctf["defocus_u"]))
    arr = np.stack([np.broadcast_to(np.asarray(ctf[k], dtype=np.float64), (n,)) for k in CTF_COLUMNS], 1)
    return write_pickle(path, arr.astype(np.float32))
