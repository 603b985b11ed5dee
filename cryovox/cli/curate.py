"""``cryovox curate``: build a training corpus of density maps from an EMDB mirror or local maps."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, force_option, outdir_option, seed_option


@app.command("curate")
def curate_command(
    source: Path = typer.Argument(..., help="EMDB mirror (EMD-N/header|map/ tree or flat emd-N.xml + emd_N.map.gz), "
                                            "or a folder of maps with a metadata CSV (id, method, resolution, "
                                            "mw_kda, contour, apix[, map]), or that CSV."),
    outdir: Path = outdir_option(),
    apix: float = typer.Option(4.0, "--apix", help="Output voxel size (Å)."),
    box: int = typer.Option(64, "--box", help="Output box edge (voxels)."),
    methods: str = typer.Option("singleParticle,subtomogramAveraging", "--methods",
                                help="EMDB methods to keep, comma-separated (singleParticle, subtomogramAveraging, "
                                     "helical, tomography, electronCrystallography)."),
    mw_kda: tuple[float, float] = typer.Option((100.0, 1500.0), "--mw-kda",
                                               help="Molecular weight range of the whole assembly (kDa), inclusive."),
    max_resolution: Optional[float] = typer.Option(None, "--max-resolution",
                                                   help="Drop entries whose resolution is worse than this (Å)."),
    rotations: int = typer.Option(5, "--rotations", help="Uniformly random rotations stored per entry."),
    keep_original: bool = typer.Option(False, "--keep-original",
                                       help="Also store the unrotated map (as rotation 0)."),
    split: tuple[float, float, float] = typer.Option((0.8, 0.1, 0.1), "--split",
                                                     help="Train/val/test fractions, by entry."),
    mask_extend: Optional[float] = typer.Option(None, "--mask-extend",
                                                help="Grow the contour mask by this much (Å; default one output voxel)."),
    mask_soft_edge: Optional[float] = typer.Option(None, "--mask-soft-edge",
                                                   help="Soft-edge width of the mask (Å; default two output voxels)."),
    workers: int = typer.Option(1, "--workers", help="Worker processes over entries."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run in OUTDIR (same options)."),
    write_mrc: bool = typer.Option(False, "--write-mrc", help="Also write every sample as OUTDIR/mrc/<entry>_<k>.mrc."),
    seed: int = seed_option(),
    force: bool = force_option(),
) -> None:
    """Curate EMDB entries into a memory-mapped training corpus (ProteinNet3D recipe).

    Per entry: filter on method, molecular weight and resolution; mask at the primary contour
    (soft edge); resample in Fourier space to --apix (anti-aliased); crop/pad to --box about
    the centre; normalise; store --rotations random rotations. Writes volumes.npy,
    metadata.csv, rejected.csv (a reason per dropped entry), corpus.json and report.png.

    Example: cryovox curate emdb_mirror/ -o corpus/ --apix 4 --box 64 --mw-kda 100 1500 --workers 8
    """
    from cryovox.pipelines import curate
    from cryovox.utils.job import job

    opts = curate.CurateOptions(
        apix=apix, box=box, methods=curate.parse_methods(methods), mw_kda=tuple(mw_kda),
        max_resolution=max_resolution, rotations=rotations, keep_original=keep_original, split=tuple(split),
        seed=seed, mask_extend=mask_extend, mask_soft_edge=mask_soft_edge,
    ).validate()
    if workers < 1:
        from cryovox.errors import InputError

        raise InputError(f"--workers {workers}: must be ≥ 1")
    config = {"source": source, **opts.record(), "workers": workers, "resume": resume, "write_mrc": write_mrc}
    with job(outdir, force=force, resume=resume, config=config, command="curate") as run:
        result = curate.run(source, run.dir, opts, workers=workers, resume=resume, write_mrc=write_mrc)
        run.report(result.summary())
