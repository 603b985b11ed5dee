"""Atomic models (PDB / mmCIF, optionally gzipped) read with gemmi, and their electron potential.

- :func:`read_model`: the first model of a structure file, waters removed.
- :func:`center_of_mass`: its centre of mass in Å ``(x, y, z)``.
- :func:`rasterize_potential`: the electron-scattering potential (gemmi's
  ``DensityCalculatorE``: Peng's five-Gaussian electron form factors with each atom's
  B-factor and occupancy) sampled on an oversampled cubic grid that covers a ``box``-voxel
  box of ``apix`` Å voxels starting at ``origin``. gemmi adds an extra Gaussian ``blur``
  (a B-factor in Å²) so that the sampling does not alias; the caller removes it in Fourier
  space (multiply by ``exp(+blur s² / 4)``) and crops to the final grid, which gives a map
  band-limited at the final Nyquist (see :func:`cryovox.pipelines.simulate.simulate_map`).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cryovox.errors import InputError

MODEL_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif", ".pdb.gz", ".ent.gz", ".cif.gz", ".mmcif.gz")


def read_model(path: Path | str):
    """Read a PDB or mmCIF file (``.gz`` too) → ``gemmi.Structure`` with only its first model.

    Waters are removed (they are not part of a particle's ordered density); hydrogens and
    ligands are kept as they are in the file. InputError for a missing, unreadable or
    atom-less file.
    """
    import gemmi

    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a PDB/mmCIF file")
    try:
        st = gemmi.read_structure(str(path))
    except (RuntimeError, ValueError, OSError) as err:
        raise InputError(f"{path}: not a readable PDB/mmCIF model ({str(err).splitlines()[0]})") from None
    if len(st) == 0:
        raise InputError(f"{path}: the file holds no model")
    while len(st) > 1:
        del st[len(st) - 1]
    st.remove_waters()
    st.remove_empty_chains()
    if st[0].count_atom_sites() == 0:
        raise InputError(f"{path}: the model has no atoms (other than waters)")
    return st


def atom_positions(structure) -> np.ndarray:
    """``(N, 3)`` atom positions in Å ``(x, y, z)`` of the first model."""
    return np.array([[a.pos.x, a.pos.y, a.pos.z] for ch in structure[0] for res in ch for a in res],
                    dtype=np.float64)


def center_of_mass(structure) -> np.ndarray:
    """Centre of mass (Å, ``(x, y, z)``) of the first model."""
    c = structure[0].calculate_center_of_mass()
    return np.array([c.x, c.y, c.z], dtype=np.float64)


def model_mass_kda(structure) -> float:
    """Mass of the first model in kDa (atoms in the file, including hydrogens if present)."""
    return float(structure[0].calculate_mass()) / 1000.0


def rasterize_potential(structure, box: int, apix: float, origin: np.ndarray,
                        oversample: int = 2, *, name: str = "model") -> tuple[np.ndarray, float]:
    """Electron potential of the first model on a ``(box·oversample)³`` grid.

    The grid covers the cube ``[origin, origin + box·apix)`` (Å, ``(x, y, z)``) with spacing
    ``apix / oversample``; grid sample ``[z, y, x]`` is at ``origin + (x, y, z)·spacing``.
    Returns ``(grid [z, y, x] float64, blur)`` where ``blur`` (Å²) is the extra isotropic
    B-factor gemmi applied to every atom to avoid aliasing. Values are gemmi's electron
    potential units (integral over the box ≈ Σ atoms' electron form factor at s = 0, in Å³·Å⁻²).
    InputError when atoms fall outside the box (the grid is periodic and they would wrap).
    """
    import gemmi

    if oversample < 1:
        raise ValueError("oversample must be >= 1")
    origin = np.asarray(origin, dtype=np.float64)
    length = box * apix
    pos = atom_positions(structure) - origin
    outside = (pos < 0) | (pos >= length)
    if outside.any():
        centre = origin + (box // 2) * apix
        reach = float(np.abs(atom_positions(structure) - centre).max())
        raise InputError(
            f"{name}: the model reaches {reach:.1f} Å from the box centre but the box is "
            f"{box} × {apix:g} Å = {length:.1f} Å wide; use a larger --box or --apix"
        )
    model = structure[0].clone()
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(*(-origin))))
    n = box * oversample
    spacing = apix / oversample
    calc = gemmi.DensityCalculatorE()
    calc.grid.set_unit_cell(gemmi.UnitCell(length, length, length, 90, 90, 90))
    calc.grid.spacegroup = gemmi.SpaceGroup("P1")
    calc.grid.set_size(n, n, n)
    calc.d_min = 2 * apix
    b_min = min(a.b_iso for ch in model for res in ch for a in res)
    # Gaussian wide enough for the fine grid (gemmi's refmac-compatible rule, 8π²/1.1·h² ≥ B_min + blur)
    calc.blur = max(0.0, 8 * math.pi**2 / 1.1 * spacing**2 - b_min)
    calc.add_model_density_to_grid(model)
    grid = np.array(calc.grid.array, dtype=np.float64, copy=True)  # [x, y, z]
    return np.ascontiguousarray(grid.transpose(2, 1, 0)), float(calc.blur)
