"""``cryovox reconstruct`` against cryoDRGN 4.3.1's ``backproject_voxel``, side by side in one run.

1. Simulated data (the "(b)" check at full size): a map from an atomic model, ``--particles``
   images at SNR 0.1 with CTF (astigmatic) and shifts, written by ``cryovox simulate``. Both
   tools rebuild the map from the same files (cryovox from the STAR; cryoDRGN from the stack with
   the pose/CTF pickles its own ``parse_pose_star`` / ``parse_ctf_star`` make from that STAR).
   Reported: wall time of each command (process start to exit, same machine, same thread count)
   and FSC 0.5 / 0.143 of each map against the true map (cryovox's FSC: rounded shells,
   interpolated crossings).
2. cryoDRGN's hand data (``../shared/data/cryodrgn/hand*``, 100 projections, no CTF): both tools
   with ``hand_rot.pkl`` and ``hand_rot_trans.pkl``; Pearson correlation with ``hand-vol.mrc``.

    .venv/bin/python benchmarks/bench_reconstruct.py                       # 10k particles, box 128
    .venv/bin/python benchmarks/bench_reconstruct.py --particles 5000 --box 96 --apix 1.6

Needs ``bash benchmarks/cryodrgn_env.sh`` (``--skip-cryodrgn`` runs cryovox alone).
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
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

from check_cryodrgn_star import cryodrgn_version, run_cryodrgn  # noqa: E402


def run_cryovox(*args, threads: int) -> tuple[float, str]:
    """``python -m cryovox ARGS`` in a fresh process: (wall seconds, stderr)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "cryovox", *map(str, args)]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    dt = time.perf_counter() - t0
    if res.returncode != 0:
        sys.exit(f"cryovox failed: {' '.join(cmd)}\n{res.stderr}")
    return dt, res.stderr


def read(path: Path) -> np.ndarray:
    from cryovox.io.mrc import read_map

    return read_map(path).data.astype(np.float64)


def fsc_vs_truth(rec: np.ndarray, truth: np.ndarray, apix: float) -> tuple[float, float, np.ndarray]:
    import torch

    from cryovox.core.fsc import fsc, resolution_at

    c = fsc(torch.from_numpy(rec), torch.from_numpy(truth))
    D = truth.shape[-1]
    return resolution_at(c, 0.5, apix, D), resolution_at(c, 0.143, apix, D), c.numpy()


def corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


def simulated(args, work: Path) -> dict:
    model = Path(args.model)
    truth = work / "truth.mrc"
    sim = work / "sim"
    env_threads = dict(threads=args.threads)
    if not (sim / "particles.star").exists() or args.fresh:
        t_map, _ = run_cryovox("simulate", "map", model, "--apix", args.apix, "--box", args.box, "-o", truth,
                               "--force", **env_threads)
        t_sim, _ = run_cryovox("simulate", "particles", truth, "-n", args.particles, "--snr", args.snr,
                               "--shift", args.shift, "--astigmatism", 500, "--seed", 1, "-o", sim, "--force",
                               **env_threads)
        print(f"simulated {args.particles} particles (box {args.box}, {args.apix} Å/px, SNR {args.snr}, CTF, "
              f"shifts ±{args.shift} px) from {model.name}: map {t_map:.1f} s, particles {t_sim:.1f} s")
    out = {}
    t, err = run_cryovox("reconstruct", sim / "particles.star", "-o", work / "cryovox_rec", "--force", **env_threads)
    m = re.search(r"reconstructed .*", err)
    print(f"cryovox reconstruct: {m.group(0) if m else ''}")
    truth_map = read(truth)
    r05, r0143, _ = fsc_vs_truth(read(work / "cryovox_rec" / "map.mrc"), truth_map, args.apix)
    out["cryovox"] = dict(time=t, fsc05=r05, fsc0143=r0143)
    if not args.skip_cryodrgn:
        env = os.environ
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
        t_parse = run_cryodrgn("parse_pose_star", sim / "particles.star", "-o", work / "pose.pkl")
        t_parse += run_cryodrgn("parse_ctf_star", sim / "particles.star", "-o", work / "ctf.pkl")
        shutil.rmtree(work / "cryodrgn_rec", ignore_errors=True)
        t = run_cryodrgn("backproject_voxel", sim / "particles.mrcs", "--poses", work / "pose.pkl", "--ctf",
                         work / "ctf.pkl", "-o", work / "cryodrgn_rec")
        os.environ.clear()
        os.environ.update(env)
        r05, r0143, _ = fsc_vs_truth(read(work / "cryodrgn_rec" / "backproject.mrc"), truth_map, args.apix)
        out["cryodrgn"] = dict(time=t, fsc05=r05, fsc0143=r0143, parse=t_parse)
    return out


def hand(args, work: Path) -> dict:
    d = SHARED / "cryodrgn"
    if not (d / "hand.mrcs").exists():
        print(f"{d}: hand data absent, skipped")
        return {}
    ref = read(d / "hand-vol.mrc")
    out = {}
    for poses in ("hand_rot.pkl", "hand_rot_trans.pkl"):
        o = work / f"hand_cryovox_{poses[:-4]}"
        run_cryovox("reconstruct", d / "hand.mrcs", "--poses", d / poses, "-o", o, "--force", threads=args.threads)
        out[("cryovox", poses)] = corr(read(o / "map.mrc"), ref)
        if not args.skip_cryodrgn:
            o = work / f"hand_cryodrgn_{poses[:-4]}"
            shutil.rmtree(o, ignore_errors=True)
            # projections without CTF, positive density: no inversion (cryoDRGN inverts by default)
            run_cryodrgn("backproject_voxel", d / "hand.mrcs", "--poses", d / poses, "--uninvert-data", "-o", o)
            out[("cryodrgn", poses)] = corr(read(o / "backproject.mrc"), ref)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--particles", type=int, default=10000)
    parser.add_argument("--box", type=int, default=128)
    parser.add_argument("--apix", type=float, default=1.2)
    parser.add_argument("--snr", type=float, default=0.1)
    parser.add_argument("--shift", type=float, default=4.0, help="maximum shift (px)")
    parser.add_argument("--model", default=str(SHARED / "models" / "1a28.pdb.gz"),
                        help="atomic model (default: PDB 1A28, 54 kDa, from ../shared/data/models)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="OMP_NUM_THREADS for both tools")
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "cryovox_bench" / "reconstruct")
    parser.add_argument("--fresh", action="store_true", help="simulate again even if the data exist")
    parser.add_argument("--skip-cryodrgn", action="store_true")
    parser.add_argument("--skip-hand", action="store_true")
    args = parser.parse_args()
    if not Path(args.model).exists():
        args.model = str(ROOT / "examples" / "data" / "1hvr.pdb.gz")
    work = args.workdir / f"n{args.particles}_b{args.box}"
    work.mkdir(parents=True, exist_ok=True)

    import torch

    import cryovox

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {platform.node()}  {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores, threads {args.threads}; cryovox {cryovox.__version__}, torch {torch.__version__}"
          + ("" if args.skip_cryodrgn else f", cryoDRGN {cryodrgn_version()}"))
    print(f"# command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    res = simulated(args, work)
    print(f"\n{'':28s} {'wall time':>10s} {'FSC0.5 vs truth':>16s} {'FSC0.143 vs truth':>18s}")
    rows = [("cryoDRGN backproject_voxel", "cryodrgn"), ("cryovox reconstruct", "cryovox")]
    for label, key in rows:
        if key in res:
            r = res[key]
            print(f"{label:28s} {r['time']:9.1f}s {r['fsc05']:14.2f} Å {r['fsc0143']:16.2f} Å")
    if "cryodrgn" in res:
        print(f"{'ratio':28s} {res['cryodrgn']['time'] / res['cryovox']['time']:9.1f}× (cryoDRGN time / cryovox "
              f"time; cryoDRGN's parse_pose_star + parse_ctf_star took {res['cryodrgn']['parse']:.1f} s more)")
    ok = res["cryovox"]["fsc05"] < 3 * args.apix
    print(f"(b) check: cryovox FSC 0.5 vs truth {res['cryovox']['fsc05']:.2f} Å "
          f"{'<' if ok else '>='} 3 × pixel size = {3 * args.apix:.2f} Å: {'PASS' if ok else 'FAIL'}")
    if not args.skip_hand:
        h = hand(args, work)
        if h:
            print("\nhand data (100 × 64 px, no CTF): correlation with hand-vol.mrc")
            for poses in ("hand_rot.pkl", "hand_rot_trans.pkl"):
                line = f"  poses {poses:20s} cryovox {h[('cryovox', poses)]:.4f}"
                if ("cryodrgn", poses) in h:
                    line += f"   cryoDRGN {h[('cryodrgn', poses)]:.4f}"
                print(line)


if __name__ == "__main__":
    main()
