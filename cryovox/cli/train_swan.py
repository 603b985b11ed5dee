"""``cryovox train-swan``: train a Cryo-SWAN autoencoder (or a baseline), or its latent diffusion model."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


def _ints(text: Optional[str], option: str) -> Optional[list[int]]:
    if text is None:
        return None
    from cryovox.errors import InputError

    try:
        values = [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"{option} {text}: expected comma-separated integers, e.g. 1,2,4,8") from None
    if not values or any(v < 1 for v in values) or values != sorted(values):
        raise InputError(f"{option} {text}: expected increasing positive integers")
    return values


@app.command("train-swan")
def train_swan_command(
    corpus: Path = typer.Argument(..., help="Corpus folder written by cryovox curate."),
    outdir: Path = outdir_option(),
    stage: str = typer.Option("autoencoder", "--stage", help="autoencoder | diffusion (needs --model)."),
    model: Optional[Path] = typer.Option(None, "--model", help="Trained autoencoder (model.pt) for --stage diffusion."),
    arch: str = typer.Option("swan", "--arch", help="swan | vq | rq | swan-single (same widths)."),
    epochs: int = typer.Option(50, "--epochs", help="Total epochs (--resume continues up to this number)."),
    batch_size: int = typer.Option(8, "--batch-size", help="Maps per step and process."),
    lr: float = typer.Option(1e-3, "--lr", help="AdamW learning rate (cosine decay to 5 %)."),
    weight_decay: float = typer.Option(1e-5, "--weight-decay", help="AdamW weight decay."),
    amp: bool = typer.Option(False, "--amp", help="bfloat16 autocast (GPU)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last checkpoint in OUTDIR."),
    width: int = typer.Option(32, "--width", help="Base channel width w (encoder 1w-2w-4w)."),
    latent_dim: int = typer.Option(32, "--latent-dim", help="Code vector length."),
    codebook_size: int = typer.Option(4096, "--codebook-size", help="Codes per level."),
    beta: float = typer.Option(0.25, "--beta", help="Commitment loss weight."),
    rq_depth: int = typer.Option(8, "--rq-depth", help="Residual codes per position of --arch rq."),
    rq_latent: str = typer.Option("coarse", "--rq-latent",
                                  help="Grid --arch rq quantises: coarse (D/8, RQ-VAE's layout) or fine (D/4)."),
    fine_scales: Optional[str] = typer.Option(None, "--fine-scales",
                                              help="Perception scales of the fine level, e.g. 1,4,6,8,10,12,14,16 "
                                                   "(default: the paper's, scaled to the box)."),
    coarse_scales: Optional[str] = typer.Option(None, "--coarse-scales", help="Perception scales of the coarse level."),
    workers: int = typer.Option(0, "--workers", help="DataLoader worker processes."),
    reinit_dead: bool = typer.Option(True, "--reinit-dead/--no-reinit-dead",
                                     help="Re-initialise unused codes after each epoch."),
    augment: bool = typer.Option(True, "--augment/--no-augment", help="Random rotations of the training maps."),
    max_eval: Optional[int] = typer.Option(None, "--max-eval", help="Evaluate at most this many test maps."),
    unet_base: int = typer.Option(64, "--unet-base", help="Diffusion U-Net base width."),
    timesteps: int = typer.Option(1000, "--timesteps", help="Diffusion steps T."),
    cond_pool: int = typer.Option(2, "--cond-pool", help="Anchor condition: block-average of the latent grid."),
    seed: int = seed_option(),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Train a Cryo-SWAN autoencoder on a curated corpus, then (--stage diffusion) its latent DDPM.

    The autoencoder stage writes model.pt, history.csv (loss and codebook usage, perplexity,
    dead codes per epoch), metrics.json (test split: MSE, PSNR, IoU/F1 at mean+1σ, FSC-0.5 Å,
    FSC-AUC, codebook usage) and montage.png. The diffusion stage writes diffusion.pt.
    Under torchrun the batches are split over processes (DDP).

    Example: cryovox train-swan corpus/ -o swan/ --arch swan --epochs 50 && cryovox train-swan corpus/ --stage diffusion --model swan/model.pt -o swan_diff/
    """
    from cryovox.errors import InputError
    from cryovox.utils.job import job

    config = dict(corpus=corpus, stage=stage, model=model, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                  weight_decay=weight_decay, amp=amp, resume=resume, width=width, latent_dim=latent_dim,
                  codebook_size=codebook_size, beta=beta, rq_depth=rq_depth, rq_latent=rq_latent,
                  fine_scales=fine_scales,
                  coarse_scales=coarse_scales, reinit_dead=reinit_dead, augment=augment, workers=workers,
                  max_eval=max_eval, unet_base=unet_base, timesteps=timesteps, cond_pool=cond_pool, seed=seed,
                  device=device)
    if stage not in ("autoencoder", "diffusion"):
        raise InputError(f"--stage {stage}: expected autoencoder or diffusion")
    if arch not in ("swan", "vq", "rq", "swan-single"):
        raise InputError(f"--arch {arch}: expected swan, vq, rq or swan-single")
    if rq_latent not in ("coarse", "fine"):
        raise InputError(f"--rq-latent {rq_latent}: expected coarse or fine")
    if stage == "diffusion" and model is None:
        raise InputError("--stage diffusion needs --model (the model.pt of a trained autoencoder)")
    fine = _ints(fine_scales, "--fine-scales")
    coarse = _ints(coarse_scales, "--coarse-scales")
    with job(outdir, force=force, resume=resume, config=config, command="train-swan") as run:
        from cryovox.pipelines import train_swan

        if stage == "diffusion":
            result = train_swan.run_diffusion(corpus, run.dir, model=model, epochs=epochs, batch_size=batch_size,
                                              lr=lr if lr != 1e-3 else 2e-4, weight_decay=weight_decay, amp=amp,
                                              resume=resume, device=device, seed=seed, base=unet_base,
                                              timesteps=timesteps, cond_pool=cond_pool)
        else:
            result = train_swan.run(corpus, run.dir, arch=arch, epochs=epochs, batch_size=batch_size, lr=lr,
                                    weight_decay=weight_decay, amp=amp, resume=resume, device=device, seed=seed,
                                    width=width, latent_dim=latent_dim, codebook_size=codebook_size, beta=beta,
                                    rq_depth=rq_depth, rq_latent=rq_latent, fine_scales=fine,
                                    coarse_scales=coarse,
                                    reinit_dead=reinit_dead, augment=augment, workers=workers,
                                    max_eval=max_eval)
        run.report(result.summary())
