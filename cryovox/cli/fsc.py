"""``cryovox fsc``: Fourier shell correlation between two maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("fsc")
def fsc_command(
    map1: Path = typer.Argument(..., help="First map (MRC), e.g. half map 1."),
    map2: Path = typer.Argument(..., help="Second map (MRC), same box and pixel size."),
    mask: Optional[Path] = typer.Option(None, "--mask", help="Soft mask in [0, 1] (MRC): adds the masked and "
                                                             "phase-randomisation-corrected FSC, as relion_postprocess."),
    apix: Optional[float] = typer.Option(None, "--apix", help="Pixel size in Å, overriding the map headers."),
    outdir: Path = outdir_option(),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Fourier shell correlation between two maps: resolution at FSC 0.143 and 0.5, and the AUC.

    Shells are rounded Fourier radii 0 (DC) … D/2 (Nyquist); the resolutions are the first
    crossings, interpolated linearly between shells (RELION reports the last shell before the
    crossing instead, so its number is coarser by less than one shell). Writes fsc.csv,
    fsc.star (relion_postprocess's data_fsc columns) and fsc.png.

    Example: cryovox fsc run_half1.mrc run_half2.mrc --mask mask.mrc -o fsc/
    """
    from cryovox.pipelines import fsc as fsc_pipeline
    from cryovox.utils.job import job
    from cryovox.utils.runtime import resolve_device

    config = dict(map1=map1, map2=map2, mask=mask, apix=apix, seed=seed, device=device)
    with job(outdir, force=force, config=config, command="fsc") as run:
        result = fsc_pipeline.run(map1, map2, mask=mask, apix=apix, outdir=run.dir, seed=seed,
                                  device=resolve_device(device))
        run.report(result.summary())
