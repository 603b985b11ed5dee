"""``cryovox train-flow``: train a CryoFM-style flow-matching prior on a curated corpus."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("train-flow")
def train_flow_command(
    corpus: Path = typer.Argument(..., help="Corpus folder written by cryovox curate."),
    outdir: Path = outdir_option(),
    arch: str = typer.Option("unet", "--arch", help="hdit (hourglass transformer, CryoFM) | unet (small, CPU-scale)."),
    preset: Optional[str] = typer.Option(None, "--preset",
                                         help="Network size. hdit: tiny | small | cryofm-s | cryofm-l; "
                                              "unet: tiny | small | medium (default small)."),
    crop: Optional[int] = typer.Option(None, "--crop", help="Training crop edge in voxels (default: the corpus box)."),
    epochs: int = typer.Option(10, "--epochs", help="Total epochs (--resume continues up to this number)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Maps per step and process."),
    lr: float = typer.Option(1e-4, "--lr", help="AdamW learning rate (CryoFM: 1e-4)."),
    warmup: int = typer.Option(2000, "--warmup", help="Linear warm-up steps (CryoFM: 2000)."),
    ema_decay: float = typer.Option(0.999, "--ema-decay", help="EMA decay of the weights used for sampling."),
    max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop after this many optimiser steps."),
    bf16: bool = typer.Option(True, "--bf16/--no-bf16", help="bfloat16 autocast on GPU."),
    checkpointing: bool = typer.Option(False, "--grad-checkpointing",
                                       help="Recompute HDiT activations in the backward pass (less GPU memory)."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random rotations, flips and crops."),
    resume: bool = typer.Option(False, "--resume", help="Continue from OUTDIR/checkpoint.pt."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Train a flow-matching density prior (rectified flow, EMA) for denoise, inpaint-wedge, abinitio, generate.

    Writes prior.pt (EMA weights + normalisation + box + pixel size), checkpoint.pt (exact
    resume) and metrics.csv. Under torchrun the epoch is split over processes (DDP); bf16 on GPU.
    CryoFM-S: --arch hdit --preset cryofm-s --crop 64 on a 1.5 Å/px corpus.

    Example: cryovox train-flow corpus/ -o prior/ --arch unet --epochs 20 --batch-size 8
    """
    from cryovox.utils.job import job

    config = dict(corpus=corpus, arch=arch, preset=preset, crop=crop, epochs=epochs, batch_size=batch_size, lr=lr,
                  warmup=warmup, ema_decay=ema_decay, max_steps=max_steps, bf16=bf16, checkpointing=checkpointing,
                  augment=augment, resume=resume, seed=seed, device=device)
    with job(outdir, force=force, resume=resume, config=config, command="train-flow") as run:
        from cryovox.pipelines import train_flow

        result = train_flow.run(corpus, run.dir, arch=arch, preset=preset, crop=crop, epochs=epochs,
                                batch_size=batch_size, lr=lr, warmup=warmup, ema_decay=ema_decay, resume=resume,
                                device=device, seed=seed, bf16=bf16, max_steps=max_steps, augment=augment,
                                checkpointing=checkpointing)
        run.report(result.summary())
