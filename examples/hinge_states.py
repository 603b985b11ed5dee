"""A continuous hinge motion as a series of density maps (for heterogeneity tests and the demo).

Chain B of a two-chain model (default: the progesterone-receptor dimer PDB 1A28 in
``examples/data``) turns about an axis through the dimer interface, perpendicular to the line
joining the chains' centres of mass, by ``linspace(0, ANGLE, STATES)`` degrees. Each state is
written as a PDB file and simulated with ``cryovox simulate map`` about one common centre, so
chain A stays put and only chain B moves between the maps.

    python examples/hinge_states.py -o states/ --states 10 --angle 40 --apix 3 --box 32
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = HERE / "data" / "1a28.pdb.gz"


def hinge_models(model: Path, outdir: Path, states: int, angle: float, moving: str = "B") -> list[Path]:
    """Write ``states`` PDB files with chain ``moving`` turned by ``linspace(0, angle, states)`` degrees."""
    import gemmi
    from scipy.spatial.transform import Rotation

    from cryovox.io.atomic import read_model

    st = read_model(model)
    chains = {ch.name: np.array([a.pos.tolist() for r in ch for a in r]) for ch in st[0]}
    if moving not in chains or len(chains) < 2:
        raise SystemExit(f"{model}: needs chain {moving} and at least one other chain")
    fixed = np.concatenate([xyz for name, xyz in chains.items() if name != moving]).mean(0)
    mobile = chains[moving].mean(0)
    d = (mobile - fixed) / np.linalg.norm(mobile - fixed)
    axis = np.cross(d, [0.0, 0.0, 1.0])
    if np.linalg.norm(axis) < 1e-6:
        axis = np.cross(d, [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    pivot = 0.5 * (fixed + mobile)
    outdir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, theta in enumerate(np.linspace(0.0, angle, states)):
        R = Rotation.from_rotvec(np.deg2rad(theta) * axis).as_matrix()
        s = read_model(model)
        for ch in s[0]:
            if ch.name == moving:
                for res in ch:
                    for at in res:
                        at.pos = gemmi.Position(*(R @ (np.array(at.pos.tolist()) - pivot) + pivot))
        path = outdir / f"state{k:02d}.pdb"
        s.write_pdb(str(path))
        paths.append(path)
    return paths


def hinge_maps(outdir: Path, *, states: int = 10, angle: float = 40.0, apix: float = 3.0, box: int = 32,
               model: Path = DEFAULT_MODEL) -> list[Path]:
    """Simulate one map per hinge state about the first state's centre of mass; returns the MRC paths."""
    from cryovox.io.atomic import center_of_mass, read_model
    from cryovox.pipelines.simulate import run_simulate_map

    pdbs = hinge_models(Path(model), Path(outdir), states, angle)
    center = tuple(float(c) for c in center_of_mass(read_model(pdbs[0])))
    maps = []
    for pdb in pdbs:
        out = pdb.with_suffix(".mrc")
        run_simulate_map(pdb, out, apix=apix, box=box, center=center, force=True)
        maps.append(out)
    return maps


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-o", "--outdir", type=Path, required=True)
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--states", type=int, default=10)
    p.add_argument("--angle", type=float, default=40.0, help="hinge range in degrees")
    p.add_argument("--apix", type=float, default=3.0)
    p.add_argument("--box", type=int, default=32)
    a = p.parse_args()
    for m in hinge_maps(a.outdir, states=a.states, angle=a.angle, apix=a.apix, box=a.box, model=a.model):
        print(m)


if __name__ == "__main__":
    main()
