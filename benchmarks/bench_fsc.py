"""``cryovox fsc`` against cryoDRGN 4.3.1's ``cryodrgn_utils fsc`` on a 256³ pair, side by side.

The pair: a 256³ map simulated from an atomic model (PDB 1A28 at 0.8 Å/px by default) plus two
independent draws of white Gaussian noise (σ = ``--noise`` × the map's standard deviation), so
the FSC falls through 0.5 and 0.143 inside the band. Each tool runs as its command-line program
in a fresh process (wall time from start to exit, startup included); the resolutions each
reports are printed beside a plain NumPy FSC over the same rounded shells.

    .venv/bin/python benchmarks/bench_fsc.py [--box 256] [--repeat 3]

Needs ``bash benchmarks/cryodrgn_env.sh`` (``--skip-cryodrgn`` runs cryovox alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE))

from check_cryodrgn_star import CRYODRGN_VENV, cryodrgn_bin, cryodrgn_version  # noqa: E402


def timed(cmd: list[str], env: dict) -> tuple[float, str]:
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"failed: {' '.join(cmd)}\n{res.stdout}\n{res.stderr}")
    return dt, res.stdout + res.stderr


def numpy_fsc_resolution(a: np.ndarray, b: np.ndarray, apix: float) -> tuple[float, float]:
    """Interpolated 0.5 / 0.143 crossings of a plain NumPy FSC over rounded shells."""
    D = a.shape[0]
    A, B = np.fft.fftshift(np.fft.fftn(a)), np.fft.fftshift(np.fft.fftn(b))
    k = np.arange(D) - D // 2
    r = np.rint(np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)).astype(int).ravel()
    n = D // 2 + 1
    keep = r < n
    num = np.bincount(r[keep], np.real(A.ravel() * np.conj(B.ravel()))[keep], n)
    pa = np.bincount(r[keep], np.abs(A.ravel())[keep] ** 2, n)
    pb = np.bincount(r[keep], np.abs(B.ravel())[keep] ** 2, n)
    c = num / np.sqrt(pa * pb)
    out = []
    for t in (0.5, 0.143):
        i = next((i for i in range(1, n) if c[i] < t), None)
        s = n - 1 if i is None else i - 1 + (c[i - 1] - t) / (c[i - 1] - c[i])
        out.append(D * apix / s)
    return out[0], out[1]


def make_pair(work: Path, model: Path, box: int, apix: float, noise: float, seed: int = 0):
    from cryovox.io.mrc import write_map
    from cryovox.pipelines.simulate import simulate_map

    a, b = work / "map_a.mrc", work / "map_b.mrc"
    sim = simulate_map(model, apix=apix, box=box)
    rng = np.random.default_rng(seed)
    sigma = noise * float(sim.data.std())
    va = sim.data + sigma * rng.standard_normal(sim.data.shape).astype(np.float32)
    vb = sim.data + sigma * rng.standard_normal(sim.data.shape).astype(np.float32)
    write_map(a, va, apix)
    write_map(b, vb, apix)
    return a, b, va.astype(np.float64), vb.astype(np.float64)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--box", type=int, default=256)
    parser.add_argument("--apix", type=float, default=0.8)
    parser.add_argument("--noise", type=float, default=1.0, help="noise σ relative to the map's std")
    parser.add_argument("--model", default=str(SHARED / "models" / "1a28.pdb.gz"))
    parser.add_argument("--repeat", type=int, default=3, help="runs per tool (the best wall time is reported)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS for both tools")
    parser.add_argument("--skip-cryodrgn", action="store_true")
    args = parser.parse_args()
    if not Path(args.model).exists():
        args.model = str(ROOT / "examples" / "data" / "1hvr.pdb.gz")

    import torch

    import cryovox

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {platform.machine()}, {os.cpu_count()} cores, "
          f"threads {args.threads}; cryovox {cryovox.__version__}, torch {torch.__version__}"
          + ("" if args.skip_cryodrgn else f", cryoDRGN {cryodrgn_version()}"))
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        a, b, va, vb = make_pair(work, Path(args.model), args.box, args.apix, args.noise)
        ref05, ref0143 = numpy_fsc_resolution(va, vb, args.apix)
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore")
        rows = []
        cv_cmd = [sys.executable, "-m", "cryovox", "fsc", str(a), str(b), "-o", str(work / "cv"), "--force"]
        times, out = zip(*(timed(cv_cmd, env) for _ in range(args.repeat)))
        m = re.search(r"FSC=0.143: [^,]*, FSC=0.5: [^,]*", out[-1])
        rows.append(("cryovox fsc", min(times), m.group(0) if m else "?"))
        if not args.skip_cryodrgn:
            env_cd = {k: v for k, v in env.items() if k != "PYTHONPATH"}
            cd_cmd = [str(cryodrgn_bin("cryodrgn_utils")), "fsc", str(a), str(b), "-o", str(work / "cd.txt")]
            times_cd, out_cd = zip(*(timed(cd_cmd, env_cd) for _ in range(args.repeat)))
            r05 = re.search(r"res @ FSC=0.5: ([0-9.]+)", out_cd[-1])
            r0143 = re.search(r"res @ FSC=0.143: ([0-9.]+)", out_cd[-1])
            rows.insert(0, ("cryoDRGN cryodrgn_utils fsc", min(times_cd),
                            f"FSC=0.143: {r0143.group(1) if r0143 else '?'} Å, FSC=0.5: {r05.group(1) if r05 else '?'} Å "
                            "(shell labels one step high, no interpolation)"))
    print(f"\n{args.box}³ pair, {args.apix} Å/px; NumPy oracle: FSC=0.143 at {ref0143:.2f} Å, 0.5 at {ref05:.2f} Å")
    for label, t, what in rows:
        print(f"{label:28s} {t:8.2f} s   {what}")
    if len(rows) == 2:
        print(f"{'ratio':28s} {rows[0][1] / rows[1][1]:8.1f}× (cryoDRGN time / cryovox time, best of {args.repeat}, "
              "whole command incl. start-up; same machine, same run)")


if __name__ == "__main__":
    main()
