"""cryoSPARC ``.cs`` particle tables (numpy structured arrays) → canonical columns.

Fields used (cryoSPARC v2–v4):

- ``blob/path`` (bytes; a leading ``>`` marks an imported file), ``blob/idx`` (0-based),
  ``blob/shape`` (ny, nx), ``blob/psize_A`` (Å/px);
- ``ctf/accel_kv``, ``ctf/cs_mm``, ``ctf/amp_contrast``, ``ctf/df1_A`` (= RELION DefocusU),
  ``ctf/df2_A`` (DefocusV), ``ctf/df_angle_rad``, ``ctf/phase_shift_rad`` (radians → degrees),
  ``ctf/bfactor`` when present;
- ``alignments3D/pose``: rotation vector ``v``; RELION's matrix is
  ``A = Rotation.from_rotvec(v).as_matrix().T`` (equivalently RELION's angles are
  ``Rotation.from_rotvec(v).as_euler("ZYZ")``); ``alignments3D/shift`` in pixels of
  ``alignments3D/psize_A``, the same sign as RELION's origin; ``alignments3D/split`` 0/1 →
  rlnRandomSubset 1/2. Exported files without ``alignments3D`` give a table without poses.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy.spatial.transform import Rotation

from cryovox.errors import InputError


def read_cs(path: Path | str) -> np.ndarray:
    """Load a ``.cs`` file as a numpy structured array (no pickles allowed)."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as err:
        raise InputError(f"{path}: not a readable cryoSPARC .cs file ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.names is None:
        raise InputError(f"{path}: not a cryoSPARC .cs file (no named fields)")
    if len(arr) == 0:
        raise InputError(f"{path}: empty particle table")
    return arr


def _field(path: Path, arr: np.ndarray, name: str) -> np.ndarray:
    if name not in arr.dtype.names:
        raise InputError(f"{path}: missing field {name}")
    return arr[name]


def _decimal(a: np.ndarray) -> np.ndarray:
    """float32 values → float64 with their shortest decimal form (2.95f → 2.95, not 2.9500000477)."""
    return np.asarray(a, dtype=np.float32).astype(str).astype(np.float64)


def rotvec_to_relion_matrix(pose: np.ndarray) -> np.ndarray:
    """cryoSPARC rotation vectors (N, 3) → RELION matrices A (N, 3, 3) float64."""
    return Rotation.from_rotvec(np.asarray(pose, dtype=np.float64)).as_matrix().transpose(0, 2, 1)


def cs_columns(path: Path, arr: np.ndarray) -> dict[str, np.ndarray]:
    """Per-particle canonical arrays from a .cs table (see module docstring).

    Keys: ``image_path`` (str, as stored, ``>`` removed), ``image_index``, ``box``, ``apix``,
    and when present ``rotations`` (N,3,3), ``shifts`` (N,2, Å), ``subset``,
    ``defocus_u``, ``defocus_v``, ``defocus_angle``, ``phase_shift``, ``bfactor``, ``voltage``,
    ``cs``, ``amplitude_contrast``.
    """
    names = set(arr.dtype.names)
    raw = _field(path, arr, "blob/path")
    paths = np.array([p.decode() if isinstance(p, bytes) else str(p) for p in raw], dtype=object)
    paths = np.array([p[1:] if p.startswith(">") else p for p in paths], dtype=object)
    shape = np.asarray(_field(path, arr, "blob/shape"))
    if shape.ndim != 2 or shape.shape[1] != 2:
        raise InputError(f"{path}: blob/shape has shape {shape.shape}; (N, 2) is needed")
    if np.any(shape[:, 0] != shape[:, 1]):
        raise InputError(f"{path}: blob/shape shows non-square images")
    out: dict[str, np.ndarray] = {
        "image_path": paths,
        "image_index": np.asarray(_field(path, arr, "blob/idx"), dtype=np.int64),
        "box": shape[:, 0].astype(np.int64),
        "apix": _decimal(_field(path, arr, "blob/psize_A")),
    }
    if "ctf/df1_A" in names:
        out["defocus_u"] = arr["ctf/df1_A"].astype(np.float64)
        out["defocus_v"] = _field(path, arr, "ctf/df2_A").astype(np.float64)
        out["defocus_angle"] = np.degrees(_field(path, arr, "ctf/df_angle_rad").astype(np.float64))
        out["voltage"] = _decimal(_field(path, arr, "ctf/accel_kv"))
        out["cs"] = _decimal(_field(path, arr, "ctf/cs_mm"))
        out["amplitude_contrast"] = _decimal(_field(path, arr, "ctf/amp_contrast"))
        out["phase_shift"] = (np.degrees(arr["ctf/phase_shift_rad"].astype(np.float64))
                              if "ctf/phase_shift_rad" in names else np.zeros(len(arr)))
        out["bfactor"] = arr["ctf/bfactor"].astype(np.float64) if "ctf/bfactor" in names else np.zeros(len(arr))
    if "alignments3D/pose" in names:
        pose = np.asarray(arr["alignments3D/pose"], dtype=np.float64)
        if pose.ndim != 2 or pose.shape[1] != 3:
            raise InputError(f"{path}: alignments3D/pose has shape {pose.shape}; (N, 3) is needed")
        out["rotations"] = rotvec_to_relion_matrix(pose)
        shift_px = np.asarray(_field(path, arr, "alignments3D/shift"), dtype=np.float64)
        psize = (_decimal(arr["alignments3D/psize_A"]) if "alignments3D/psize_A" in names
                 else out["apix"])
        out["shifts"] = shift_px * psize[:, None]
        if "alignments3D/split" in names:
            out["subset"] = arr["alignments3D/split"].astype(np.int64) + 1
    for key, val in out.items():
        if val.dtype.kind == "f" and not np.isfinite(val).all():
            raise InputError(f"{path}: non-finite values in {key}")
    return out

