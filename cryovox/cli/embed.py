"""``cryovox embed``: latent vectors, UMAP and nearest-neighbour hubs of maps under a Cryo-SWAN model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("embed")
def embed_command(
    model: Path = typer.Argument(..., help="Trained autoencoder (model.pt of cryovox train-swan)."),
    inputs: list[Path] = typer.Argument(..., help="A corpus folder, or one or more maps (MRC)."),
    outdir: Path = outdir_option(),
    neighbors: int = typer.Option(5, "--neighbors", "-k", help="Nearest neighbours listed per map in hubs.csv."),
    split: Optional[str] = typer.Option(None, "--split", help="Corpus input: only this split (train, val, test)."),
    projection: str = typer.Option("umap", "--projection", help="umap | pca (fast) for the 2D map."),
    rotations: int = typer.Option(24, "--rotations", help="Orientations averaged per map (rotation-invariant "
                                                          "vectors; 1 = the map as it is)."),
    latent: str = typer.Option("encoder", "--latent", help="encoder (continuous latents) | quantised (codebook "
                                                          "approximations) pooled into the vectors."),
    batch_size: int = typer.Option(16, "--batch-size", help="Maps per forward pass."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Embed maps in the latent space of a trained Cryo-SWAN model and find their nearest neighbours.

    Writes latents.npz (pooled latent vectors averaged over --rotations orientations), umap.png, hubs.csv (k nearest
    maps with distances, and how often each map is someone's neighbour) and embed.json (with the
    same-entry nearest-neighbour hit rate for a corpus).

    Example: cryovox embed swan/model.pt corpus/ -o embed/ --neighbors 5 --split test
    """
    from cryovox.utils.job import job

    config = dict(model=model, inputs=list(inputs), neighbors=neighbors, split=split, projection=projection,
                  rotations=rotations, latent=latent, batch_size=batch_size, seed=seed, device=device)
    with job(outdir, force=force, config=config, command="embed") as run:
        from cryovox.pipelines import embed

        result = embed.run(model, list(inputs), run.dir, neighbors=neighbors, device=device, split=split,
                           projection=projection, rotations=rotations, batch_size=batch_size, seed=seed,
                           latent=latent)
        run.report(result.summary())
