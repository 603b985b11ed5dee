"""``cryovox denoise``: flow-prior denoising from half maps (default), or Cryo-SWAN denoising of one map."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("denoise")
def denoise_command(
    map_path: Optional[Path] = typer.Argument(None, metavar="[MAP]", help="Map to denoise (--method swan only)."),
    half1: Optional[Path] = typer.Option(None, "--half1", help="First half map (MRC) (--method flow)."),
    half2: Optional[Path] = typer.Option(None, "--half2", help="Second half map (MRC) (--method flow)."),
    prior: Optional[Path] = typer.Option(None, "--prior", help="Flow prior (prior.pt of train-flow)."),
    outdir: Path = outdir_option(),
    method: str = typer.Option("flow", "--method", help="flow (half maps + flow prior) | swan (one map + --model)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Cryo-SWAN model.pt (--method swan)."),
    anisotropic: bool = typer.Option(False, "--anisotropic",
                                     help="Direction-dependent noise (from the half maps, or from --particles)."),
    particles: Optional[Path] = typer.Option(None, "--particles",
                                             help="Particle STAR/.cs with poses: noise from the per-direction "
                                                  "view count (with --anisotropic)."),
    halves: str = typer.Option("average", "--halves",
                               help="average: one posterior for the half-map average | separate: one per half map, "
                                    "averaged (the public CryoFM code)."),
    steps: int = typer.Option(1000, "--steps", help="Euler steps (paper: 1000; the public CryoFM code uses 200)."),
    samples: int = typer.Option(1, "--samples", help="Posterior samples; >1 also writes denoised_std.mrc."),
    zeta_max: float = typer.Option(5.0, "--zeta-max", help="Cap of the guidance weight min(ζ, t/(1−t))."),
    guidance_scale: float = typer.Option(1.0, "--guidance-scale",
                                         help="Per-voxel size of the normalised likelihood gradient (the public "
                                              "CryoFM code's lamb_base=1000 equals 1000/√(window voxels): 1.95 at "
                                              "64³)."),
    guidance: str = typer.Option("gradient", "--guidance",
                                 help="gradient: normalised likelihood gradient (CryoFM Alg. 1) | wiener: per-"
                                      "frequency Gaussian posterior blend of the flow's estimate and the data."),
    no_backprop: bool = typer.Option(False, "--no-backprop",
                                     help="Gradient w.r.t. the clean estimate only (no backward pass through the "
                                          "network; ~3× faster, cruder)."),
    batch_size: int = typer.Option(4, "--batch-size", help="Windows sampled together."),
    overlap: Optional[int] = typer.Option(None, "--overlap", help="Window overlap in voxels for maps larger than the "
                                                                 "prior's box (default box/4)."),
    save_samples: bool = typer.Option(False, "--save-samples", help="Also write every posterior sample."),
    iterations: int = typer.Option(2, "--iterations", help="Scale-estimate passes (--method swan)."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Denoise a map with a learnt prior: flow posterior sampling from two half maps (CryoFM), or Cryo-SWAN.

    flow: noise per Fourier shell from the gold-standard FSC of the half maps (or direction-
    dependent with --anisotropic), then posterior sampling with the flow prior; writes
    denoised.mrc (mean of --samples), denoised_std.mrc, noise.csv, at the input's pixel size
    and origin. swan: encode, snap to the codebooks, decode (see train-swan).

    Example: cryovox denoise --half1 run_half1_class001_unfil.mrc --half2 run_half2_class001_unfil.mrc --prior prior/prior.pt -o denoised/ --samples 4
    """
    from cryovox.errors import InputError
    from cryovox.utils.job import job

    config = dict(map=map_path, half1=half1, half2=half2, prior=prior, method=method, model=model,
                  anisotropic=anisotropic, particles=particles, halves=halves, steps=steps, samples=samples,
                  zeta_max=zeta_max, guidance_scale=guidance_scale, guidance=guidance, no_backprop=no_backprop,
                  batch_size=batch_size,
                  overlap=overlap, iterations=iterations, seed=seed, device=device)
    if method == "swan":
        if map_path is None or model is None:
            raise InputError("--method swan needs a MAP argument and --model (a train-swan model.pt)")
        from cryovox.pipelines import swan_denoise

        with job(outdir, force=force, config=config, command="denoise") as run:
            result = swan_denoise.run(map_path, model=model, outdir=run.dir, device=device, iterations=iterations)
            run.report(result.summary())
        return
    if method != "flow":
        raise InputError(f"--method {method}: expected flow or swan")
    if half1 is None or half2 is None or prior is None:
        raise InputError("--method flow needs --half1, --half2 and --prior (a single map cannot give the noise "
                         "spectrum; use --method swan for one map)")
    if map_path is not None:
        raise InputError(f"{map_path}: --method flow takes the half maps (--half1/--half2), not a MAP argument")
    if particles is not None and not anisotropic:
        raise InputError("--particles is used only with --anisotropic")
    with job(outdir, force=force, config=config, command="denoise") as run:
        from cryovox.pipelines import denoise

        result = denoise.run(half1, half2, prior=prior, outdir=run.dir, anisotropic=anisotropic, particles=particles,
                             halves=halves, steps=steps, samples=samples, zeta_max=zeta_max,
                             guidance_scale=guidance_scale, backprop=not no_backprop, batch_size=batch_size,
                             overlap=overlap, seed=seed, device=device, save_samples=save_samples, guidance=guidance)
        run.report(result.summary())
