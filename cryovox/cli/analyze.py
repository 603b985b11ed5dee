"""``cryovox analyze``: PCA/UMAP, k-means maps, per-class STAR files and PC traversals of a latent space."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, seed_option


@app.command("analyze")
def analyze_command(
    traindir: Path = typer.Argument(..., help="A train-hetero output directory."),
    epoch: Optional[int] = typer.Option(None, "--epoch", help="Epoch to analyse (numbered from 1 as in cryoDRGN; default: the last)."),
    ksample: int = typer.Option(20, "--ksample", help="Number of k-means classes (maps and STAR files)."),
    pc_steps: int = typer.Option(10, "--pc-steps", help="Maps along each of PC1 and PC2."),
    seed: int = seed_option(),
    device: str = typer.Option("cpu", "--device", help="auto | cpu | cuda | cuda:N (for decoding the maps)."),
    force: bool = force_option(),
) -> None:
    """Analyse the latent space of a trained model; writes into TRAINDIR/analyze.N/.

    UMAP and PCA plots of z, k-means classes (maps decoded at the particle nearest each centre,
    and a RELION 3.1 STAR file per class), and maps along the first two principal components.

    Example: cryovox analyze hetero/ --epoch 19 --ksample 20
    """
    from cryovox.pipelines.analyze import analyze
    from cryovox.pipelines.eval_vol import resolve_epoch
    from cryovox.utils.job import job
    from cryovox.utils.runtime import resolve_device

    n = resolve_epoch(traindir, epoch)
    config = dict(traindir=traindir, epoch=n, ksample=ksample, pc_steps=pc_steps, seed=seed, device=device)
    with job(traindir / f"analyze.{n}", force=force, config=config, command="analyze") as run:
        result = analyze(traindir, run.dir, epoch=n, ksample=ksample, pc_steps=pc_steps, seed=seed,
                         device=resolve_device(device))
        run.report(result.summary())
