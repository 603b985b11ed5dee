"""``cryovox simulate map`` and ``cryovox simulate particles``."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from cryovox.cli._app import app, force_option, outdir_option, seed_option

simulate_app = typer.Typer(
    name="simulate",
    help="Simulate density maps from atomic models and particle images from maps.\n\n"
    "Example: cryovox simulate map 1hvr.pdb --apix 2 --box 48 -o map.mrc",
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(simulate_app, name="simulate")


def _parse_weights(values: list[str] | None) -> list[float] | None:
    from cryovox.errors import InputError

    if not values:
        return None
    out: list[float] = []
    for v in values:
        for part in v.replace(",", " ").split():
            try:
                out.append(float(part))
            except ValueError:
                raise InputError(f"--weights {v}: not a number") from None
    return out


@simulate_app.command("map")
def simulate_map_command(
    model: Path = typer.Argument(..., help="Atomic model: .pdb, .cif (mmCIF), optionally .gz."),
    apix: float = typer.Option(..., "--apix", help="Voxel size of the map (Å)."),
    box: int = typer.Option(..., "--box", help="Box edge (voxels); the model's centre of mass sits at voxel box//2."),
    output: Path = typer.Option(..., "-o", "--output", help="Output map (.mrc); its folder is created if missing."),
    resolution: Optional[float] = typer.Option(None, "--resolution",
                                               help="Low-pass the map at this resolution (Å, soft cosine edge)."),
    bfactor: float = typer.Option(0.0, "--bfactor", help="Extra global B-factor (Å²) applied to the map."),
    center: Optional[tuple[float, float, float]] = typer.Option(
        None, "--center", help="Model coordinates X Y Z (Å) put at the box centre (default: the centre of mass); "
        "use the same centre for several conformations so their maps share one frame."),
    force: bool = force_option(),
) -> None:
    """Electron-scattering potential of an atomic model (gemmi, electron form factors).

    The potential is computed on a 2× finer grid, the anti-aliasing blur is divided out and the
    spectrum cropped, so the map is band-limited at Nyquist; it is written as float32 MRC with
    the voxel size and an origin that overlays it on the model. Waters are left out.

    Example: cryovox simulate map 1hvr.pdb --apix 2 --box 48 --resolution 6 -o 1hvr.mrc
    """
    import logging

    from cryovox.pipelines.simulate import run_simulate_map
    from cryovox.utils.job import setup_logging

    setup_logging(None)
    sim = run_simulate_map(model, output, apix=apix, box=box, resolution=resolution, bfactor=bfactor, force=force,
                           center=center)
    logging.getLogger("cryovox").info(sim.summary(output))


@simulate_app.command("particles")
def simulate_particles_command(
    maps: List[Path] = typer.Argument(..., help="One or more maps (same box and pixel size); several maps "
                                                "make a heterogeneous set, one state per map."),
    n: int = typer.Option(..., "-n", "--n-particles", help="Number of particles."),
    snr: float = typer.Option(..., "--snr", help="Signal variance / noise variance per pixel over the whole "
                                                 "image (signal measured on the first 1000 noise-free images); "
                                                 "'inf' for noise-free images."),
    outdir: Path = outdir_option(),
    defocus: tuple[float, float] = typer.Option((10000.0, 25000.0), "--defocus",
                                                help="Defocus range LOW HIGH (Å, underfocus positive), uniform."),
    astigmatism: float = typer.Option(0.0, "--astigmatism",
                                      help="Maximum astigmatism (Å): defocus V = U − uniform(0, this)."),
    shift: float = typer.Option(0.0, "--shift", help="Maximum shift (px): uniform in [−shift, shift] on x and y."),
    weights: Optional[List[str]] = typer.Option(None, "--weights",
                                                help="Relative abundance of each map, e.g. --weights 0.7,0.3 "
                                                     "(default: equal)."),
    voltage: float = typer.Option(300.0, "--voltage", help="Acceleration voltage (kV)."),
    cs: float = typer.Option(2.7, "--cs", help="Spherical aberration (mm)."),
    amp: float = typer.Option(0.1, "--amp", help="Amplitude contrast (fraction)."),
    no_ctf: bool = typer.Option(False, "--no-ctf", help="Do not apply a CTF (and write no CTF columns)."),
    apix: Optional[float] = typer.Option(None, "--apix",
                                         help="Pixel size (Å) for maps whose header has none; must agree otherwise."),
    pad: int = typer.Option(2, "--pad", help="Fourier padding of the projector (2 as RELION; 3–4 more accurate, "
                                             "more memory)."),
    batch_size: int = typer.Option(500, "--batch-size", help="Images rendered and written per chunk."),
    seed: int = seed_option(),
    force: bool = force_option(),
) -> None:
    """Particle images from maps: random poses, CTF, shifts and Gaussian noise at a given SNR.

    Writes particles.mrcs (chunk by chunk), particles.star (RELION 3.1, with rlnRandomSubset and the
    true state as rlnClassNumber), states.csv / states.npy (0-based state per particle) and
    ground_truth.npz (rotations, shifts, defocus, noise level).

    Example: cryovox simulate particles open.mrc closed.mrc -n 10000 --snr 0.1 --shift 4 --weights 0.7,0.3 -o sim/
    """
    from cryovox.pipelines.simulate import simulate_particles
    from cryovox.utils.job import job

    w = _parse_weights(weights)
    config = dict(maps=list(maps), n=n, snr=snr, defocus=list(defocus), astigmatism=astigmatism, shift=shift,
                  weights=w, voltage=voltage, cs=cs, amplitude_contrast=amp, ctf=not no_ctf, apix=apix,
                  batch_size=batch_size, pad=pad, seed=seed)
    with job(outdir, force=force, config=config, command="simulate particles") as run:
        result = simulate_particles(maps, run.dir, n=n, snr=snr, defocus=defocus, astigmatism=astigmatism,
                                    shift=shift, weights=w, ctf=not no_ctf, voltage=voltage, cs=cs,
                                    amplitude_contrast=amp, apix=apix, seed=seed, batch_size=batch_size,
                                    pad=pad)
        run.report(result.summary())
