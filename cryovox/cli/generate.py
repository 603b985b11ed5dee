"""``cryovox generate``: new maps from a flow prior (unconditional) or from Cryo-SWAN latent diffusion (anchored)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("generate")
def generate_command(
    outdir: Path = outdir_option(),
    n: int = typer.Option(1, "-n", "--n", help="Number of maps."),
    prior: Optional[Path] = typer.Option(None, "--prior", help="Flow prior (prior.pt of train-flow): "
                                                               "unconditional samples."),
    swan: Optional[Path] = typer.Option(None, "--swan", help="Cryo-SWAN model.pt (with --diffusion and --anchor)."),
    diffusion: Optional[Path] = typer.Option(None, "--diffusion", help="Latent diffusion model (diffusion.pt)."),
    anchor: Optional[Path] = typer.Option(None, "--anchor", help="Anchor map the SWAN samples are conditioned on."),
    guidance: float = typer.Option(1.0, "--guidance", help="Classifier-free guidance weight w (--swan)."),
    steps: Optional[int] = typer.Option(None, "--steps",
                                        help="Sampling steps (flow: Euler, default 1000; swan: DDPM, default 100)."),
    box: Optional[int] = typer.Option(None, "--box", help="Edge of flow samples (default: the prior's box)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Flow samples drawn together."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Sample new density maps: --prior (flow prior, unconditional) or --swan/--diffusion/--anchor (Cryo-SWAN).

    Writes sample_000.mrc … (and, for flow priors with -n > 1, samples_mean.mrc and samples_std.mrc).

    Example: cryovox generate --prior prior/prior.pt -n 8 -o samples/
    """
    from cryovox.errors import InputError
    from cryovox.utils.job import job

    config = dict(n=n, prior=prior, swan=swan, diffusion=diffusion, anchor=anchor, guidance=guidance, steps=steps,
                  box=box, batch_size=batch_size, seed=seed, device=device)
    if (prior is None) == (swan is None):
        raise InputError("give either --prior (flow prior) or --swan with --diffusion and --anchor")
    if swan is not None:
        if diffusion is None or anchor is None:
            raise InputError("--swan needs --diffusion (diffusion.pt) and --anchor (a map)")
        from cryovox.pipelines import swan_generate

        with job(outdir, force=force, config=config, command="generate") as run:
            result = swan_generate.run(swan_model=swan, diffusion_model=diffusion, anchor=anchor, n=n,
                                       outdir=run.dir, guidance=guidance, steps=100 if steps is None else steps,
                                       device=device, seed=seed)
            run.report(result.summary())
        return
    with job(outdir, force=force, config=config, command="generate") as run:
        from cryovox.pipelines import generate

        result = generate.run(prior, outdir=run.dir, n=n, steps=1000 if steps is None else steps, box=box,
                              batch_size=batch_size, seed=seed, device=device)
        run.report(result.summary())
