"""The canonical particle table shared by every pipeline, and its readers/writer.

:class:`ParticleTable` holds one row per particle image in ``table.particles`` (a pandas
DataFrame) and one row per optics group in ``table.optics``. Canonical particle columns
(units as in RELION 3.1 STAR files, converted once here):

============== ============================================================== ==============
column         meaning                                                        STAR label
============== ============================================================== ==============
image_file     absolute path of the stack (str)                               rlnImageName
image_index    0-based index in that stack (int)                              rlnImageName
rot tilt psi   RELION ZYZ Euler angles, degrees (absent: no poses)            rlnAngleRot/…
shift_x/_y     RELION origin in Å (absent: no shifts)                          rlnOriginXAngst/…
defocus_u/_v   Å (absent: no CTF)                                             rlnDefocusU/V
defocus_angle  astigmatism angle, degrees                                     rlnDefocusAngle
phase_shift    degrees                                                        rlnPhaseShift
bfactor        CTF B-factor, Å²                                               rlnCtfBfactor
optics_group   optics group id (int, joins ``optics.group``)                  rlnOpticsGroup
subset         random half set 1/2, 0 when unknown                            rlnRandomSubset
============== ============================================================== ==============

Every other particle column keeps its STAR name (``rlnCoordinateX``, ``rlnMicrographName``,
``rlnClassNumber``, ...) and is written back unchanged by :func:`write_star`.

Canonical optics columns: ``group`` (int), ``name``, ``apix`` (Å/px of the images), ``box``
(pixels; 0 when unknown), ``voltage`` (kV), ``cs`` (mm), ``amplitude_contrast`` (NaN when
the source has no CTF), plus passthrough optics columns under their STAR names
(``rlnBeamTiltX``, ``rlnOddZernike``, ...).

Conventions (docs/conventions.md): ``rotations`` are RELION's matrices ``A`` (volume →
image); ``shifts`` are RELION's origin in Å, i.e. the particle centre sits at
``D // 2 - shift / apix`` in the image. Readers: :func:`read_particles` (``.star`` RELION
3.0/3.1/4/5, ``.cs`` cryoSPARC, bare ``.mrcs`` + cryoDRGN pickles). Writer: :func:`write_star`
(RELION 3.1).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from cryovox.errors import InputError
from cryovox.io.mrc import ImageStack, open_stack
from cryovox.io.star import as_numeric, read_star_blocks, write_star_blocks

PARTICLE_COLUMNS = ("image_file", "image_index", "rot", "tilt", "psi", "shift_x", "shift_y", "defocus_u",
                    "defocus_v", "defocus_angle", "phase_shift", "bfactor", "optics_group", "subset")
OPTICS_COLUMNS = ("group", "name", "apix", "box", "voltage", "cs", "amplitude_contrast")
CTF_KEYS = ("defocus_u", "defocus_v", "defocus_angle", "voltage", "cs", "amplitude_contrast", "phase_shift",
            "bfactor")

# canonical particle column ← STAR label (RELION 3.1+)
_STAR_PARTICLE = {
    "rot": "rlnAngleRot", "tilt": "rlnAngleTilt", "psi": "rlnAnglePsi",
    "shift_x": "rlnOriginXAngst", "shift_y": "rlnOriginYAngst",
    "defocus_u": "rlnDefocusU", "defocus_v": "rlnDefocusV", "defocus_angle": "rlnDefocusAngle",
    "phase_shift": "rlnPhaseShift", "bfactor": "rlnCtfBfactor",
    "subset": "rlnRandomSubset", "optics_group": "rlnOpticsGroup",
}
_STAR_OPTICS = {
    "group": "rlnOpticsGroup", "name": "rlnOpticsGroupName", "apix": "rlnImagePixelSize", "box": "rlnImageSize",
    "voltage": "rlnVoltage", "cs": "rlnSphericalAberration", "amplitude_contrast": "rlnAmplitudeContrast",
}
# labels read and converted (not passed through) besides the ones above
_CONSUMED_PARTICLE = {"rlnImageName", "rlnOriginX", "rlnOriginY", "rlnDetectorPixelSize", "rlnMagnification",
                      "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast", "rlnImagePixelSize",
                      "rlnImageSize", "rlnImageDimensionality"}
_CONSUMED_OPTICS = {"rlnImageDimensionality", "rlnDetectorPixelSize", "rlnMagnification"}
DEFAULT_AMPLITUDE_CONTRAST = 0.1
_MAX_OPEN_STACKS = 64


def _f64(values, n: int) -> np.ndarray:
    """Scalar or (n,) → (n,) float64."""
    return np.broadcast_to(np.asarray(values, dtype=np.float64), (n,)).copy()


@dataclass(eq=False)
class ParticleTable:
    """Particles (one row per image) and optics groups; see the module docstring for columns.

    Build one with :func:`read_particles` or :meth:`ParticleTable.from_arrays`; tables are
    treated as immutable (``take``/``with_*`` return new tables). Images are read lazily
    from their stacks by :meth:`load_images` (open stacks are cached; call :meth:`close` or
    use ``with table:`` to release them).
    """

    particles: pd.DataFrame
    optics: pd.DataFrame
    source: Path | None = None
    _stacks: "OrderedDict[str, ImageStack]" = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self) -> None:
        p = self.particles.reset_index(drop=True)
        for col in ("image_file", "image_index", "optics_group"):
            if col not in p.columns:
                raise ValueError(f"ParticleTable: particles need column {col!r}")
        o = self.optics.reset_index(drop=True)
        for col in ("group", "name", "apix", "box"):
            if col not in o.columns:
                raise ValueError(f"ParticleTable: optics need column {col!r}")
        for col in ("voltage", "cs", "amplitude_contrast"):
            if col not in o.columns:
                o[col] = np.nan
        p["image_index"] = p["image_index"].astype(np.int64)
        p["optics_group"] = p["optics_group"].astype(np.int64)
        p["image_file"] = p["image_file"].astype(object)
        if "subset" not in p.columns:
            p["subset"] = np.zeros(len(p), dtype=np.int64)
        p["subset"] = p["subset"].astype(np.int64)
        o["group"] = o["group"].astype(np.int64)
        o["box"] = o["box"].astype(np.int64)
        o["apix"] = o["apix"].astype(np.float64)
        if o["group"].duplicated().any():
            raise InputError(f"{self._name}: optics group ids are not unique")
        rows = pd.Index(o["group"]).get_indexer(p["optics_group"])
        if (rows < 0).any():
            missing = sorted(set(p["optics_group"][rows < 0].tolist()))
            raise InputError(f"{self._name}: particles refer to optics group(s) {missing} absent from data_optics")
        self.particles, self.optics = p, o
        self._row = rows

    @property
    def _name(self) -> str:
        return str(self.source) if self.source else "particle table"

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_arrays(
        cls,
        image_file: Sequence[str] | np.ndarray | str,
        image_index: Sequence[int] | np.ndarray,
        *,
        apix: float | np.ndarray,
        box: int | np.ndarray,
        rotations: np.ndarray | None = None,
        euler: np.ndarray | None = None,
        shifts: np.ndarray | None = None,
        ctf: dict[str, np.ndarray | float] | None = None,
        subset: np.ndarray | None = None,
        extra: pd.DataFrame | dict | None = None,
        source: Path | None = None,
    ) -> "ParticleTable":
        """Build a table from per-particle arrays (numpy; scalars broadcast).

        image_file: (N,) stack paths or one path; image_index: (N,) 0-based; apix (Å/px) and
        box (px): scalar or (N,); rotations: (N,3,3) RELION matrices A, or euler (N,3)
        degrees; shifts: (N,2) Å (RELION origin; zeros when poses are given without shifts);
        ctf: dict with ``defocus_u, defocus_v`` (Å), ``defocus_angle`` (deg), ``voltage`` (kV),
        ``cs`` (mm), optional ``amplitude_contrast`` (0.1), ``phase_shift`` (deg, 0),
        ``bfactor`` (Å², 0); subset: (N,) 1/2 (0 unknown); extra: passthrough columns.
        Optics groups are made from the distinct (apix, box, voltage, cs, amplitude contrast).
        """
        image_index = np.asarray(image_index, dtype=np.int64).reshape(-1)
        n = len(image_index)
        if isinstance(image_file, (str, Path)):
            files = np.array([os.path.abspath(str(image_file))] * n, dtype=object)
        else:
            files = np.array([os.path.abspath(str(f)) for f in image_file], dtype=object)
        if len(files) != n:
            raise ValueError(f"from_arrays: {len(files)} image files for {n} indices")
        p = pd.DataFrame({"image_file": files, "image_index": image_index})
        _set_poses(p, n, rotations, euler, shifts)
        per = {"apix": _f64(apix, n), "box": np.broadcast_to(np.asarray(box, dtype=np.int64), (n,)).copy()}
        if ctf is not None:
            for key in ("defocus_u", "defocus_v", "voltage", "cs"):
                if key not in ctf:
                    raise ValueError(f"from_arrays: ctf needs {key!r}")
            p["defocus_u"] = _f64(ctf["defocus_u"], n)
            p["defocus_v"] = _f64(ctf["defocus_v"], n)
            p["defocus_angle"] = _f64(ctf.get("defocus_angle", 0.0), n)
            p["phase_shift"] = _f64(ctf.get("phase_shift", 0.0), n)
            p["bfactor"] = _f64(ctf.get("bfactor", 0.0), n)
            per["voltage"] = _f64(ctf["voltage"], n)
            per["cs"] = _f64(ctf["cs"], n)
            per["amplitude_contrast"] = _f64(ctf.get("amplitude_contrast", DEFAULT_AMPLITUDE_CONTRAST), n)
        p["subset"] = np.zeros(n, np.int64) if subset is None else np.asarray(subset, dtype=np.int64).reshape(n)
        p["optics_group"], optics = _optics_from_per_particle(per)
        if extra is not None:
            extra = pd.DataFrame(extra).reset_index(drop=True)
            if len(extra) != n:
                raise ValueError(f"from_arrays: extra has {len(extra)} rows for {n} particles")
            for c in extra.columns:
                if c in PARTICLE_COLUMNS:
                    raise ValueError(f"from_arrays: extra column {c!r} clashes with a canonical column")
                p[c] = extra[c].to_numpy()
        return cls(p, optics, source=source)

    def _replace(self, particles: pd.DataFrame | None = None, optics: pd.DataFrame | None = None) -> "ParticleTable":
        return ParticleTable(self.particles.copy() if particles is None else particles,
                             self.optics.copy() if optics is None else optics, source=self.source)

    def take(self, indices) -> "ParticleTable":
        """Subset of particles: (k,) int indices (any order, repeats allowed) or an (N,) bool mask."""
        idx = np.asarray(indices)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._replace(particles=self.particles.iloc[idx.astype(np.int64)].reset_index(drop=True))

    def with_poses(self, rotations: np.ndarray | None = None, shifts: np.ndarray | None = None, *,
                   euler: np.ndarray | None = None) -> "ParticleTable":
        """New table with poses replaced: rotations (N,3,3) RELION matrices or euler (N,3) deg;
        shifts (N,2) Å (zeros when omitted)."""
        p = self.particles.copy()
        for c in ("rot", "tilt", "psi", "shift_x", "shift_y"):
            if c in p.columns:
                del p[c]
        _set_poses(p, len(p), rotations, euler, shifts)
        return self._replace(particles=p)

    def with_ctf(self, ctf: dict[str, np.ndarray | float]) -> "ParticleTable":
        """New table with per-particle CTF replaced (keys as in :meth:`from_arrays`); optics groups
        are rebuilt from the distinct (apix, box, voltage, cs, amplitude contrast)."""
        extra = self.particles[self.passthrough]
        return ParticleTable.from_arrays(
            self.image_file, self.image_index, apix=self.apix, box=self.box, euler=self.euler,
            shifts=self.shifts, ctf=ctf, subset=self.subset, extra=extra, source=self.source)

    def with_images(self, image_file, image_index, *, box: int | None = None,
                    apix: float | None = None) -> "ParticleTable":
        """New table whose images are in other stacks (e.g. after preprocessing).

        image_file: one path or (N,) paths; image_index: (N,) 0-based. With ``box`` the images
        were resized: every optics group gets that box and, unless ``apix`` is given, a pixel
        size scaled by ``old_box / box`` (Fourier cropping/padding keeps the field of view).
        Shifts are in Å and need no change.
        """
        n = len(self)
        image_index = np.asarray(image_index, dtype=np.int64).reshape(-1)
        if len(image_index) != n:
            raise ValueError(f"with_images: {len(image_index)} indices for {n} particles")
        if isinstance(image_file, (str, Path)):
            files = np.array([os.path.abspath(str(image_file))] * n, dtype=object)
        else:
            files = np.array([os.path.abspath(str(f)) for f in image_file], dtype=object)
        p = self.particles.copy()
        p["image_file"], p["image_index"] = files, image_index
        o = self.optics.copy()
        if box is not None:
            if apix is None:
                if (o["box"] <= 0).any():
                    raise ValueError("with_images: the original box size is unknown; pass apix")
                o["apix"] = o["apix"] * o["box"] / float(box)
            o["box"] = int(box)
        if apix is not None:
            o["apix"] = float(apix)
        return self._replace(particles=p, optics=o)

    def with_subset(self, subset: np.ndarray) -> "ParticleTable":
        """New table with rlnRandomSubset replaced ((N,) 1/2, 0 unknown)."""
        p = self.particles.copy()
        p["subset"] = np.asarray(subset, dtype=np.int64).reshape(len(p))
        return self._replace(particles=p)

    # ---------------------------------------------------------------- accessors
    def __len__(self) -> int:
        return len(self.particles)

    def __repr__(self) -> str:
        poses = "poses" if self.has_poses else "no poses"
        ctf = "CTF" if self.has_ctf else "no CTF"
        return (f"ParticleTable({len(self)} particles, {len(self.optics)} optics groups, {poses}, {ctf}, "
                f"source={str(self.source) if self.source else None!r})")

    @property
    def image_file(self) -> np.ndarray:
        """(N,) absolute stack paths (str, object array)."""
        return self.particles["image_file"].to_numpy(dtype=object)

    @property
    def image_index(self) -> np.ndarray:
        """(N,) 0-based image indices within ``image_file`` (int64)."""
        return self.particles["image_index"].to_numpy(dtype=np.int64)

    @property
    def has_poses(self) -> bool:
        return {"rot", "tilt", "psi"} <= set(self.particles.columns)

    @property
    def has_ctf(self) -> bool:
        return {"defocus_u", "defocus_v"} <= set(self.particles.columns)

    @property
    def euler(self) -> np.ndarray | None:
        """(N, 3) RELION (rot, tilt, psi) in degrees, float64; None without poses."""
        if not self.has_poses:
            return None
        return self.particles[["rot", "tilt", "psi"]].to_numpy(dtype=np.float64)

    @property
    def rotations(self) -> np.ndarray | None:
        """(N, 3, 3) float64 RELION matrices A (volume → image coordinates); None without poses."""
        e = self.euler
        if e is None:
            return None
        cached = self.__dict__.get("_rotations")
        if cached is None or cached[0].shape != e.shape or not np.array_equal(cached[0], e):
            from cryovox.core.rotations import euler_to_matrix

            cached = (e, euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]).numpy())
            self.__dict__["_rotations"] = cached  # computed once per table (tables are not edited in place)
        return cached[1].copy()

    @property
    def shifts(self) -> np.ndarray | None:
        """(N, 2) float64 RELION origin (x, y) in Å; None when the source has no shifts."""
        if not {"shift_x", "shift_y"} <= set(self.particles.columns):
            return None
        return self.particles[["shift_x", "shift_y"]].to_numpy(dtype=np.float64)

    @property
    def shifts_px(self) -> np.ndarray | None:
        """(N, 2) float64 shifts in pixels of each particle's own image (``shifts / apix``)."""
        s = self.shifts
        return None if s is None else s / self.apix[:, None]

    def _optics_col(self, col: str, dtype=np.float64) -> np.ndarray:
        return self.optics[col].to_numpy(dtype=dtype)[self._row]

    @property
    def optics_group(self) -> np.ndarray:
        """(N,) int64 optics group ids (``optics.group``)."""
        return self.particles["optics_group"].to_numpy(dtype=np.int64)

    @property
    def apix(self) -> np.ndarray:
        """(N,) float64 pixel size in Å of each particle's image (from its optics group)."""
        return self._optics_col("apix")

    @property
    def box(self) -> np.ndarray:
        """(N,) int64 image size in pixels (0 when unknown)."""
        return self._optics_col("box", np.int64)

    @property
    def subset(self) -> np.ndarray:
        """(N,) int64 random half-set (rlnRandomSubset 1/2), 0 when unknown."""
        return self.particles["subset"].to_numpy(dtype=np.int64)

    @property
    def ctf(self) -> dict[str, np.ndarray] | None:
        """Per-particle CTF parameters as (N,) float64 arrays, or None without CTF.

        Keys: defocus_u, defocus_v (Å), defocus_angle (deg), voltage (kV), cs (mm),
        amplitude_contrast, phase_shift (deg), bfactor (Å²).
        """
        if not self.has_ctf:
            return None
        p = self.particles
        out = {k: p[k].to_numpy(dtype=np.float64) for k in ("defocus_u", "defocus_v")}
        for k in ("defocus_angle", "phase_shift", "bfactor"):
            out[k] = p[k].to_numpy(dtype=np.float64) if k in p.columns else np.zeros(len(p))
        for k in ("voltage", "cs", "amplitude_contrast"):
            out[k] = self._optics_col(k)
        return {k: out[k] for k in CTF_KEYS}

    @property
    def passthrough(self) -> list[str]:
        """Names of the non-canonical particle columns (kept as read, written back to STAR)."""
        return [c for c in self.particles.columns if c not in PARTICLE_COLUMNS]

    # ---------------------------------------------------------------- images
    def _stack(self, path: str) -> ImageStack:
        st = self._stacks.get(path)
        if st is not None:
            self._stacks.move_to_end(path)
            return st
        if not Path(path).exists():
            where = f" (listed in {self.source})" if self.source else ""
            raise InputError(f"{path}: no such file{where}; use --datadir to say where the stacks are")
        st = open_stack(path)
        self._stacks[path] = st
        while len(self._stacks) > _MAX_OPEN_STACKS:
            _, old = self._stacks.popitem(last=False)
            old.close()
        return st

    def load_images(self, indices=None) -> np.ndarray:
        """Images of the given particles (table rows; all when None) as float32 ``(n, D, D)``.

        Reads only those images, stack by stack, in file order. InputError when a stack is
        missing, an index is past a stack's end, or the images differ in size.
        """
        rows = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64).reshape(-1)
        files = self.image_file[rows]
        index = self.image_index[rows]
        out: np.ndarray | None = None
        codes, uniques = pd.factorize(files)
        order = np.lexsort((index, codes))  # by stack, then by index within it (sequential reads)
        bounds = np.searchsorted(codes[order], np.arange(len(uniques) + 1))
        for k, f in enumerate(uniques):
            sel = order[bounds[k]:bounds[k + 1]]
            st = self._stack(f)
            idx = index[sel]
            if idx[-1] >= len(st) or idx[0] < 0:
                bad = int(idx[-1] if idx[-1] >= len(st) else idx[0])
                raise InputError(f"{f}: image {bad + 1} (1-based) is past the stack's end ({len(st)} images)")
            if out is None:
                out = np.empty((len(rows), st.box, st.box), dtype=np.float32)
            elif st.box != out.shape[-1]:
                raise InputError(f"{f}: images are {st.box} px but earlier ones are {out.shape[-1]} px")
            out[sel] = st[idx]
        if out is None:
            box = int(self.box[0]) if len(self) else 0
            out = np.empty((0, box, box), dtype=np.float32)
        return out

    def check_images(self) -> None:
        """Open every stack (headers only) and check that all indices fit: InputError otherwise."""
        last = self.particles.groupby("image_file", sort=False)["image_index"].max()
        for f, mx in last.items():
            st = self._stack(f)
            if mx >= len(st):
                raise InputError(f"{f}: image {mx + 1} (1-based) is past the stack's end ({len(st)} images)")

    def close(self) -> None:
        """Close the cached open stacks."""
        while self._stacks:
            _, st = self._stacks.popitem()
            st.close()

    def __enter__(self) -> "ParticleTable":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __getstate__(self):  # picklable (e.g. DataLoader workers): open stacks are not
        state = self.__dict__.copy()
        state["_stacks"] = OrderedDict()
        return state

    # ---------------------------------------------------------------- cryoDRGN layout
    def cryodrgn_poses(self) -> tuple[np.ndarray, np.ndarray]:
        """(rot (N,3,3) float64, trans (N,2) float64) in cryoDRGN's layout: rot = A, trans =
        origin_px / box (fraction of the box)."""
        if not self.has_poses:
            raise InputError(f"{self._name}: no poses")
        shifts = self.shifts if self.shifts is not None else np.zeros((len(self), 2))
        box = self.box.astype(np.float64)
        if (box <= 0).any():
            raise InputError(f"{self._name}: box size unknown; pass it explicitly")
        return self.rotations, shifts / self.apix[:, None] / box[:, None]

    def cryodrgn_ctf(self) -> np.ndarray:
        """(N, 9) float64 CTF array in cryoDRGN's layout (D, Apix, dfU, dfV, dfang, kV, Cs, w, phase)."""
        c = self.ctf
        if c is None:
            raise InputError(f"{self._name}: no CTF parameters")
        return np.stack([self.box.astype(np.float64), self.apix, c["defocus_u"], c["defocus_v"],
                         c["defocus_angle"], c["voltage"], c["cs"], c["amplitude_contrast"], c["phase_shift"]], 1)


# -------------------------------------------------------------------- helpers
def _set_poses(p: pd.DataFrame, n: int, rotations, euler, shifts) -> None:
    if rotations is not None and euler is not None:
        raise ValueError("give rotations or euler, not both")
    if rotations is not None:
        rotations = np.asarray(rotations, dtype=np.float64)
        if rotations.shape != (n, 3, 3):
            raise ValueError(f"rotations must be ({n}, 3, 3), got {rotations.shape}")
        from cryovox.core.rotations import matrix_to_euler

        euler = matrix_to_euler(rotations).numpy()
    if euler is not None:
        euler = np.asarray(euler, dtype=np.float64)
        if euler.shape != (n, 3):
            raise ValueError(f"euler must be ({n}, 3), got {euler.shape}")
        p["rot"], p["tilt"], p["psi"] = euler[:, 0], euler[:, 1], euler[:, 2]
        if shifts is None:
            shifts = np.zeros((n, 2))
    if shifts is not None:
        shifts = np.asarray(shifts, dtype=np.float64)
        if shifts.shape != (n, 2):
            raise ValueError(f"shifts must be ({n}, 2), got {shifts.shape}")
        p["shift_x"], p["shift_y"] = shifts[:, 0], shifts[:, 1]


def _optics_from_per_particle(per: dict[str, np.ndarray], names: Sequence[str] | None = None
                              ) -> tuple[np.ndarray, pd.DataFrame]:
    """Group particles by distinct optics values → ((N,) group ids 1.., optics DataFrame)."""
    n = len(per["apix"])
    cols = ["apix", "box", "voltage", "cs", "amplitude_contrast"]
    df = pd.DataFrame({c: per.get(c, np.full(n, np.nan)) for c in cols})
    key = df.round({"apix": 6, "voltage": 4, "cs": 6, "amplitude_contrast": 6}).fillna(-1.0)  # NaN: "none"
    codes = key.groupby(cols, sort=False).ngroup().to_numpy()  # numbered in order of first appearance
    first = pd.Series(np.arange(n)).groupby(codes).first().to_numpy()
    optics = df.iloc[first].reset_index(drop=True)
    optics.insert(0, "group", np.arange(1, len(first) + 1, dtype=np.int64))
    optics.insert(1, "name", [f"opticsGroup{g}" for g in optics["group"]] if names is None else list(names))
    return codes.astype(np.int64) + 1, optics


def _resolve_paths(raw: np.ndarray, base: Path, datadir: Path | None) -> np.ndarray:
    """Absolute paths for the stack names in a particle file (resolved once per distinct name).

    Absolute names are kept; relative ones are tried against ``datadir`` (then its basename
    there, like cryoDRGN's ``--datadir``), or else against the particle file's folder and its
    two parents (RELION paths are relative to the project folder). The first candidate that
    exists wins; if none does, the first candidate is used (an error names it on reading).
    """
    out = {}
    for name in pd.unique(raw):
        p = Path(name)
        cands: list[Path] = []
        if p.is_absolute():
            cands.append(p)
            if datadir is not None:
                cands.append(datadir / p.name)
        elif datadir is not None:
            cands += [datadir / p, datadir / p.name]
        else:
            cands += [base / p, base.parent / p, base.parent.parent / p]
        chosen = next((c for c in cands if c.exists()), cands[0])
        out[name] = os.path.abspath(str(chosen))
    return np.array([out[r] for r in raw], dtype=object)


def _parse_image_names(path: Path, names: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """``index@file`` (1-based, padded or not) → (files as written, 0-based indices)."""
    names = names.astype(str).str.strip()
    has_at = names.str.contains("@", regex=False)
    parts = names.str.split("@", n=1, expand=True)
    if parts.shape[1] == 1:
        parts[1] = None
    files = np.where(has_at, parts[1], names).astype(object)
    idx_txt = np.where(has_at, parts[0], "1")
    idx = pd.to_numeric(pd.Series(idx_txt), errors="coerce")
    if idx.isna().any() or (idx < 1).any() or (idx != np.floor(idx)).any():
        bad = names[(idx.isna() | (idx < 1)).to_numpy()].iloc[0]
        raise InputError(f"{path}: rlnImageName {bad!r} is not index@file with a 1-based index")
    if (pd.Series(files) == "").any():
        raise InputError(f"{path}: rlnImageName has an empty file name")
    return files, idx.to_numpy(dtype=np.int64) - 1


def _require(path: Path, df: pd.DataFrame, cols: Sequence[str]) -> None:
    for c in cols:
        if c not in df.columns:
            raise InputError(f"{path}: missing column {c}")


def _box_from_stack(files: np.ndarray) -> int:
    """Image size from the first reachable stack's header (0 when none is reachable)."""
    for f in pd.unique(files):
        if Path(f).exists():
            with open_stack(f) as st:
                return st.box
    return 0


# -------------------------------------------------------------------- STAR
def _read_star(path: Path, datadir: Path | None, apix: float | None, box: int | None) -> ParticleTable:
    blocks = read_star_blocks(path)
    pname = next((n for n, df in blocks.items() if "rlnImageName" in df.columns), None)
    if pname is None:
        others = [n for n in blocks if n != "optics"]
        if not others or all(len(blocks[n]) == 0 for n in others):
            raise InputError(f"{path}: empty STAR file (no particles)")
        raise InputError(f"{path}: missing column rlnImageName")
    df = blocks[pname].reset_index(drop=True)
    if len(df) == 0:
        raise InputError(f"{path}: empty STAR file (no particles)")
    n = len(df)
    raw_files, index = _parse_image_names(path, df["rlnImageName"])
    files = _resolve_paths(raw_files, path.parent, Path(datadir) if datadir else None)
    p = pd.DataFrame({"image_file": files, "image_index": index})

    ob = blocks.get("optics")
    if ob is not None and len(ob) and "rlnOpticsGroup" in ob.columns:
        optics = _star_optics(path, ob.reset_index(drop=True), apix, box, files)
        if "rlnOpticsGroup" in df.columns:
            p["optics_group"] = as_numeric(path, df, "rlnOpticsGroup").astype(np.int64)
        elif len(optics) == 1:
            p["optics_group"] = int(optics["group"].iloc[0])
        else:
            raise InputError(f"{path}: missing column rlnOpticsGroup (the file has {len(optics)} optics groups)")
        missing = sorted(set(p["optics_group"]) - set(optics["group"]))
        if missing:
            raise InputError(f"{path}: particles refer to optics group(s) {missing} absent from data_optics")
        part_apix = optics.set_index("group")["apix"].reindex(p["optics_group"]).to_numpy()
    else:
        # RELION 3.0: per-particle optics
        per: dict[str, np.ndarray] = {}
        if apix:
            per["apix"] = np.full(n, float(apix))
        elif "rlnImagePixelSize" in df.columns:
            per["apix"] = as_numeric(path, df, "rlnImagePixelSize")
        elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(df.columns):
            per["apix"] = as_numeric(path, df, "rlnDetectorPixelSize") * 1e4 / as_numeric(path, df, "rlnMagnification")
        else:
            raise InputError(f"{path}: pixel size unknown (no data_optics, rlnImagePixelSize or "
                             f"rlnDetectorPixelSize/rlnMagnification); give it with --apix")
        if box:
            per["box"] = np.full(n, int(box))
        elif "rlnImageSize" in df.columns:
            per["box"] = as_numeric(path, df, "rlnImageSize").astype(np.int64)
        else:
            per["box"] = np.full(n, _box_from_stack(files), dtype=np.int64)
        if "rlnDefocusU" in df.columns:
            _require(path, df, ["rlnVoltage", "rlnSphericalAberration"])
        for key, label in (("voltage", "rlnVoltage"), ("cs", "rlnSphericalAberration"),
                           ("amplitude_contrast", "rlnAmplitudeContrast")):
            if label in df.columns:
                per[key] = as_numeric(path, df, label)
        if "voltage" in per and "amplitude_contrast" not in per:
            per["amplitude_contrast"] = np.full(n, DEFAULT_AMPLITUDE_CONTRAST)
        p["optics_group"], optics = _optics_from_per_particle(per)
        part_apix = per["apix"]
    if not np.all(np.isfinite(part_apix)) or np.any(part_apix <= 0):
        raise InputError(f"{path}: pixel size missing or not positive for some particles")

    # poses
    angle_cols = ["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]
    if any(c in df.columns for c in angle_cols):
        _require(path, df, angle_cols)
        for c, label in zip(("rot", "tilt", "psi"), angle_cols):
            p[c] = as_numeric(path, df, label)
    if "rlnOriginXAngst" in df.columns or "rlnOriginYAngst" in df.columns:
        _require(path, df, ["rlnOriginXAngst", "rlnOriginYAngst"])
        p["shift_x"] = as_numeric(path, df, "rlnOriginXAngst")
        p["shift_y"] = as_numeric(path, df, "rlnOriginYAngst")
    elif "rlnOriginX" in df.columns or "rlnOriginY" in df.columns:
        _require(path, df, ["rlnOriginX", "rlnOriginY"])
        p["shift_x"] = as_numeric(path, df, "rlnOriginX") * part_apix
        p["shift_y"] = as_numeric(path, df, "rlnOriginY") * part_apix
    elif "rot" in p.columns:
        p["shift_x"] = p["shift_y"] = 0.0
    # CTF
    if "rlnDefocusU" in df.columns:
        _require(path, df, ["rlnDefocusV"])
        if optics["voltage"].isna().any() or optics["cs"].isna().any():
            raise InputError(f"{path}: missing column {'rlnVoltage' if optics['voltage'].isna().any() else 'rlnSphericalAberration'}")
        p["defocus_u"] = as_numeric(path, df, "rlnDefocusU")
        p["defocus_v"] = as_numeric(path, df, "rlnDefocusV")
        for key in ("defocus_angle", "phase_shift", "bfactor"):
            label = _STAR_PARTICLE[key]
            p[key] = as_numeric(path, df, label) if label in df.columns else 0.0
    p["subset"] = as_numeric(path, df, "rlnRandomSubset").astype(np.int64) if "rlnRandomSubset" in df.columns else 0
    for c in p.columns:
        if c not in ("image_file",) and p[c].dtype.kind == "f" and not np.isfinite(p[c].to_numpy()).all():
            raise InputError(f"{path}: non-finite values in {_STAR_PARTICLE.get(c, c)}")
    consumed = _CONSUMED_PARTICLE | set(_STAR_PARTICLE.values())
    for c in df.columns:
        if c not in consumed and c not in p.columns:
            p[c] = df[c].to_numpy()
    return ParticleTable(p, optics, source=path)


def _star_optics(path: Path, ob: pd.DataFrame, apix: float | None, box: int | None, files: np.ndarray) -> pd.DataFrame:
    o = pd.DataFrame({"group": as_numeric(path, ob, "rlnOpticsGroup").astype(np.int64)})
    o["name"] = (ob["rlnOpticsGroupName"].astype(str).to_numpy() if "rlnOpticsGroupName" in ob.columns
                 else [f"opticsGroup{g}" for g in o["group"]])
    if apix:
        o["apix"] = float(apix)
    elif "rlnImagePixelSize" in ob.columns:
        o["apix"] = as_numeric(path, ob, "rlnImagePixelSize")
    elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(ob.columns):
        o["apix"] = as_numeric(path, ob, "rlnDetectorPixelSize") * 1e4 / as_numeric(path, ob, "rlnMagnification")
    else:
        raise InputError(f"{path}: missing column rlnImagePixelSize in data_optics")
    if box:
        o["box"] = int(box)
    elif "rlnImageSize" in ob.columns:
        o["box"] = as_numeric(path, ob, "rlnImageSize").astype(np.int64)
    else:
        o["box"] = _box_from_stack(files)
    for key in ("voltage", "cs", "amplitude_contrast"):
        label = _STAR_OPTICS[key]
        o[key] = as_numeric(path, ob, label) if label in ob.columns else np.nan
    if o["amplitude_contrast"].isna().all() and o["voltage"].notna().all():
        o["amplitude_contrast"] = DEFAULT_AMPLITUDE_CONTRAST
    consumed = set(_STAR_OPTICS.values()) | _CONSUMED_OPTICS
    for c in ob.columns:
        if c not in consumed:
            o[c] = ob[c].to_numpy()
    return o


def write_star(path: Path | str, table: ParticleTable, *, image_names: Sequence[str] | None = None,
               absolute_paths: bool = False) -> Path:
    """Write ``table`` as a RELION 3.1 STAR file (data_optics + data_particles), atomically.

    rlnImageName is ``000001@stack`` (1-based) with the stack path relative to the STAR's folder
    when the stack is inside it (else absolute; always absolute with ``absolute_paths``), unless
    ``image_names`` (N,) gives the names. Angles, origins (Å), CTF and rlnRandomSubset (when
    every particle has 1 or 2) are written when present; passthrough columns follow.
    """
    path = Path(path)
    o = table.optics
    optics = pd.DataFrame({
        "rlnOpticsGroup": o["group"].astype(np.int64),
        "rlnOpticsGroupName": o["name"].astype(str),
        "rlnImagePixelSize": np.round(o["apix"].to_numpy(dtype=np.float64), 9),
        "rlnImageSize": o["box"].astype(np.int64),
        "rlnImageDimensionality": np.full(len(o), 2, dtype=np.int64),
    })
    for key in ("voltage", "cs", "amplitude_contrast"):
        if o[key].notna().all():
            optics[_STAR_OPTICS[key]] = o[key].astype(np.float64)
    for c in o.columns:
        if c not in OPTICS_COLUMNS and c not in optics.columns:
            optics[c] = o[c].to_numpy()

    p = table.particles
    if image_names is None:
        image_names = _image_names(path.parent, table.image_file, table.image_index, absolute_paths)
    if len(image_names) != len(table):
        raise ValueError(f"write_star: {len(image_names)} image names for {len(table)} particles")
    parts = pd.DataFrame({"rlnImageName": np.asarray(image_names, dtype=object)})
    for key in ("rot", "tilt", "psi", "shift_x", "shift_y", "defocus_u", "defocus_v", "defocus_angle",
                "phase_shift", "bfactor"):
        if key in p.columns:  # 9 decimals: 1e-9 deg, 1e-9 Å; keeps the file readable
            parts[_STAR_PARTICLE[key]] = np.round(p[key].to_numpy(dtype=np.float64), 9)
    if len(p) and np.isin(p["subset"].to_numpy(), (1, 2)).all():
        parts["rlnRandomSubset"] = p["subset"].to_numpy(dtype=np.int64)
    parts["rlnOpticsGroup"] = p["optics_group"].to_numpy(dtype=np.int64)
    for c in table.passthrough:
        if c not in parts.columns:
            parts[c] = p[c].to_numpy()
    return write_star_blocks(path, {"optics": optics, "particles": parts})


def _image_names(star_dir: Path, files: np.ndarray, index: np.ndarray, absolute: bool) -> np.ndarray:
    star_dir = Path(os.path.abspath(star_dir))
    rel = {}
    for f in pd.unique(files):
        name = str(f)
        if not absolute:
            try:
                name = str(Path(f).relative_to(star_dir))
            except ValueError:
                name = str(f)
        rel[f] = name
    return np.array([f"{i + 1:06d}@{rel[f]}" for f, i in zip(files, index)], dtype=object)


# -------------------------------------------------------------------- cryoSPARC
def _read_cs(path: Path, datadir: Path | None, apix: float | None, box: int | None) -> ParticleTable:
    from cryovox.io.cryosparc import cs_columns, read_cs

    cols = cs_columns(path, read_cs(path))
    files = _resolve_paths(cols["image_path"], path.parent, Path(datadir) if datadir else None)
    n = len(files)
    ctf = None
    if "defocus_u" in cols:
        ctf = {k: cols[k] for k in CTF_KEYS}
    return ParticleTable.from_arrays(
        files, cols["image_index"],
        apix=float(apix) if apix else cols["apix"], box=int(box) if box else cols["box"],
        rotations=cols.get("rotations"), shifts=cols.get("shifts"), ctf=ctf,
        subset=cols.get("subset", np.zeros(n, np.int64)), source=path)


# -------------------------------------------------------------------- bare stacks
def _read_bare_stack(path: Path, apix: float | None, box: int | None, ctf_pkl: dict | None) -> ParticleTable:
    with open_stack(path) as st:
        n, d, header_apix = len(st), st.box, st.apix
    if box and int(box) != d:
        raise InputError(f"{path}: images are {d} px, not {box}")
    if apix:
        px = float(apix)
    elif ctf_pkl is not None:
        px = ctf_pkl["apix"]
    elif header_apix > 0:
        px = header_apix
    else:
        raise InputError(f"{path}: pixel size unknown (header has none); give it with --apix")
    return ParticleTable.from_arrays(str(path), np.arange(n), apix=px, box=d, source=path)


# -------------------------------------------------------------------- entry point
STACK_SUFFIXES = (".mrcs", ".mrc", ".map", ".st")


def read_particles(
    path: Path | str,
    *,
    datadir: Path | str | None = None,
    poses: Path | str | None = None,
    ctf: Path | str | None = None,
    apix: float | None = None,
    box: int | None = None,
    max_particles: int | None = None,
) -> ParticleTable:
    """Read particles from ``.star`` (RELION 3.0/3.1/4/5), ``.cs`` (cryoSPARC) or a bare stack
    (``.mrcs``/``.mrc``, one particle per image).

    datadir: folder where relative stack paths are looked up (default: the file's folder and
    its parents); poses / ctf: cryoDRGN pickles that replace (or, for bare stacks, provide)
    poses and CTF; apix (Å/px) / box (px): override the pixel size / give the box where the
    file has none; max_particles: keep only the first N particles (``--max-particles``).
    InputError for missing files, missing columns, empty tables, counts that disagree.
    """
    path = Path(path)
    if max_particles is not None and max_particles < 1:
        raise InputError(f"--max-particles {max_particles}: must be at least 1")
    if not path.exists():
        raise InputError(f"{path}: no such file")
    name = path.name.lower()
    ctf_pkl = None
    if ctf is not None:
        from cryovox.io.pickles import read_cryodrgn_ctf

        ctf_pkl = read_cryodrgn_ctf(ctf)
    if name.endswith(".star"):
        table = _read_star(path, datadir, apix, box)
    elif name.endswith(".cs"):
        table = _read_cs(path, datadir, apix, box)
    elif name.endswith(STACK_SUFFIXES) or name.endswith(".mrcs.gz") or name.endswith(".mrc.gz"):
        table = _read_bare_stack(path, apix, box, ctf_pkl)
    else:
        raise InputError(f"{path}: unknown particle file type (expected .star, .cs or .mrcs)")
    n = len(table)
    if ctf_pkl is not None:
        m = len(ctf_pkl["defocus_u"])
        if m != n:
            raise InputError(f"{ctf}: {m} CTF rows for {n} particles in {path}")
        table = table.with_ctf(ctf_pkl)
    if poses is not None:
        from cryovox.io.pickles import read_cryodrgn_poses

        b = int(table.box[0]) if n else 0
        if len(set(table.box.tolist())) > 1:
            raise InputError(f"{path}: particles have several box sizes; cryoDRGN poses need one")
        rot, shifts_px = read_cryodrgn_poses(poses, b)
        if len(rot) != n:
            raise InputError(f"{poses}: {len(rot)} poses for {n} particles in {path}")
        shifts = None if shifts_px is None else shifts_px * table.apix[:, None]
        table = table.with_poses(rot, shifts)
    if max_particles is not None and max_particles < len(table):
        table = table.take(np.arange(max_particles))
    return table
