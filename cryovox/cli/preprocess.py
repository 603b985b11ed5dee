"""``cryovox preprocess``: downsample / invert / normalise a particle stack and rewrite its STAR."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, force_option, outdir_option


@app.command("preprocess")
def preprocess_command(
    particles: Path = typer.Argument(..., help="Particles: RELION .star, cryoSPARC .cs, or a bare .mrcs "
                                               "(with --poses/--ctf cryoDRGN pickles)."),
    outdir: Path = outdir_option(),
    downsample: Optional[int] = typer.Option(None, "--downsample", "-D",
                                             help="New box size (px, even, ≤ the current box): Fourier cropping."),
    invert: bool = typer.Option(False, "--invert", help="Invert the contrast (multiply by −1)."),
    normalize: bool = typer.Option(False, "--normalize", help="Zero mean, unit std of the background (outside "
                                                              "--bg-radius), per image, as RELION."),
    bg_radius: Optional[float] = typer.Option(None, "--bg-radius",
                                              help="Background radius (px of the output; default 0.375 × box)."),
    poses: Optional[Path] = typer.Option(None, "--poses", help="cryoDRGN pose pickle for a bare stack."),
    ctf: Optional[Path] = typer.Option(None, "--ctf", help="cryoDRGN CTF pickle for a bare stack."),
    datadir: Optional[Path] = typer.Option(None, "--datadir", help="Folder where relative stack paths resolve."),
    apix: Optional[float] = typer.Option(None, "--apix", help="Pixel size (Å) of the input, overriding the file."),
    max_particles: Optional[int] = typer.Option(None, "--max-particles", help="Only the first N particles."),
    chunk: int = typer.Option(1000, "--chunk", help="Images held in memory at a time."),
    force: bool = force_option(),
) -> None:
    """Downsample, invert and normalise particles chunk by chunk; write a RELION 3.1 STAR for them.

    Pixel size is rescaled (apix · old box / new box); shifts stay in Å; poses, CTF and the other
    columns are carried over. Each image is processed on its own (results do not depend on --chunk).

    Example: cryovox preprocess particles.star -o prep/ --downsample 128 --normalize
    """
    from cryovox.pipelines.preprocess import preprocess
    from cryovox.utils.job import job

    config = dict(particles=particles, downsample=downsample, invert=invert, normalize=normalize,
                  bg_radius=bg_radius, poses=poses, ctf=ctf, datadir=datadir, apix=apix,
                  max_particles=max_particles, chunk=chunk)
    with job(outdir, force=force, config=config, command="preprocess") as run:
        result = preprocess(particles, run.dir, downsample=downsample, invert=invert, normalize=normalize,
                            bg_radius=bg_radius, datadir=datadir, poses=poses, ctf=ctf, apix=apix,
                            max_particles=max_particles, chunk=chunk)
        run.report(result.summary())
