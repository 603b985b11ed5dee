"""``cryovox reconstruct``: homogeneous reconstruction from known poses."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("reconstruct")
def reconstruct_command(
    particles: Path = typer.Argument(..., help="Particles with poses: RELION .star, cryoSPARC .cs, or a bare "
                                               ".mrcs with --poses (and --ctf) cryoDRGN pickles."),
    outdir: Path = outdir_option(),
    datadir: Optional[Path] = typer.Option(None, "--datadir", help="Folder where relative stack paths resolve."),
    apix: Optional[float] = typer.Option(None, "--apix", help="Override the particles' pixel size (Å)."),
    max_particles: Optional[int] = typer.Option(None, "--max-particles", help="Use only the first N particles."),
    poses: Optional[Path] = typer.Option(None, "--poses", help="cryoDRGN pose pickle (rotations, translations)."),
    ctf: Optional[Path] = typer.Option(None, "--ctf", help="cryoDRGN CTF pickle (N×9)."),
    no_ctf: bool = typer.Option(False, "--no-ctf", help="Ignore the particles' CTF (no CTF correction)."),
    batch_size: int = typer.Option(256, "--batch-size", help="Particles per batch (bounds the memory)."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Reconstruct a map from particles with known poses (Fourier backprojection, CTF Wiener filter).

    Half sets from rlnRandomSubset (random split by --seed otherwise); Wiener constant per shell
    from the half-map FSC (RELION's tau² scheme); padding factor 2 with gridding correction.
    Writes half1.mrc, half2.mrc, map.mrc (the particles' pixel size), fsc.csv and fsc.png.

    Example: cryovox reconstruct sim/particles.star -o rec/
    """
    from cryovox.pipelines.reconstruct import reconstruct
    from cryovox.utils.job import job
    from cryovox.utils.runtime import resolve_device

    config = dict(particles=particles, datadir=datadir, apix=apix, max_particles=max_particles, poses=poses,
                  ctf=ctf, use_ctf=not no_ctf, batch_size=batch_size, seed=seed, device=device)
    with job(outdir, force=force, config=config, command="reconstruct") as run:
        dev = resolve_device(device)
        result = reconstruct(particles, run.dir, datadir=datadir, apix=apix, max_particles=max_particles,
                             poses=poses, ctf=ctf, use_ctf=not no_ctf, batch_size=batch_size, seed=seed,
                             device=dev)
        run.report(result.summary())
