"""Train a heterogeneity model on particles with known poses (``cryovox train-hetero``).

The loop is model-agnostic (see :mod:`cryovox.models`): each batch of the
:class:`~cryovox.data.particles.ParticleDataset` goes through the model's ``forward`` (its
loss), Adam steps, and the posterior means are collected. Before the first epoch the model
is prepared from up to ``init_particles`` particles chosen with ``seed``
(:func:`prepare_model`): their spectra (:func:`cryovox.models.hetero.loss.data_spectra`) and,
with ``init="consensus"``, a Wiener reconstruction of them made as ``cryovox reconstruct``
makes its map (:func:`cryovox.pipelines.reconstruct.wiener_maps`).

Outputs in OUTDIR, after epoch ``N`` (numbered from 1, as cryoDRGN ≥ 3 numbers them, so ``-n 20``
ends with ``weights.20.pt`` and ``z.20.pkl``):
``weights.N.pt`` (checkpoint: ``kind``, model ``config`` and weights, optimizer, epoch, RNG
states, training options, the particle file), ``z.N.pkl`` (float32 ``(n_particles, zdim)``
posterior means in particle order, a plain numpy array: cryoDRGN's layout) and ``z.N.npz``
(``z`` and ``logvar``); for a model that refines poses (``cryoformer``), ``particles.N.star``
(the input particles with the poses it rendered them at in that epoch, RELION 3.1). Loss and time
per epoch go to run.log.

Exact resumption: the order of particles in epoch ``N`` is a function of ``(seed, N)``
(DistributedSampler's permutation), the reparameterisation noise of each process is drawn
from a generator seeded with ``(seed, N, rank)`` at the start of the epoch, and the
checkpoint holds the model (with its running noise spectrum), the optimizer state and the
global RNG states; so ``-n 2`` equals ``-n 1`` followed by ``-n 2 --resume`` bit for bit (same
machine, same number of processes and threads).

Distributed: under ``torchrun`` each process trains on its share of every epoch
(DistributedSampler), gradients are averaged by DDP, the epoch's statistics are summed over
processes, the posterior means are gathered in particle order, and only rank 0 writes.
"""

from __future__ import annotations

import logging
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

INIT_PARTICLES = 20000
INITS = ("consensus", "none")


@dataclass
class TrainHeteroResult:
    outdir: Path
    kind: str
    epochs: int
    first_epoch: int
    n_particles: int
    box: int
    apix: float
    zdim: int
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    model: Any = field(default=None, repr=False)  # the trained model (this process's copy)

    def summary(self) -> str:
        if not self.losses:
            return f"{self.kind}: nothing to train ({self.epochs} epochs already done) in {self.outdir}"
        last = self.epochs
        per = float(np.mean(self.seconds)) if self.seconds else 0.0
        return (f"{self.kind} model, zdim {self.zdim}, {self.n_particles} particles of {self.box} px "
                f"({self.apix:g} Å/px): epochs {self.first_epoch + 1}–{last}, loss {self.losses[0]:.4g} → "
                f"{self.losses[-1]:.4g}, {per:.1f} s/epoch; weights.{last}.pt, z.{last}.pkl in {self.outdir}")


def _check_options(zdim: int, epochs: int, batch_size: int, lr: float, beta: float, options: dict) -> None:
    if zdim < 1:
        raise InputError(f"--zdim {zdim}: the latent dimension must be at least 1")
    if epochs < 1:
        raise InputError(f"-n {epochs}: the number of epochs must be at least 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not (lr > 0):
        raise InputError(f"--lr {lr}: the learning rate must be > 0")
    if not (beta >= 0):
        raise InputError(f"--beta {beta}: the KL weight must be >= 0")
    if options.get("basis_lr") is not None and not (options["basis_lr"] > 0):
        raise InputError(f"--basis-lr {options['basis_lr']}: must be > 0")
    if options.get("n_basis", 1) < 1:
        raise InputError(f"--basis {options['n_basis']}: at least one basis volume is needed")


def clear_epoch_outputs(outdir: Path) -> None:
    """Remove ``weights.N.pt`` / ``z.N.pkl`` / ``z.N.npz`` / ``particles.N.star`` left by an earlier run (``--force``)."""
    for p in Path(outdir).iterdir():
        if re.fullmatch(r"(weights\.\d+\.pt|z\.\d+\.pkl|z\.\d+\.npz|particles\.\d+\.star)", p.name):
            p.unlink()


def _noise_generator(seed: int, epoch: int, rank: int):
    import torch

    return torch.Generator().manual_seed((int(seed) * 1_000_003 + epoch * 7919 + rank * 104_729) % (2**63))


def _to(batch: dict, device) -> dict:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


def _init_subset(n: int, seed: int, limit: int) -> np.ndarray:
    """Sorted rows of up to ``limit`` particles chosen with ``seed`` (the same on every process)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=min(n, limit), replace=False))


def prepare_model(net, dataset, table, rows: np.ndarray, *, consensus: bool, seed: int, device) -> None:
    """Data statistics (and a consensus map) from the particles ``rows``, handed to ``net.prepare``.

    The consensus is :func:`cryovox.pipelines.reconstruct.wiener_maps` of a CTF-weighted
    backprojection of those particles (half sets as ``reconstruct`` makes them).
    """
    from cryovox.data.particles import iterate_batches
    from cryovox.models.hetero.loss import data_spectra

    stats = data_spectra(iterate_batches(dataset, rows.tolist(), 512), dataset.box, net.radius)
    vol = None
    if consensus:
        from cryovox.pipelines.reconstruct import _half_sets, backproject_particles, wiener_maps

        sub = table.take(rows)
        data, weight = backproject_particles(sub, _half_sets(sub, seed), device=device,
                                             use_ctf=dataset.has_ctf, label="consensus map")
        vol = wiener_maps(data, weight)[2].cpu()
        sub.close()
    net.prepare(stats, vol, iterate_batches(dataset, rows.tolist(), 512), n_particles=len(dataset))


def _write_z(outdir: Path, epoch: int, z: np.ndarray, logvar: np.ndarray) -> None:
    from cryovox.io.pickles import write_pickle
    from cryovox.utils.files import write_atomic

    write_pickle(outdir / f"z.{epoch}.pkl", z.astype(np.float32))
    write_atomic(outdir / f"z.{epoch}.npz",
                 lambda tmp: np.savez(tmp, z=z.astype(np.float32), logvar=logvar.astype(np.float32)))


def _write_poses(path: Path, table, idx: np.ndarray, rot: np.ndarray, shift_px: np.ndarray, apix: float) -> float:
    """Write ``table`` with the refined poses of rows ``idx`` (rotations ``(m, 3, 3)``, shifts ``(m, 2)`` px)
    as a RELION 3.1 STAR (other rows keep their input poses). Returns the mean rotation change (degrees)."""
    import torch

    from cryovox.core.rotations import geodesic_distance
    from cryovox.io.particles import write_star

    R = table.rotations.astype(np.float64).copy()
    t = (np.zeros((len(table), 2)) if table.shifts_px is None else table.shifts_px.astype(np.float64)).copy()
    change = geodesic_distance(torch.from_numpy(R[idx]), torch.from_numpy(rot.astype(np.float64)))
    R[idx], t[idx] = rot, shift_px
    write_star(path, table.with_poses(R, t * apix))
    return float(change.mean()) if len(idx) else 0.0


def train_hetero(particles: Path | str, outdir: Path, *, zdim: int = 8, epochs: int = 20, model: str = "sfbp",
                 model_options: dict[str, Any] | None = None, batch_size: int = 64, lr: float = 1e-3,
                 beta: float | None = None, datadir: Path | None = None, poses: Path | None = None,
                 ctf: Path | None = None, resume: bool = False, device: str = "auto", seed: int = 0,
                 num_workers: int = 0, window: float = 0.85, preload: bool | None = None,
                 init: str = "consensus", init_particles: int = INIT_PARTICLES, beta_ramp: int = 5,
                 force: bool = False) -> TrainHeteroResult:
    """Train (or resume) a heterogeneity model; see the module docstring for outputs.

    particles: ``.star`` / ``.cs`` / ``.mrcs`` (+ ``poses``/``ctf`` cryoDRGN pickles); model: a
    kind registered in :data:`cryovox.models.MODELS`; model_options: its constructor options
    besides ``box``, ``apix``, ``zdim`` (for ``sfbp``: ``n_basis``, ``basis_lr`` (taken out for
    the optimizer), ``enc_width``, ``enc_layers``, ``dec_width``, ``dec_blocks``, ``pad``, ``radius``,
    ``encoder_input``; for ``cryoformer`` see :class:`cryovox.models.cryoformer.CryoFormerModel`,
    ``basis_lr`` being its hash-grid tables' rate; a model that refines poses gets them written as
    ``particles.N.star`` each epoch it refines); lr: Adam learning rate of the networks; beta: KL weight (default
    ``1 / (2 zdim)``: cryoDRGN's ``β = 1/zdim`` on its per-pixel mean squared error of unit-variance
    images is this weight relative to the Gaussian log-likelihood) at epoch 0, rising linearly to 1
    (the ELBO) over ``beta_ramp`` epochs (0: constant). A small weight first lets the latent pick up
    weak heterogeneity, which the ELBO's pull towards the prior delays; the ELBO then stops the
    latent from spending dimensions on fitting each particle's noise (on the hinge benchmark: PC1
    |ρ| 0.887 → 0.916, FSC-AUC 0.879 → 0.885 after 20 epochs); preload: read all
    images into memory (default: when they take at most 2 GB); init: ``consensus`` starts the
    model from a Wiener reconstruction of up to ``init_particles`` particles (for sfbp: ``V_0``
    and the noise spectrum from its residuals), ``none`` from the data spectra only; force: an earlier run's epoch
    files in ``outdir`` are removed first (not with ``resume``).
    """
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    from cryovox.data.particles import ParticleDataset, collate
    from cryovox.io.checkpoint import latest_checkpoint, load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from cryovox.io.particles import read_particles
    from cryovox.models import build_model, model_class
    from cryovox.utils import distributed as dist
    from cryovox.utils.progress import Progress

    options = dict(model_options or {})
    basis_lr = options.pop("basis_lr", 1e-2)
    if beta is None:
        beta = 1.0 / (2 * max(1, zdim))
    if beta_ramp < 0:
        raise InputError(f"--beta-ramp {beta_ramp}: must be >= 0 epochs")
    _check_options(zdim, epochs, batch_size, lr, beta, dict(options, basis_lr=basis_lr))
    if init not in INITS:
        raise InputError(f"--init {init}: expected one of {', '.join(INITS)}")
    model_class(model)  # unknown kind → InputError before anything else
    outdir = Path(outdir)
    particles = Path(particles)

    ckpt = None
    if resume:
        last = latest_checkpoint(outdir)
        if last is None:
            raise InputError(f"{outdir}: no weights.N.pt checkpoint to resume from")
        ckpt = load_checkpoint(last, kind=model)
        if int(ckpt["epoch"]) >= epochs:
            raise InputError(f"{last}: {int(ckpt['epoch'])} epochs are already done; "
                             f"give -n larger than that to continue")

    ctx = dist.init_distributed(device)
    try:
        table = read_particles(particles, datadir=datadir, poses=poses, ctf=ctf)
        if preload is None:
            box0 = int(table.box[0]) if len(table) and table.box[0] > 0 else 0
            preload = len(table) * box0 * box0 * 4 <= 2 * 1024**3
        dataset = ParticleDataset(table, window=window, preload=preload)
        n = len(dataset)
        if not dataset.has_ctf:
            log.warning("%s: no CTF parameters; training without CTF", particles)

        if ckpt is not None:
            cfg = dict(ckpt["config"])
            if cfg.get("box") != dataset.box or abs(float(cfg.get("apix", 0)) - dataset.apix) > 1e-4 * dataset.apix \
                    or int(ckpt["train"]["n_particles"]) != n:
                raise InputError(f"{outdir}: the checkpoint was trained on {ckpt['train']['n_particles']} particles "
                                 f"of {cfg.get('box')} px; {particles} has {n} of {dataset.box} px")
            net = build_model(model, cfg)
            net.load_state_dict(ckpt["model"])
            start = int(ckpt["epoch"])   # epochs are numbered from 1, as in cryoDRGN: weights.N.pt after N epochs
            beta = float(ckpt["train"]["beta"])
            beta_ramp = int(ckpt["train"].get("beta_ramp", 0))
            zdim = int(cfg["zdim"])
            log.info("resuming from %s (after epoch %d); model options from the checkpoint",
                     latest_checkpoint(outdir), start)
        else:
            if force and ctx.is_main and outdir.is_dir():
                clear_epoch_outputs(outdir)
            torch.manual_seed(seed)
            try:
                net = build_model(model, dict(options, box=dataset.box, apix=dataset.apix, zdim=zdim))
            except (TypeError, ValueError) as err:
                raise InputError(f"{model} model options: {err}") from None
            prepare_model(net, dataset, table, _init_subset(n, seed, init_particles), consensus=init == "consensus",
                          seed=seed, device=ctx.device)
            start = 0
        net = net.to(ctx.device)
        ddp = dist.wrap_model(net, ctx)
        groups = net.param_groups(lr, basis_lr)
        opt = torch.optim.Adam(groups, fused=True)  # one fused kernel per step (CPU and CUDA)
        if ckpt is not None:
            opt.load_state_dict(ckpt["optimizer"])
            set_rng_state(ckpt["rng"])
        train_info = dict(particles=str(particles.resolve()), datadir=str(Path(datadir).resolve()) if datadir else None,
                          poses=str(Path(poses).resolve()) if poses else None,
                          ctf=str(Path(ctf).resolve()) if ctf else None, n_particles=n, beta=float(beta),
                          lr=float(lr), basis_lr=None if basis_lr is None else float(basis_lr),
                          batch_size=int(batch_size), seed=int(seed), window=float(window), init=init,
                          world_size=ctx.world_size, beta_ramp=int(beta_ramp))
        if ckpt is not None:
            train_info["seed"] = seed = int(ckpt["train"]["seed"])

        sampler = DistributedSampler(dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True,
                                     seed=seed, drop_last=False)
        loader = DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                            collate_fn=collate, pin_memory=ctx.device.type == "cuda",
                            generator=torch.Generator().manual_seed(seed),
                            persistent_workers=False)
        result = TrainHeteroResult(outdir=outdir, kind=model, epochs=epochs, first_epoch=start, n_particles=n,
                                   box=dataset.box, apix=dataset.apix, zdim=zdim, model=net)
        log.info("%s: %d particles, box %d, %.4g Å/px, %s; zdim %d, %d epochs, batch %d, %d process(es) on %s",
                 particles, n, dataset.box, dataset.apix, "CTF" if dataset.has_ctf else "no CTF", zdim, epochs,
                 batch_size, ctx.world_size, ctx.device)
        for epoch in range(start, epochs):
            t0 = time.monotonic()
            sampler.set_epoch(epoch)
            beta_now = beta + (1.0 - beta) * min(1.0, epoch / beta_ramp) if beta_ramp > 0 else beta
            gen = _noise_generator(seed, epoch, ctx.rank)
            if hasattr(net, "start_epoch"):       # models with training phases (cryoformer: pose pre-training)
                net.start_epoch(epoch)
            ddp.train()
            totals = torch.zeros(4, dtype=torch.float64, device=ctx.device)  # loss, nll, kl, count
            idx_parts, mu_parts, lv_parts, rot_parts, shift_parts = [], [], [], [], []
            with Progress(f"epoch {epoch + 1}/{epochs}", total=len(sampler), enabled=ctx.is_main) as bar:
                for batch in loader:
                    batch = _to(batch, ctx.device)
                    out = ddp(batch, beta=beta_now, generator=gen)
                    opt.zero_grad(set_to_none=True)
                    out.total.backward()
                    opt.step()
                    b = batch["index"].shape[0]
                    with torch.no_grad():
                        totals += torch.stack([out.total.detach().double() * b, out.nll.detach().double().sum(),
                                               out.kl.detach().double().sum(),
                                               torch.tensor(float(b), dtype=torch.float64, device=ctx.device)])
                    idx_parts.append(batch["index"])
                    mu_parts.append(out.mu.detach())
                    lv_parts.append(out.logvar.detach())
                    if getattr(out, "rot", None) is not None:     # refined poses (cryoformer)
                        rot_parts.append(out.rot.detach().reshape(-1, 9))
                        shift_parts.append(out.shift.detach())
                    bar.advance(b, loss=float(out.total.detach()))
            dist.all_reduce_sum(totals, ctx)
            idx = dist.all_gather_rows(torch.cat(idx_parts), ctx).cpu().numpy()
            mu = dist.all_gather_rows(torch.cat(mu_parts).float(), ctx).cpu().numpy()
            lv = dist.all_gather_rows(torch.cat(lv_parts).float(), ctx).cpu().numpy()
            refined = None
            if rot_parts and len(rot_parts) == len(idx_parts):
                refined = (dist.all_gather_rows(torch.cat(rot_parts).double(), ctx).cpu().numpy().reshape(-1, 3, 3),
                           dist.all_gather_rows(torch.cat(shift_parts).double(), ctx).cpu().numpy())
            loss, nll, kl, count = (totals / totals[3].clamp(min=1)).tolist()[:3] + [float(totals[3])]
            if not math.isfinite(loss):
                raise RuntimeError(f"training diverged at epoch {epoch + 1} (loss {loss}); lower --lr")
            seconds = time.monotonic() - t0
            if ctx.is_main:
                z = np.zeros((n, zdim), dtype=np.float32)
                logvar = np.zeros((n, zdim), dtype=np.float32)
                z[idx], logvar[idx] = mu, lv  # DistributedSampler pads with repeats: same rows twice
                state = {"model": net.state_dict(), "config": net.config(), "optimizer": opt.state_dict(),
                         "epoch": epoch + 1, "rng": rng_state(), "train": train_info,
                         "loss": [loss, nll, kl], "seconds": seconds}
                save_checkpoint(outdir / f"weights.{epoch + 1}.pt", state, kind=net.kind)
                _write_z(outdir, epoch + 1, z, logvar)
                log.info("epoch %d/%d: loss %.6g (nll %.6g, kl %.4g) per particle, %.1f s (%.0f particles/s)",
                         epoch + 1, epochs, loss, nll, kl, seconds, count / max(seconds, 1e-9))
                if refined is not None:
                    moved = _write_poses(outdir / f"particles.{epoch + 1}.star", table, idx, refined[0], refined[1],
                                         dataset.apix)
                    log.info("epoch %d: refined poses in particles.%d.star (mean rotation change from the input "
                             "%.3g°)", epoch + 1, epoch + 1, moved)
            result.losses.append(loss)
            result.seconds.append(seconds)
            dist.barrier(ctx)
        return result
    finally:
        dist.shutdown(ctx)
