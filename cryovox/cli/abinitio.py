"""``cryovox abinitio``: a map from a few class averages with unknown poses and a flow prior (CryoFM Alg. 3)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("abinitio")
def abinitio_command(
    averages: Path = typer.Argument(..., metavar="CLASS_AVERAGES", help="Class averages (MRC stack, .mrcs)."),
    prior: Path = typer.Option(..., "--prior", help="Flow prior (prior.pt of train-flow)."),
    outdir: Path = outdir_option(),
    steps: int = typer.Option(1000, "--steps", help="Euler steps (paper: 1000)."),
    samples: int = typer.Option(1, "--samples", help="Posterior samples; >1 also writes abinitio_std.mrc."),
    search_every: int = typer.Option(10, "--search-every", help="Full pose search every this many steps."),
    angular_step: float = typer.Option(15.0, "--angular-step", help="Global SO(3) grid step (degrees); two local "
                                                                    "refinements at half and a quarter of it."),
    max_shift: Optional[float] = typer.Option(None, "--max-shift", help="Largest shift searched (px; default box/8)."),
    resolution: Optional[float] = typer.Option(None, "--resolution", help="Highest resolution compared (Å)."),
    background_weight: float = typer.Option(1.0, "--background-weight",
                                            help="Weight of the density-outside-the-particle penalty."),
    stop_gradient: bool = typer.Option(False, "--stop-gradient",
                                       help="Do not backpropagate through the network (cheaper)."),
    guidance_scale: float = typer.Option(1.0, "--guidance-scale",
                                         help="Per-voxel size of the normalised gradient (1000/√(voxels) "
                                              "reproduces the public CryoFM code)."),
    save_samples: bool = typer.Option(False, "--save-samples", help="Also write every posterior sample."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Ab initio reconstruction from class averages: flow posterior sampling with a pose search at each step.

    Writes abinitio.mrc (at the prior's pixel size), abinitio_std.mrc and poses.csv. The hand
    of the result is undetermined (projections cannot tell a map from its mirror image).

    Example: cryovox abinitio class_averages.mrcs --prior prior/prior.pt -o abinitio/ --steps 1000
    """
    from cryovox.utils.job import job

    config = dict(averages=averages, prior=prior, steps=steps, samples=samples, search_every=search_every,
                  angular_step=angular_step, max_shift=max_shift, resolution=resolution,
                  background_weight=background_weight, stop_gradient=stop_gradient, guidance_scale=guidance_scale,
                  seed=seed, device=device)
    with job(outdir, force=force, config=config, command="abinitio") as run:
        from cryovox.pipelines import abinitio

        result = abinitio.run(averages, prior=prior, outdir=run.dir, steps=steps, samples=samples,
                              search_every=search_every, angular_step=angular_step, max_shift=max_shift,
                              resolution=resolution, background_weight=background_weight,
                              stop_gradient=stop_gradient, guidance_scale=guidance_scale, seed=seed, device=device,
                              save_samples=save_samples)
        run.report(result.summary())
