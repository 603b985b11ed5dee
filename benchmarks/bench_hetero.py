"""``cryovox train-hetero`` (SFBP) against cryoDRGN 4.3.1 ``train_vae`` ("cryoDRGN-small"), side by side.

Data: a continuous hinge motion. Chain B of the progesterone-receptor dimer 1A28 (PDB, in
``../shared/data/models``) turns about an axis through the dimer interface (perpendicular to the
line joining the chains' centres of mass) by ``0 … --angle`` degrees, sampled as ``--states``
models (gemmi moves the atoms); each becomes a map with ``cryovox simulate map`` (then shifted by
the change of the model's centre of mass, so that chain A stays put in every map), and
``cryovox simulate particles`` draws ``--particles`` images from the states with equal weights
(random poses, CTF 1–2.5 µm, shifts up to ±``--shift`` px, SNR ``--snr``).

Both tools train for ``--epochs`` epochs with zdim 8 on the same files (cryovox from the STAR;
cryoDRGN from the STAR with the pose/CTF pickles its own ``parse_pose_star``/``parse_ctf_star``
make, ``--enc-dim 256 --dec-dim 256``, 3 layers each, its other defaults). Reported per tool:

1. |Spearman ρ| between PC1 of the final epoch's latent means and the true state index;
2. per state, the FSC-AUC (:func:`cryovox.core.fsc.fsc_auc`, unmasked, normalised to 1) between
   the map decoded at the mean latent of that state's particles and the state's true map;
3. seconds per epoch (wall, from each tool's own log): median and fastest epoch, and their ratios
   (the fastest epoch is the least disturbed by other work on a shared machine);
4. cryovox's decode time of a full volume (CPU, median of 20; also at box 64 for a fresh model
   when the run is at another box).

    .venv/bin/python benchmarks/bench_hetero.py                          # box 32, 5000 particles, 20 epochs
    .venv/bin/python benchmarks/bench_hetero.py --box 64 --skip-cryodrgn --epochs 10
    .venv/bin/python benchmarks/bench_hetero.py --record                  # append to benchmarks/RESULTS.md

Needs ``bash benchmarks/cryodrgn_env.sh`` (``--skip-cryodrgn`` runs cryovox alone).
"""

from __future__ import annotations

import argparse
import os
import pickle
import re
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared" / "data"
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------ data
def hinge_models(model: Path, outdir: Path, states: int, angle: float) -> list[Path]:
    """Write ``states`` PDB files with chain B turned by ``linspace(0, angle, states)`` degrees."""
    import gemmi

    from cryovox.io.atomic import read_model

    st = read_model(model)
    chains = {ch.name: np.array([a.pos.tolist() for r in ch for a in r]) for ch in st[0]}
    a, b = chains["A"].mean(0), chains["B"].mean(0)
    d = (b - a) / np.linalg.norm(b - a)
    axis = np.cross(d, [0.0, 0.0, 1.0])
    axis /= np.linalg.norm(axis)
    pivot = 0.5 * (a + b)
    paths = []
    for k, theta in enumerate(np.linspace(0.0, angle, states)):
        from scipy.spatial.transform import Rotation

        R = Rotation.from_rotvec(np.deg2rad(theta) * axis).as_matrix()
        s = read_model(model)
        for ch in s[0]:
            if ch.name != "B":
                continue
            for res in ch:
                for at in res:
                    p = R @ (np.array(at.pos.tolist()) - pivot) + pivot
                    at.pos = gemmi.Position(*p)
        path = outdir / f"state{k:02d}.pdb"
        s.write_pdb(str(path))
        paths.append(path)
    return paths


def fourier_shift_3d(vol: np.ndarray, shift_xyz: np.ndarray) -> np.ndarray:
    """Translate a ``[z, y, x]`` volume by ``shift_xyz`` voxels (content at r moves to r + shift; periodic)."""
    D = vol.shape[-1]
    k = np.fft.fftfreq(D)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    phase = np.exp(-2j * np.pi * (kx * shift_xyz[0] + ky * shift_xyz[1] + kz * shift_xyz[2]))
    return np.real(np.fft.ifftn(np.fft.fftn(vol) * phase)).astype(np.float32)


def make_data(workdir: Path, args) -> tuple[Path, np.ndarray, list[np.ndarray]]:
    """States → maps → particles. Returns (STAR, true state per particle, true maps)."""
    from cryovox.io.mrc import read_map, write_map
    from cryovox.pipelines.simulate import simulate_map, simulate_particles

    star = workdir / "sim" / "particles.star"
    maps = [workdir / f"state{k:02d}.mrc" for k in range(args.states)]
    if not (star.exists() and all(m.exists() for m in maps)):
        pdbs = hinge_models(args.model, workdir, args.states, args.angle)
        ref = None
        for pdb, out in zip(pdbs, maps):
            sim = simulate_map(pdb, apix=args.apix, box=args.box)
            com = np.array(sim.center)
            ref = com if ref is None else ref
            data = fourier_shift_3d(sim.data, (com - ref) / args.apix)
            write_map(out, data, args.apix)
        simulate_particles(maps, workdir / "sim", n=args.particles, snr=args.snr, shift=args.shift,
                           defocus=(10000.0, 25000.0), seed=args.seed)
    states = np.load(workdir / "sim" / "states.npy")
    truth = [read_map(m).data for m in maps]
    return star, states, truth


# ------------------------------------------------------------------------------------ evaluation
def evaluate(z: np.ndarray, states: np.ndarray, truth: list[np.ndarray], decode) -> dict:
    """Spearman ρ of PC1 vs state; FSC-AUC per state of decode(mean z of the state) vs its true map."""
    import torch
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA

    from cryovox.core.fsc import fsc, fsc_auc

    pc1 = PCA(n_components=1).fit_transform(z)[:, 0]
    rho = abs(float(spearmanr(pc1, states)[0]))
    means = np.stack([z[states == k].mean(0) for k in range(len(truth))])
    aucs = []
    for k, vol in enumerate(decode(means)):
        curve = fsc(torch.from_numpy(np.ascontiguousarray(vol)).double(), torch.from_numpy(truth[k]).double())
        aucs.append(fsc_auc(curve))
    return {"rho": rho, "auc": np.array(aucs)}


def decode_time(model, repeats: int = 20) -> float:
    """Median seconds to decode one full real-space volume (CPU)."""
    import torch

    z = torch.zeros(1, model.zdim)
    with torch.no_grad():
        model.decode_volume(z)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model.decode_volume(z)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


# ------------------------------------------------------------------------------------ the tools
def run_cryovox(star: Path, workdir: Path, args) -> dict:
    from cryovox.pipelines.eval_vol import decode, load_run
    from cryovox.pipelines.train_hetero import train_hetero

    out = workdir / "cryovox"
    t0 = time.perf_counter()
    res = train_hetero(star, out, zdim=8, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       model_options={"n_basis": args.basis, "basis_lr": args.basis_lr}, device="cpu",
                       seed=args.seed, force=True)
    total = time.perf_counter() - t0
    run = load_run(out)
    return {"z": run.z, "epoch_times": list(res.seconds), "total": total,
            "decode": lambda zs: decode(run.model, zs), "model": run.model, "losses": res.losses,
            "z_by_epoch": [pickle.load(open(out / f"z.{e}.pkl", "rb")) for e in range(1, args.epochs + 1)]}


def run_cryodrgn(star: Path, workdir: Path, args) -> dict:
    from check_cryodrgn_star import run_cryodrgn as run

    out = workdir / "cryodrgn"
    pose, ctf = workdir / "cd_pose.pkl", workdir / "cd_ctf.pkl"
    run("parse_pose_star", star, "-o", pose)
    run("parse_ctf_star", star, "-o", ctf)
    cmd = ["train_vae", star, "--poses", pose, "--ctf", ctf, "--zdim", "8", "-n", str(args.epochs),
           "--enc-dim", "256", "--enc-layers", "3", "--dec-dim", "256", "--dec-layers", "3", "-o", out,
           "--no-analysis", "--seed", str(args.seed)]
    done = out / f"weights.{args.epochs}.pkl"
    if args.reuse_cryodrgn and done.exists():
        total = float("nan")
        print(f"cryoDRGN: reusing the finished run in {out}", flush=True)
    else:
        total = run(*cmd, quiet=True)
    log = (out / "run.log").read_text()
    # cryoDRGN logs "# =====> Epoch: N Average gen loss = ..., total loss = ...; Finished in H:MM:SS.ffffff"
    per = [_hms(m) for m in re.findall(r"Finished in (\d+:\d+:\d+(?:\.\d+)?)", log)]
    zfile = sorted(out.glob("z.*.pkl"), key=lambda p: int(re.findall(r"\d+", p.name)[0]))[-1]
    z = pickle.load(open(zfile, "rb"))
    cfg = out / "config.yaml"
    weights = out / zfile.name.replace("z.", "weights.")

    def decode(zs):
        zpath = workdir / "cd_zs.txt"
        np.savetxt(zpath, zs)
        vdir = workdir / "cd_vols"
        run("eval_vol", weights, "-c", cfg, "--zfile", zpath, "-o", vdir, "--Apix", str(args.apix))
        from cryovox.io.mrc import read_map

        vols = sorted(vdir.glob("vol_*.mrc"))
        for v in vols:
            yield read_map(v).data

    return {"z": z, "epoch_times": per or [total / args.epochs], "total": total, "decode": decode, "cmd": cmd}


def _hms(text: str) -> float:
    h, m, s = text.split(":")
    return int(h) * 3600 + int(m) * 60 + float(s)


def _sign_aligned(decode, truth):
    """cryoDRGN inverts the data sign by default and may mirror: pick the sign/hand that best matches state 0."""
    import torch

    from cryovox.core.fsc import fsc, fsc_auc

    def wrapped(zs):
        vols = list(decode(zs))
        t = torch.from_numpy(truth[0]).double()
        best, choice = -np.inf, (1.0, False)
        for sign in (1.0, -1.0):
            for flip in (False, True):
                v = sign * (vols[0][::-1] if flip else vols[0])
                a = fsc_auc(fsc(torch.from_numpy(np.ascontiguousarray(v)).double(), t))
                if a > best:
                    best, choice = a, (sign, flip)
        sign, flip = choice
        wrapped.choice = choice
        for v in vols:
            yield sign * (v[::-1] if flip else v)

    return wrapped


# ------------------------------------------------------------------------------------------ main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--box", type=int, default=32)
    p.add_argument("--apix", type=float, default=None, help="Å/px (default: 128 Å / box)")
    p.add_argument("--particles", type=int, default=5000)
    p.add_argument("--states", type=int, default=10)
    p.add_argument("--angle", type=float, default=40.0, help="hinge range in degrees")
    p.add_argument("--snr", type=float, default=0.1)
    p.add_argument("--shift", type=float, default=2.0, help="max shift in pixels")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--basis", type=int, default=16)
    p.add_argument("--basis-lr", type=float, default=1e-2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", type=Path, default=SHARED / "models" / "1a28.pdb.gz")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/cryovox_bench_hetero"))
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for both tools (torch.set_num_threads / OMP_NUM_THREADS; default: torch's)")
    p.add_argument("--skip-cryodrgn", action="store_true")
    p.add_argument("--reuse-cryodrgn", action="store_true",
                   help="reuse a finished cryoDRGN run of the same settings in the work folder (its own log gives "
                        "its epoch times)")
    p.add_argument("--record", action="store_true", help="append the results to benchmarks/RESULTS.md")
    args = p.parse_args()
    args.apix = args.apix or 128.0 / args.box
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = str(args.threads)  # cryoDRGN inherits
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)

    from cryovox.models.hetero import SFBPModel

    work = args.workdir / f"box{args.box}_n{args.particles}_s{args.states}_snr{args.snr:g}"
    work.mkdir(parents=True, exist_ok=True)
    star, states, truth = make_data(work, args)
    print(f"data: {star} ({args.particles} particles, {args.states} states, hinge 0–{args.angle:g}°, box {args.box}, "
          f"{args.apix:g} Å/px, SNR {args.snr:g}); torch threads {torch.get_num_threads()}", flush=True)
    results = {}
    cv = run_cryovox(star, work, args)
    results["cryovox"] = {**cv, **evaluate(cv["z"], states, truth, cv["decode"])}
    dec = {args.box: decode_time(cv["model"])}
    if args.box != 64:
        dec[64] = decode_time(SFBPModel(box=64, apix=2.0, zdim=8, n_basis=args.basis).eval())
    rho_by_epoch = []
    from scipy.stats import spearmanr
    from sklearn.decomposition import PCA

    for zz in cv["z_by_epoch"]:
        rho_by_epoch.append(abs(float(spearmanr(PCA(1).fit_transform(zz)[:, 0], states)[0])))
    print(f"cryovox: {np.median(cv['epoch_times']):.1f} s/epoch (median), |rho| by epoch "
          f"{np.round(rho_by_epoch, 3).tolist()}", flush=True)
    if not args.skip_cryodrgn:
        cd = run_cryodrgn(star, work, args)
        aligned = _sign_aligned(cd["decode"], truth)
        results["cryoDRGN"] = {**cd, **evaluate(cd["z"], states, truth, aligned)}
        results["cryoDRGN"]["choice"] = getattr(aligned, "choice", None)

    lines = [f"bench_hetero: {args.particles} particles, {args.states} hinge states (0–{args.angle:g}°, 1A28 chain B), "
             f"box {args.box}, {args.apix:g} Å/px, SNR {args.snr:g}, CTF, shifts ±{args.shift:g} px, "
             f"{args.epochs} epochs, zdim 8",
             f"{'tool':<10s} {'|rho| PC1':>9s} {'FSC-AUC mean':>12s} {'min':>6s} {'s/epoch median':>14s} {'fastest':>8s}"
             f"   per-state FSC-AUC"]
    for name, r in results.items():
        t = np.asarray(r["epoch_times"])
        lines.append(f"{name:<10s} {r['rho']:9.3f} {r['auc'].mean():12.3f} {r['auc'].min():6.3f} "
                     f"{np.median(t):14.1f} {t.min():8.1f}   {' '.join(f'{a:.3f}' for a in r['auc'])}")
    if "cryoDRGN" in results:
        cvr, cdr = results["cryovox"], results["cryoDRGN"]
        tv, td = np.asarray(cvr["epoch_times"]), np.asarray(cdr["epoch_times"])
        lines.append(f"epoch-time ratio cryoDRGN/cryovox: {np.median(td) / np.median(tv):.1f}x (medians), "
                     f"{td.min() / tv.min():.1f}x (fastest epochs); "
                     f"states where cryovox FSC-AUC >= cryoDRGN: {(cvr['auc'] >= cdr['auc']).sum()}/{args.states}; "
                     f"cryoDRGN maps used with sign/flip {cdr['choice']}"
                     + ("; cryoDRGN run reused from an earlier invocation" if args.reuse_cryodrgn else ""))
    lines.append("cryovox decode of a full volume (CPU, median of 20): " +
                 ", ".join(f"box {b}: {1000 * t:.1f} ms" for b, t in dec.items()))
    text = "\n".join(lines)
    print(text, flush=True)
    if args.record:
        from _record import record

        record("train-hetero (SFBP) vs cryoDRGN train_vae", text, torch.get_num_threads())


if __name__ == "__main__":
    main()
