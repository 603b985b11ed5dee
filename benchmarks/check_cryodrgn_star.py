"""Does cryoDRGN read the STAR that ``cryovox simulate particles`` writes the way cryovox does?

Runs cryoDRGN 4.3.1's own ``parse_pose_star`` and ``parse_ctf_star`` (in the separate venv made
by ``benchmarks/cryodrgn_env.sh``) on a simulated STAR and compares, particle by particle:

- rotation matrices: cryoDRGN's pose pickle vs cryovox's reader vs the simulation's ground truth;
- shifts: cryoDRGN's translations × box (pixels) vs cryovox's ``shifts_px`` vs the ground truth;
- CTF: cryoDRGN's CTF array (defocus U/V/angle, kV, Cs, amplitude contrast, pixel size, box).

    .venv/bin/python benchmarks/check_cryodrgn_star.py                 # simulates 500 particles first
    .venv/bin/python benchmarks/check_cryodrgn_star.py --star sim/particles.star

Exit status 0 when everything agrees to ``--tol`` (default 1e-5), 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import pickle
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CRYODRGN_VENV = Path(os.environ.get("CRYODRGN_VENV", HERE / "_venvs" / "cryodrgn"))


def cryodrgn_bin(name: str = "cryodrgn") -> Path:
    """Path of a cryoDRGN entry point in its venv; exits with a hint when the venv is missing."""
    path = CRYODRGN_VENV / "bin" / name
    if not path.exists():
        sys.exit(f"{path} not found: run `bash benchmarks/cryodrgn_env.sh` first")
    return path


def run_cryodrgn(*args, name: str = "cryodrgn", cwd: Path | None = None, quiet: bool = True) -> float:
    """Run a cryoDRGN command in its venv (CPU only); returns the wall time in seconds."""
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    cmd = [str(cryodrgn_bin(name)), *map(str, args)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=quiet, text=True)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"cryoDRGN failed: {' '.join(cmd)}\n{res.stdout if quiet else ''}\n{res.stderr if quiet else ''}")
    return dt


def cryodrgn_version() -> str:
    out = subprocess.run([str(CRYODRGN_VENV / "bin" / "python"), "-c", "import cryodrgn; print(cryodrgn.__version__)"],
                         capture_output=True, text=True)
    return out.stdout.strip()


def simulate_star(workdir: Path, n: int = 500) -> Path:
    """A small simulated set (1HVR, box 64, CTF with astigmatism, shifts up to ±6 px)."""
    from cryovox.cli import main

    truth = workdir / "truth.mrc"
    assert main(["simulate", "map", str(ROOT / "examples/data/1hvr.pdb.gz"), "--apix", "1.5", "--box", "64",
                 "-o", str(truth), "--force"]) == 0
    assert main(["simulate", "particles", str(truth), "-n", str(n), "--snr", "0.5", "--shift", "6",
                 "--astigmatism", "800", "--seed", "7", "-o", str(workdir / "sim"), "--force"]) == 0
    return workdir / "sim" / "particles.star"


def compare(star: Path, workdir: Path, tol: float) -> bool:
    from cryovox.io.particles import read_particles

    table = read_particles(star)
    box = int(table.box[0])
    apix = float(table.apix[0])
    pose_pkl, ctf_pkl = workdir / "pose.pkl", workdir / "ctf.pkl"
    run_cryodrgn("parse_pose_star", star, "-o", pose_pkl)
    run_cryodrgn("parse_ctf_star", star, "-o", ctf_pkl)
    with open(pose_pkl, "rb") as f:
        rot_cd, trans_cd = pickle.load(f)
    with open(ctf_pkl, "rb") as f:
        ctf_cd = pickle.load(f)
    rot_cd = np.asarray(rot_cd, dtype=np.float64)
    shift_cd = np.asarray(trans_cd, dtype=np.float64) * box           # fraction of the box → pixels
    rot_cv, shift_cv = table.rotations, table.shifts_px
    rows = [("rotations: cryoDRGN vs cryovox reader", np.abs(rot_cd - rot_cv).max()),
            ("shifts (px): cryoDRGN vs cryovox reader", np.abs(shift_cd - shift_cv).max())]
    truth_file = star.parent / "ground_truth.npz"
    if truth_file.exists():
        truth = np.load(truth_file)
        rows += [("rotations: cryoDRGN vs ground truth", np.abs(rot_cd - truth["rotations"]).max()),
                 ("shifts (px): cryoDRGN vs ground truth", np.abs(shift_cd - truth["shifts_px"]).max())]
    ctf = table.ctf
    # cryoDRGN CTF columns: D, Apix, dfU, dfV, dfang, kV, Cs, w, phase shift
    expected = np.stack([np.full(len(table), box), np.full(len(table), apix), ctf["defocus_u"], ctf["defocus_v"],
                         ctf["defocus_angle"], ctf["voltage"], ctf["cs"], ctf["amplitude_contrast"],
                         ctf["phase_shift"]], 1)
    scale = np.maximum(np.abs(expected), 1.0)
    rows.append(("CTF array (relative): cryoDRGN vs cryovox reader",
                 (np.abs(np.asarray(ctf_cd, dtype=np.float64) - expected) / scale).max()))
    print(f"STAR: {star} ({len(table)} particles, box {box}, {apix:g} Å/px); cryoDRGN {cryodrgn_version()}")
    ok = True
    for label, value in rows:
        # the pickled CTF and poses are float32 in cryoDRGN: compare against float32 precision there
        limit = max(tol, 2e-6 if "CTF" in label else tol)
        good = value <= limit
        ok &= good
        print(f"  {label:<52s} max |Δ| = {value:.2e}  {'OK' if good else 'MISMATCH'}")
    print(f"  shifts span ±{np.abs(shift_cv).max():.2f} px; astigmatism up to "
          f"{np.max(ctf['defocus_u'] - ctf['defocus_v']):.0f} Å")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--star", type=Path, help="STAR written by cryovox simulate particles (default: simulate one)")
    parser.add_argument("--workdir", type=Path, help="folder for the simulated data and pickles (default: temporary)")
    parser.add_argument("--particles", type=int, default=500)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        star = args.star or simulate_star(workdir, args.particles)
        ok = compare(star.resolve(), workdir, args.tol)
    print("cryoDRGN's parse_pose_star/parse_ctf_star agree with cryovox" if ok else "MISMATCH")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
