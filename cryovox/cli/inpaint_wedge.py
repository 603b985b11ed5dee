"""``cryovox inpaint-wedge``: fill a map's missing wedge with a flow prior (CryoFM Alg. 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("inpaint-wedge")
def inpaint_wedge_command(
    map_path: Path = typer.Argument(..., metavar="MAP", help="Map with a missing wedge (e.g. a subtomogram average)."),
    prior: Path = typer.Option(..., "--prior", help="Flow prior (prior.pt of train-flow)."),
    outdir: Path = outdir_option(),
    tilt_range: tuple[float, float] = typer.Option((-60.0, 60.0), "--tilt-range",
                                                   help="Measured tilt range in degrees (min max)."),
    tilt_axis: str = typer.Option("y", "--tilt-axis", help="Tilt axis: y or x (beam along z)."),
    steps: int = typer.Option(1000, "--steps", help="Euler steps (paper: 1000; the public CryoFM code uses 200)."),
    samples: int = typer.Option(1, "--samples", help="Posterior samples; >1 also writes inpainted_std.mrc."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows sampled together."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Window overlap (voxels) for large maps."),
    save_samples: bool = typer.Option(False, "--save-samples", help="Also write every posterior sample."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Restore the Fourier components a tilt series misses, keeping the measured ones exactly.

    Writes inpainted.mrc (mean of --samples) and inpainted_std.mrc at the input's pixel size
    and origin. The std map shows where the prior, not the data, decided.

    Example: cryovox inpaint-wedge sta_average.mrc --tilt-range -60 60 --tilt-axis y --prior prior/prior.pt -o filled/ --samples 4
    """
    from cryovox.utils.job import job

    config = dict(map=map_path, prior=prior, tilt_range=list(tilt_range), tilt_axis=tilt_axis, steps=steps,
                  samples=samples, batch_size=batch_size, overlap=overlap, seed=seed, device=device)
    with job(outdir, force=force, config=config, command="inpaint-wedge") as run:
        from cryovox.pipelines import inpaint

        result = inpaint.run(map_path, prior=prior, outdir=run.dir, tilt_range=tilt_range, tilt_axis=tilt_axis,
                             steps=steps, samples=samples, batch_size=batch_size, overlap=overlap, seed=seed,
                             device=device, save_samples=save_samples)
        run.report(result.summary())
