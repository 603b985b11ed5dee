"""``cryovox train-hetero``: heterogeneous reconstruction (structural-basis VAE, SFBP)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from cryovox.cli._app import app, device_option, force_option, outdir_option, seed_option


@app.command("train-hetero")
def train_hetero_command(
    particles: Path = typer.Argument(..., help="Particles with poses: RELION .star, cryoSPARC .cs, or a bare "
                                               ".mrcs with --poses (and --ctf) cryoDRGN pickles."),
    outdir: Path = outdir_option(),
    zdim: int = typer.Option(8, "--zdim", help="Latent dimension."),
    epochs: int = typer.Option(20, "-n", "--epochs", help="Number of epochs (total, also with --resume)."),
    model: str = typer.Option("sfbp", "--model", help="Model: sfbp (structural-basis VAE, sparse Fourier "
                                                      "backpropagation) or cryoformer (real-space hash-grid "
                                                      "decoder, deformation transformer, pose refinement)."),
    n_basis: int = typer.Option(16, "--basis", help="Number of Fourier basis volumes K (cryoformer: of the fixed "
                                                    "random basis of the encoder's basis features)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Particles per step (per process)."),
    lr: float = typer.Option(1e-3, "--lr", help="Adam learning rate of the encoder and the coefficient MLP."),
    basis_lr: float = typer.Option(1e-2, "--basis-lr", help="Adam learning rate of the basis volumes (whitened "
                                                           "units, see the documentation); cryoformer: of the "
                                                           "hash-grid tables."),
    beta: Optional[float] = typer.Option(None, "--beta", help="Weight of the KL term at epoch 0 (1 = the ELBO; "
                                                          "default 1/(2·zdim), cryoDRGN's effective weight)."),
    beta_ramp: int = typer.Option(5, "--beta-ramp", help="Epochs over which the KL weight rises linearly to 1 "
                                                         "(0: constant --beta)."),
    enc_width: int = typer.Option(256, "--enc-dim", help="Width of the encoder MLP."),
    enc_layers: int = typer.Option(3, "--enc-layers", help="Hidden layers of the encoder MLP."),
    dec_width: int = typer.Option(64, "--dec-dim", help="Width of the residual MLP s(z)."),
    dec_blocks: int = typer.Option(2, "--dec-layers", help="Residual blocks of s(z)."),
    enc_features: str = typer.Option("basis", "--enc-features", help="Encoder input: basis (per-particle "
                                     "posterior of the basis coefficients of a linear model; cryoformer: of a fixed "
                                     "random basis around the consensus), image (the whitened, low-passed image, "
                                     "as cryoDRGN and the CryoFormer paper) or both."),
    encoder_input: str = typer.Option("phase-flip", "--enc-input", help="Image features: phase-flip (image × "
                                                                        "sign CTF) or raw."),
    enc_radius: Optional[float] = typer.Option(None, "--enc-radius", help="Highest frequency (pixels) of the image "
                                                                         "features (default box/4)."),
    init: str = typer.Option("consensus", "--init", help="consensus: start V_0 (and the noise spectrum) from a "
                                                         "Wiener reconstruction of the particles; none: from zero."),
    radius: Optional[float] = typer.Option(None, "--radius", help="Fourier radius in pixels used for training "
                                                                 "(default: Nyquist, box/2)."),
    datadir: Optional[Path] = typer.Option(None, "--datadir", help="Folder where relative stack paths resolve."),
    poses: Optional[Path] = typer.Option(None, "--poses", help="cryoDRGN pose pickle (rotations, translations)."),
    ctf: Optional[Path] = typer.Option(None, "--ctf", help="cryoDRGN CTF pickle (N×9)."),
    resume: bool = typer.Option(False, "--resume", help="Continue from the last weights.N.pt in OUTDIR."),
    num_workers: int = typer.Option(0, "--num-workers", help="DataLoader worker processes."),
    seed: int = seed_option(),
    refine_poses: bool = typer.Option(True, "--refine-poses/--no-refine-poses", help="cryoformer: refine the "
                                      "poses by a local search in each particle's decoded map (written as "
                                      "particles.N.star)."),
    pose_search_deg: float = typer.Option(4.0, "--pose-search-deg", help="cryoformer: rotation step (degrees) of "
                                          "the first refining epoch's local search (about the expected pose "
                                          "error); halved each refining epoch."),
    pose_pretrain_epochs: int = typer.Option(6, "--pose-pretrain-epochs", help="cryoformer: epochs that train the "
                                             "orientation encoder on the input poses before the poses are "
                                             "refined (default: after the z warm-up and its ramp, when each "
                                             "particle's map resolves its state; a pose searched in a map of "
                                             "the wrong state is biased towards it)."),
    pose_prior_deg: float = typer.Option(5.0, "--pose-prior-deg", help="cryoformer: width (degrees) of the "
                                         "Gaussian prior that keeps refined rotations near the input ones "
                                         "(0: no prior)."),
    pose_search_move: str = typer.Option("mean", "--pose-search-move", help="cryoformer: where each search "
                                         "level moves a pose: mean (the candidates' posterior mean, the noise "
                                         "level estimated from the particle's residual) or best (the best "
                                         "candidate)."),
    no_deformation: bool = typer.Option(False, "--no-deformation", help="cryoformer ablation: no deformation "
                                        "encoder (one volume for all particles)."),
    mlp_decoder: bool = typer.Option(False, "--mlp-decoder", help="cryoformer ablation: an MLP on (features, z) "
                                     "instead of the query-based deformation transformer."),
    projection: str = typer.Option("voxel", "--projection", help="cryoformer: voxel (decode each particle's map "
                                   "on the grid, project by trilinear sampling; faster) or field (evaluate the "
                                   "network at every rotated point)."),
    queries: int = typer.Option(64, "--queries", help="cryoformer: learnable queries of the transformer."),
    z_warmup_epochs: int = typer.Option(3, "--z-warmup-epochs", help="cryoformer: epochs that decode the encoder's "
                                        "posterior mean (an autoencoder) before z is sampled (a VAE)."),
    device: str = device_option(),
    force: bool = force_option(),
) -> None:
    """Train a heterogeneity VAE on particles with known poses; writes weights.N.pt, z.N.pkl per epoch.

    The sfbp model (Kimanius, Jamali & Scheres 2022) decodes z into Σ_k s_k(z)·V_k + V_0 with K
    Fourier-space basis volumes and takes each particle's central slice directly (sparse Fourier
    backpropagation). The cryoformer model (Liu et al. 2024) decodes density in real space from a
    hash-grid feature volume through a query-based deformation transformer and refines the poses.
    Several GPUs or nodes: run under torchrun. Epochs are numbered from 1, as in cryoDRGN
    (weights.N.pt and z.N.pkl after N epochs).

    Example: cryovox train-hetero sim/particles.star -o hetero/ --zdim 8 -n 20
    """
    from cryovox.errors import InputError
    from cryovox.pipelines.train_hetero import train_hetero
    from cryovox.utils.job import job

    if zdim < 1:
        raise InputError(f"--zdim {zdim}: the latent dimension must be at least 1")
    if model == "cryoformer":
        if pose_pretrain_epochs < 0:
            raise InputError(f"--pose-pretrain-epochs {pose_pretrain_epochs}: must be >= 0")
        if projection not in ("voxel", "field"):
            raise InputError(f"--projection {projection}: expected voxel or field")
        if queries < 1:
            raise InputError(f"--queries {queries}: at least one query is needed")
        if z_warmup_epochs < 0:
            raise InputError(f"--z-warmup-epochs {z_warmup_epochs}: must be >= 0")
        if pose_prior_deg < 0:
            raise InputError(f"--pose-prior-deg {pose_prior_deg:g}: must be >= 0 (0: no prior)")
        if pose_search_move not in ("mean", "best"):
            raise InputError(f"--pose-search-move {pose_search_move}: expected mean or best")
        if not pose_search_deg > 0:
            raise InputError(f"--pose-search-deg {pose_search_deg:g}: must be > 0")
        model_options = dict(basis_lr=basis_lr, enc_width=enc_width, enc_layers=enc_layers, radius=radius,
                             enc_radius=enc_radius, enc_features=enc_features, feature_basis=n_basis,
                             refine_poses=refine_poses,
                             pose_pretrain_epochs=pose_pretrain_epochs, deformation=not no_deformation,
                             decoder="mlp" if mlp_decoder else "transformer", projection=projection,
                             n_queries=queries, pose_prior_deg=pose_prior_deg if pose_prior_deg > 0 else None,
                             search_deg=pose_search_deg, z_warmup_epochs=z_warmup_epochs,
                             search_mean=pose_search_move == "mean")
    else:
        model_options = dict(n_basis=n_basis, basis_lr=basis_lr, enc_width=enc_width, enc_layers=enc_layers,
                             dec_width=dec_width, dec_blocks=dec_blocks, encoder_input=encoder_input, radius=radius,
                             enc_features=enc_features, enc_radius=enc_radius)
    config = dict(particles=particles, zdim=zdim, epochs=epochs, model=model, batch_size=batch_size, lr=lr,
                  beta=beta, beta_ramp=beta_ramp, datadir=datadir, poses=poses, ctf=ctf, resume=resume,
                  num_workers=num_workers, seed=seed, device=device, init=init, **model_options)
    with job(outdir, force=force, resume=resume, config=config, command="train-hetero") as run:
        result = train_hetero(particles, run.dir, zdim=zdim, epochs=epochs, model=model,
                              model_options=model_options, batch_size=batch_size, lr=lr, beta=beta,
                              datadir=datadir, poses=poses, ctf=ctf, resume=resume, device=device, seed=seed,
                              num_workers=num_workers, init=init, beta_ramp=beta_ramp, force=force)
        run.report(result.summary())
