"""cryovox demo: atomic model → map → particles → reconstruction → FSC against the truth.

Runs the same commands a user would type (in this process, so torch is imported once):

1. ``cryovox simulate map``: the electron potential of HIV-1 protease (PDB 1HVR, shipped in
   examples/data/, public domain) in a 64³ box at 1.5 Å/px;
2. ``cryovox simulate particles``: 5000 particle images at SNR 0.1 with CTF (1–2.5 µm defocus,
   astigmatism) and shifts up to ±4 px, written as a RELION 3.1 STAR + MRC stack;
3. ``cryovox reconstruct``: the map rebuilt from the STAR alone (Fourier backprojection with
   CTF Wiener filtering, gold-standard half maps and FSC);
4. ``cryovox fsc``: the reconstruction against the true map;
5. heterogeneity: ten states of a hinge motion of the progesterone-receptor dimer (PDB 1A28,
   shipped in examples/data/, chain B turning by 0–40°; ``examples/hinge_states.py``) simulated
   as 3000 particles at SNR 0.1, a consensus ``cryovox reconstruct``, ``cryovox train-hetero``
   (structural-basis VAE) and ``cryovox analyze`` (PCA/UMAP, k-means maps, per-class STAR files).

Usage: ``python examples/demo.py [--outdir demo_out] [--particles 5000]`` (``make demo``).
A few minutes on 2 CPU cores; every step writes into its own folder under OUTDIR.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MODEL = HERE / "data" / "1hvr.pdb.gz"


def cryovox(*args) -> None:
    """Run one cryovox command line in this process; stop the demo if it fails."""
    from cryovox.cli import main

    argv = [str(a) for a in args]
    print(f"\n$ cryovox {' '.join(argv)}", flush=True)
    code = main(argv)
    if code != 0:
        sys.exit(f"demo: 'cryovox {' '.join(argv)}' failed with exit code {code}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--outdir", type=Path, default=Path("demo_out"), help="where the outputs go")
    parser.add_argument("--particles", type=int, default=5000, help="number of simulated particles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hetero-particles", type=int, default=3000, help="particles of the hinge data set")
    parser.add_argument("--hetero-epochs", type=int, default=6, help="train-hetero epochs")
    args = parser.parse_args()
    out = args.outdir
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()

    truth = out / "1hvr_truth.mrc"
    cryovox("simulate", "map", MODEL, "--apix", 1.5, "--box", 64, "-o", truth, "--force")
    cryovox("simulate", "particles", truth, "-n", args.particles, "--snr", 0.1, "--defocus", 10000, 25000,
            "--astigmatism", 500, "--shift", 4, "--seed", args.seed, "-o", out / "particles", "--force")
    cryovox("reconstruct", out / "particles" / "particles.star", "-o", out / "reconstruct", "--seed", args.seed,
            "--force")
    cryovox("fsc", out / "reconstruct" / "map.mrc", truth, "-o", out / "fsc_vs_truth", "--force")

    sys.path.insert(0, str(HERE))
    from hinge_states import hinge_maps

    het = out / "hetero"
    print("\n# hinge states of PDB 1A28 (examples/hinge_states.py)", flush=True)
    states = hinge_maps(het / "states", states=10, angle=40.0, apix=3.0, box=32)
    cryovox("simulate", "particles", *states, "-n", args.hetero_particles, "--snr", 0.1, "--shift", 2,
            "--seed", args.seed, "-o", het / "particles", "--force")
    cryovox("reconstruct", het / "particles" / "particles.star", "-o", het / "consensus", "--seed", args.seed,
            "--force")
    cryovox("train-hetero", het / "particles" / "particles.star", "-o", het / "train", "--zdim", 8,
            "-n", args.hetero_epochs, "--seed", args.seed, "--force")
    cryovox("analyze", het / "train", "--ksample", 10, "--seed", args.seed, "--force")

    print(f"\ndemo finished in {time.monotonic() - t0:.0f} s. Outputs:")
    for path, what in [
        (truth, "true map simulated from PDB 1HVR"),
        (out / "particles" / "particles.star", "simulated particles (RELION 3.1 STAR + particles.mrcs)"),
        (out / "reconstruct" / "map.mrc", "reconstruction (half1.mrc, half2.mrc beside it)"),
        (out / "reconstruct" / "fsc.png", "gold-standard FSC between the half maps"),
        (out / "fsc_vs_truth" / "fsc.png", "FSC of the reconstruction against the true map"),
        (het / "states", "true hinge-state maps (state00.mrc … state09.mrc)"),
        (het / "consensus" / "map.mrc", "consensus reconstruction of the heterogeneous set"),
        (het / "train", "train-hetero weights.N.pt and z.N.pkl per epoch"),
        (het / "train", "analyze.N/: PCA/UMAP plots, k-means maps, PC traversals, per-class STAR"),
    ]:
        print(f"  {path}  — {what}")


if __name__ == "__main__":
    main()
