#!/usr/bin/env python
"""Build a synthetic EMDB mirror from atomic models, for ``cryovox curate`` tests and demos.

Each entry is a symmetric assembly of copies of one PDB model (``/work/shared/data/models``
or ``examples/data``): rings of ``m`` copies (C_m), stacked in ``L`` layers with every other
layer flipped (D_m for two layers), ``m`` and ``L`` chosen for the most compact shape, so
molecular weights span the 100–1500 kDa filter. A 1.5 MDa assembly is about 200–250 Å
across: curate it into a 64³ box at 4 Å/px (or 32³ at 8 Å/px); for 32³ at 4 Å/px build
with ``--max-kda 400``.
The density of one copy comes from ``cryovox simulate map``
(:func:`cryovox.pipelines.simulate.simulate_map`, cached per model and voxel size); copies
are placed by rotating and shifting that map (cubic B-spline resampling,
:func:`cryovox.core.transform.affine_resample`) with a small random rigid perturbation per
copy, and the assembly gets the entry's global B-factor and a low-pass to its resolution. The primary contour level
is the one that encloses the assembly's protein volume (mass × 1.21 Å³/Da). Headers follow
the EMDB v3 schema (:func:`cryovox.io.emdb.header_xml`).

Entries vary model, copy number, layer count, perturbations, B-factor (0–90 Å²),
resolution (3.5–9 Å) and voxel size (1.6, 2.0 or 2.4 Å, coarser for the largest
assemblies), so ``--n 200`` gives 200 distinct maps in a few minutes.

``--bad`` adds one entry of each kind that curate must reject: helical, tomography, mass
too low, mass too high, poor resolution (15 Å; rejected with ``--max-resolution`` < 15),
corrupt gzip, header without map, map without header, non-cubic map, voxel size that
disagrees with the header. ``manifest.json`` in OUT lists every entry with what curate
should do with it (``expect``: keep/reject, ``category``: the expected rejection category).

Layouts: ``tree`` (EMDB's ``EMD-N/header/emd-N-v30.xml`` + ``EMD-N/map/emd_N.map.gz``),
``flat`` (all files in OUT) or ``csv`` (maps + ``metadata.csv``).

Example: python examples/make_mirror.py mirror/ --n 12 --bad
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIRS = (ROOT / "examples" / "data", ROOT.parent / "shared" / "data" / "models")
MODEL_SUFFIXES = (".pdb", ".pdb.gz", ".cif", ".cif.gz", ".ent", ".ent.gz")
APIX_CHOICES = (1.6, 2.0, 2.4)
BAD_KINDS = ("helical", "tomography", "mass_low", "mass_high", "poor_resolution", "corrupt_gzip",
             "header_only", "map_only", "non_cubic", "apix_mismatch")
#: the rejection category curate gives each bad kind
EXPECTED_CATEGORY = {
    "helical": "method", "tomography": "method", "mass_low": "mass", "mass_high": "mass",
    "poor_resolution": "resolution", "corrupt_gzip": "unreadable_map", "header_only": "no_map",
    "map_only": "no_header", "non_cubic": "non_cubic", "apix_mismatch": "header_mismatch",
}
MAX_PER_RING = 12
PROTEIN_A3_PER_DA = 1.21


def find_models(dirs=MODEL_DIRS) -> list[Path]:
    """Atomic models available to build from: all folders, a name found twice taken from the first."""
    found: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for p in sorted(d.iterdir()):
                stem = p.name.lower().split(".")[0]
                if p.name.lower().endswith(MODEL_SUFFIXES) and stem not in found:
                    found[stem] = p
    if not found:
        raise SystemExit(f"no PDB/mmCIF models found in {', '.join(str(d) for d in dirs)}")
    return [found[k] for k in sorted(found)]


@dataclass
class Spec:
    """One entry to build. kind: 'good' or one of BAD_KINDS."""

    entry_id: str
    model: str
    copies: int
    per_ring: int
    layers: int
    bfactor: float
    resolution: float
    apix: float
    seed: int
    kind: str = "good"
    method: str = "singleParticle"


@dataclass
class Monomer:
    data: np.ndarray      # [z, y, x], centre of mass at voxel box // 2
    apix: float
    mass_kda: float
    r_max: float          # Å, farthest atom from the centre of mass
    rg: float             # Å, radius of gyration


MAX_BOX = 128  # voxels: larger assemblies get a coarser voxel size


class MonomerCache:
    """Maps of single copies from ``cryovox simulate map``, cached per (model, voxel size)."""

    def __init__(self):
        self._cache: dict[tuple, Monomer] = {}
        self._geometry: dict[str, tuple[float, float, float]] = {}

    def geometry(self, model: Path) -> tuple[float, float, float]:
        """(mass kDa, farthest atom from the centre of mass Å, radius of gyration Å)."""
        key = str(model)
        if key not in self._geometry:
            from cryovox.io.atomic import atom_positions, center_of_mass, model_mass_kda, read_model

            st = read_model(model)
            d = np.linalg.norm(atom_positions(st) - center_of_mass(st), axis=1)
            self._geometry[key] = (model_mass_kda(st), float(d.max()), float(np.sqrt((d**2).mean())))
        return self._geometry[key]

    def get(self, model: Path, apix: float) -> Monomer:
        key = (str(model), round(apix, 4))
        if key not in self._cache:
            from cryovox.pipelines.simulate import simulate_map

            mass, r_max, rg = self.geometry(model)
            box = 2 * int(math.ceil((r_max + 3 * apix) / apix)) + 2
            sim = simulate_map(model, apix=apix, box=box)
            self._cache[key] = Monomer(sim.data.astype(np.float32), apix, sim.mass_kda, r_max, rg)
        return self._cache[key]


def _rz(a: float) -> np.ndarray:
    c, s = math.cos(a), math.sin(a)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def placements(mono: Monomer, per_ring: int, layers: int, rng: np.random.Generator,
               perturb_deg: float = 4.0, perturb_a: float = 1.5) -> list[tuple[np.ndarray, np.ndarray]]:
    """(rotation, translation Å (x, y, z)) of every copy: ``layers`` rings of ``per_ring``
    about z, odd layers flipped by a 2-fold about x, each copy perturbed a little."""
    from cryovox.core.rotations import rotvec_to_matrix

    ring_r = ring_radius(per_ring, mono.rg)
    dz = 2.2 * mono.rg
    flip = np.diag([1.0, -1.0, -1.0])
    out = []
    for layer in range(layers):
        z = (layer - (layers - 1) / 2) * dz
        base = flip if layer % 2 else np.eye(3)
        for k in range(per_ring):
            Q = _rz(2 * math.pi * (k + 0.5 * (layer % 2)) / per_ring)
            t = Q @ np.array([ring_r, 0.0, 0.0]) + np.array([0.0, 0.0, z])
            axis = rng.normal(size=3)
            axis /= np.linalg.norm(axis)
            P = rotvec_to_matrix(axis * math.radians(rng.normal(0, perturb_deg))).numpy()
            out.append((Q @ base @ P, t + rng.normal(0, perturb_a, 3)))
    return out


def assemble_map(mono: Monomer, poses: list[tuple[np.ndarray, np.ndarray]], resolution: float | None,
                 bfactor: float = 0.0) -> np.ndarray:
    """Sum of rotated, shifted copies of the monomer map in a cubic box that holds them all,
    with a global B-factor ``exp(-B s²/4)`` (Å²) and a low-pass at ``resolution`` Å."""
    import torch

    from cryovox.core.filters import apply_radial_filter, lowpass_weights, radial_frequency
    from cryovox.core.transform import affine_resample, spline_prefilter

    apix = mono.apix
    reach = max(np.abs(t).max() for _, t in poses) + mono.r_max + 6 * apix
    N = 2 * int(math.ceil(reach / apix)) + 2
    big = torch.zeros((N, N, N), dtype=torch.float32)
    m = torch.from_numpy(mono.data.astype(np.float32))
    M = m.shape[-1]
    coef = spline_prefilter(m)
    for Q, t in poses:
        tv = t / apix
        ti = np.round(tv).astype(int)
        f = torch.from_numpy(tv - ti).float()           # sub-voxel part, (x, y, z)
        Qt = torch.from_numpy(Q.T.copy()).float()
        piece = affine_resample(m, Qt, shift=-(Qt @ f), order=3, prefiltered=coef)
        start = [N // 2 + int(ti[2]) - M // 2, N // 2 + int(ti[1]) - M // 2, N // 2 + int(ti[0]) - M // 2]
        big[start[0]:start[0] + M, start[1]:start[1] + M, start[2]:start[2] + M] += piece
    if bfactor or resolution:  # one Fourier filter: B-factor × low-pass
        w = torch.exp(-bfactor * (radial_frequency(N, 3) / (N * apix)) ** 2 / 4)
        if resolution:
            w = w * lowpass_weights(N, 3, N * apix / resolution)
        big = apply_radial_filter(big, w, 3)
    return big.to(torch.float32).numpy()


def contour_for_mass(data: np.ndarray, mass_kda: float, apix: float) -> float:
    """The level enclosing the protein volume of ``mass_kda`` (1.21 Å³/Da), 4 significant digits."""
    n = int(round(mass_kda * 1000 * PROTEIN_A3_PER_DA / apix**3))
    n = min(max(n, 1), data.size)
    level = float(np.partition(data.ravel(), data.size - n)[data.size - n])
    return float(f"{level:.4g}")


def plan(n_good: int, bad: bool, seed: int, models: list[Path], first_id: int = 10001,
         apix_choices=APIX_CHOICES, max_kda: float = 1400.0) -> list[Spec]:
    """Specs of ``n_good`` entries to keep (plus the bad kinds), deterministic from ``seed``.

    Good entries' masses are drawn log-uniformly in [120, max_kda] kDa."""
    from cryovox.io.atomic import model_mass_kda, read_model

    masses = {m: model_mass_kda(read_model(m)) for m in models}
    specs = []
    for i in range(n_good):
        rng = np.random.default_rng([seed, i])
        model = models[i % len(models)]
        mm = masses[model]
        target = math.exp(rng.uniform(math.log(120), math.log(max(max_kda, 121.0))))
        copies = int(np.clip(round(target / mm), 2, 48))
        while copies * mm < 110:
            copies += 1
        while copies > 1 and copies * mm > min(1450, max(max_kda, 1.1 * mm)) / 1.1:  # room for _rings
            copies -= 1
        specs.append(Spec(f"EMD-{first_id + i}", str(model), copies, 0, 0, float(rng.uniform(0, 90)),
                          float(rng.uniform(3.5, 9.0)), float(rng.choice(apix_choices)), int(rng.integers(2**31))))
    if bad:
        small = min(models, key=lambda m: masses[m])
        big = max(models, key=lambda m: masses[m])
        mid = sorted(models, key=lambda m: masses[m])[len(models) // 2]
        nid = first_id + n_good
        for j, kind in enumerate(BAD_KINDS):
            rng = np.random.default_rng([seed, 10_000 + j])
            apix = max(apix_choices)
            model, copies, res = mid, max(2, int(math.ceil(130 / masses[mid]))), max(8.0, 2.2 * apix)
            if kind == "mass_low":
                model, copies = small, 1
            elif kind == "mass_high":
                model, copies, apix = big, int(math.ceil(1700 / masses[big])), 1.5 * apix
                res = max(10.0, 2.2 * apix)
            elif kind == "poor_resolution":
                res = 15.0
            method = {"helical": "helical", "tomography": "tomography"}.get(kind, "singleParticle")
            specs.append(Spec(f"EMD-{nid + j}", str(model), copies, 0, 0, 20.0, res, apix,
                              int(rng.integers(2**31)), kind=kind, method=method))
    return specs


def ring_radius(per_ring: int, rg: float) -> float:
    """Radius (Å) of a ring of ``per_ring`` copies whose neighbours sit 2.2 rg apart."""
    return 0.0 if per_ring == 1 else 1.1 * rg / math.sin(math.pi / per_ring)


def _rings(copies: int, rg: float) -> tuple[int, int]:
    """(per_ring, layers) for about ``copies`` copies (at most 10 % more): the most compact
    stack of rings (smallest larger of width and height), at most MAX_PER_RING per ring."""
    best = None
    for layers in range(1, copies + 1):
        per_ring = int(math.ceil(copies / layers))
        if per_ring > MAX_PER_RING or per_ring * layers > copies + int(0.1 * copies):
            continue  # at most 10 % more copies than asked for
        width = 2 * (ring_radius(per_ring, rg) + 1.3 * rg)
        height = (layers - 1) * 2.2 * rg + 2 * 1.3 * rg
        key = (max(width, height), per_ring * layers)
        if best is None or key < best[0]:
            best = (key, per_ring, layers)
        if per_ring == 1:
            break
    return best[1], best[2]


def _write_map(path: Path, data: np.ndarray, apix: float, gz: bool) -> None:
    from cryovox.io.mrc import write_map

    N = data.shape[-1]
    if gz:
        plain = path.with_name(path.name[:-3])
        write_map(plain, data, apix, nstart=(-(N // 2),) * 3)
        with open(plain, "rb") as src, gzip.open(path, "wb", compresslevel=1) as dst:
            dst.write(src.read())
        plain.unlink()
    else:
        write_map(path, data, apix, nstart=(-(N // 2),) * 3)


def build_entry(spec: Spec, cache: MonomerCache) -> tuple[np.ndarray, dict]:
    """The map of one spec and the facts for its header."""
    _, r_max, rg = cache.geometry(Path(spec.model))
    spec.per_ring, spec.layers = _rings(spec.copies, rg)
    spec.copies = spec.per_ring * spec.layers
    ring_r = ring_radius(spec.per_ring, rg)
    reach = math.hypot(ring_r, (spec.layers - 1) * 1.1 * rg) + r_max + 6 * spec.apix
    if 2 * reach / spec.apix > MAX_BOX:  # keep maps small: coarser voxels for big assemblies
        spec.apix = math.ceil(8 * reach / MAX_BOX) / 4  # 0.25 Å steps: few distinct monomer maps
        spec.resolution = max(spec.resolution, round(2.2 * spec.apix, 2))
    spec.resolution = round(max(spec.resolution, 2.2 * spec.apix), 2)
    mono = cache.get(Path(spec.model), spec.apix)
    rng = np.random.default_rng(spec.seed)
    poses = placements(mono, spec.per_ring, spec.layers, rng)
    data = assemble_map(mono, poses, spec.resolution if spec.resolution >= 2 * spec.apix else None, spec.bfactor)
    mass = mono.mass_kda * spec.copies
    facts = dict(method=spec.method, resolution=spec.resolution, mw_kda=mass,
                 contour=contour_for_mass(data, mass, spec.apix), apix=spec.apix,
                 components=[(Path(spec.model).name.split(".")[0], mono.mass_kda, spec.copies)],
                 title=f"{Path(spec.model).name.split('.')[0]} x{spec.copies} ({spec.layers} ring(s) of {spec.per_ring})")
    return data, facts


def write_entry(out: Path, layout: str, spec: Spec, data: np.ndarray, facts: dict, gz: bool = True,
                csv_rows: list | None = None) -> None:
    """Write one entry's header and map in the chosen layout, bad kinds as they should be."""
    from cryovox.io.emdb import header_xml

    num = int(spec.entry_id.split("-")[1])
    map_name = f"emd_{num}.map" + (".gz" if gz else "")
    kind = spec.kind
    apix_map = spec.apix
    if kind == "non_cubic":
        data = np.ascontiguousarray(data[:-6])
    if kind == "apix_mismatch":
        apix_map = round(spec.apix * 1.1, 4)
    z, y, x = data.shape
    if layout == "tree":
        hdir, mdir = out / spec.entry_id / "header", out / spec.entry_id / "map"
        header_path, map_path = hdir / f"emd-{num}-v30.xml", mdir / map_name
    else:
        header_path, map_path = out / f"emd-{num}.xml", out / map_name
    if kind != "map_only":
        if layout == "csv":
            csv_rows.append({"id": spec.entry_id, "method": facts["method"], "resolution": facts["resolution"],
                             "mw_kda": round(facts["mw_kda"], 3), "contour": facts["contour"], "apix": facts["apix"],
                             "map": map_name})
        else:
            header_path.parent.mkdir(parents=True, exist_ok=True)
            header_path.write_text(header_xml(spec.entry_id, dims=(x, y, z), map_file=map_name, **facts),
                                   encoding="utf-8")
    if kind != "header_only":
        map_path.parent.mkdir(parents=True, exist_ok=True)
        _write_map(map_path, data, apix_map, gz)
        if kind == "corrupt_gzip":  # written gzipped (make_mirror forces gz for it); flip bytes mid-stream
            raw = bytearray(map_path.read_bytes())
            mid = len(raw) // 2
            raw[mid:mid + 64] = bytes((b ^ 0x5A) for b in raw[mid:mid + 64])
            map_path.write_bytes(bytes(raw))


def make_mirror(out: Path, n_good: int = 12, bad: bool = False, layout: str = "tree", seed: int = 0,
                gz: bool = True, models: list[Path] | None = None, apix_choices=APIX_CHOICES,
                first_id: int = 10001, max_kda: float = 1400.0, log=print) -> list[dict]:
    """Build the mirror in ``out`` and return the manifest (also written to ``out/manifest.json``)."""
    if layout not in ("tree", "flat", "csv"):
        raise ValueError(f"layout must be tree, flat or csv, not {layout!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    models = models or find_models()
    specs = plan(n_good, bad, seed, models, first_id=first_id, apix_choices=apix_choices, max_kda=max_kda)
    cache = MonomerCache()
    manifest, csv_rows = [], []
    for i, spec in enumerate(specs):
        data, facts = build_entry(spec, cache)
        write_entry(out, layout, spec, data, facts, gz=gz or spec.kind == "corrupt_gzip", csv_rows=csv_rows)
        expect = "keep" if spec.kind == "good" else "reject"
        manifest.append({**asdict(spec), "expect": expect, "category": EXPECTED_CATEGORY.get(spec.kind, ""),
                         "mass_kda": facts["mw_kda"], "contour": facts["contour"], "box": int(data.shape[-1])})
        if log:
            log(f"[{i + 1}/{len(specs)}] {spec.entry_id} {spec.kind:15s} {facts['title']}: {facts['mw_kda']:.0f} kDa, "
                f"{spec.resolution:.1f} Å, {spec.apix:g} Å/px, box {data.shape[-1]}")
    if layout == "csv":
        import csv

        with open(out / "metadata.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=["id", "method", "resolution", "mw_kda", "contour", "apix", "map"])
            w.writeheader()
            w.writerows(csv_rows)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return manifest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 epilog="Example: python examples/make_mirror.py mirror/ --n 12 --bad")
    ap.add_argument("out", type=Path, help="output folder (created)")
    ap.add_argument("--n", type=int, default=12, help="entries that curate should keep (default 12)")
    ap.add_argument("--bad", action="store_true", help="add one entry of each kind curate must reject")
    ap.add_argument("--layout", choices=("tree", "flat", "csv"), default="tree")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--plain", action="store_true", help="write .map instead of .map.gz (faster)")
    ap.add_argument("--apix", type=float, nargs="+", default=list(APIX_CHOICES),
                    help="voxel sizes (Å) to draw from (default 1.6 2.0 2.4)")
    ap.add_argument("--max-kda", type=float, default=1400.0, help="largest assembly to build (kDa, default 1400)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: the maps are small)")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(max(1, args.threads))
    make_mirror(args.out, args.n, args.bad, args.layout, args.seed, gz=not args.plain,
                apix_choices=tuple(args.apix), max_kda=args.max_kda)
    return 0


if __name__ == "__main__":
    sys.exit(main())
