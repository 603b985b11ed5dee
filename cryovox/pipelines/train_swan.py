"""``cryovox train-swan``: train a Cryo-SWAN autoencoder (or a baseline) on a curated corpus, and
the latent diffusion model on top of a trained one.

Autoencoder stage (:func:`run`): maps of the corpus's train split (with on-the-fly random
rotations and flips when ``augment``) are encoded, quantised and decoded; the loss is the voxel
MSE of the reconstruction plus the quantisers' codebook/commitment loss (mean over levels).
AdamW, cosine learning-rate decay to 5 % over the run. The codebooks start from random
encoder outputs of the first batch; after every epoch each level's codebook usage, perplexity
and dead-code count are logged (``history.csv``) and, with ``reinit_dead``, codes unused
during the epoch are re-initialised from random recent encoder outputs. One checkpoint per
epoch (``weights.N.pt``: weights, optimiser, schedule, RNG states; the last two kept) makes
``resume`` continue bit-for-bit. Under ``torchrun`` the batches are split over processes
(DDP); codebook edits are made on rank 0 and broadcast.

At the end the test split (val if there is no test split) is evaluated — see
:func:`evaluate` — into ``metrics.json``, with ``montage.png`` (central slices, input above,
reconstruction below), and the model is written to ``model.pt`` (kind ``swan``).

Diffusion stage (:func:`run_diffusion`): the trained autoencoder's quantised latent grids of the
train split are the data of a :class:`~cryovox.models.swan.diffusion.LatentDDPM`; writes
``diffusion.pt`` (kind ``swan-diffusion``).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from cryovox.errors import InputError
from cryovox.io.checkpoint import (latest_checkpoint, load_checkpoint, rng_state, save_checkpoint,
                                   set_rng_state)
from cryovox.io.corpus import Corpus, open_corpus
from cryovox.utils.files import write_atomic, write_text_atomic
from cryovox.utils.progress import Progress

log = logging.getLogger("cryovox")

SWAN_KIND = "swan"
SWAN_CKPT_KIND = "swan-training"
DIFF_KIND = "swan-diffusion"
DIFF_CKPT_KIND = "swan-diffusion-training"
KEEP_CHECKPOINTS = 2


# ------------------------------------------------------------------------------- data access
def _split_indices(corpus: Corpus, split: str) -> np.ndarray:
    return corpus.indices(split)


def _eval_split(corpus: Corpus) -> tuple[str, np.ndarray]:
    for name in ("test", "val"):
        idx = corpus.indices(name)
        if len(idx):
            return name, idx
    raise InputError(f"{corpus.path}: corpus has no test or val samples to evaluate on")


def _batch(corpus: Corpus, rows: Sequence[int]) -> Tensor:
    """Maps of the given store rows, ``(B, 1, D, D, D)`` float32 (no augmentation)."""
    rows = np.asarray(rows, dtype=np.int64)
    order = np.argsort(rows)
    data = np.asarray(corpus.volumes[rows[order]], dtype=np.float32)
    out = np.empty_like(data)
    out[order] = data
    return torch.from_numpy(out)[:, None]


# ------------------------------------------------------------------------------- evaluation
@dataclass
class EvalResult:
    """Per-map figures of a test set and their means (see :func:`evaluate`)."""

    per_map: list[dict[str, Any]]
    means: dict[str, float]
    codebook: list[dict[str, float]]


@torch.no_grad()
def evaluate(model, corpus: Corpus, rows: Sequence[int], device, batch_size: int = 8,
             progress: bool = True) -> EvalResult:
    """Reconstruct the maps ``rows`` and compare with the originals.

    Per map: MSE, PSNR (dB, peak = the original's range), IoU and F1 binarised at
    τ = mean + 1σ of the original (:mod:`cryovox.core.metrics`), FSC-0.5 resolution (Å, at the
    corpus pixel size; interpolated crossing, Nyquist when never crossed) and FSC-AUC
    (:mod:`cryovox.core.fsc`). Codebook usage is counted over these maps' lookups.
    """
    from cryovox.core import metrics
    from cryovox.core.fsc import fsc, fsc_auc, resolution_at

    model.eval()
    for q in model.quantisers:
        q.reset_counts()
    meta = corpus.metadata
    per_map: list[dict[str, Any]] = []
    rows = list(rows)
    with Progress("evaluate", total=len(rows), enabled=progress) as bar:
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            x = _batch(corpus, chunk).to(device)
            out = model(x)
            for q, qo in zip(model.quantisers, out.quant):
                for idx in qo.indices:
                    q.counts += torch.bincount(idx.flatten(), minlength=q.codebook_size).to(q.counts)
            rec = out.recon[:, 0].float().cpu()
            ref = x[:, 0].float().cpu()
            curves = fsc(rec.double(), ref.double())
            mse = metrics.mse(rec, ref)
            psnr = metrics.psnr(rec, ref)
            iou = metrics.iou(rec, ref)
            f1 = metrics.f1(rec, ref)
            for k, row in enumerate(chunk):
                per_map.append({
                    "index": int(row), "entry_id": str(meta["entry_id"].iloc[row]),
                    "mse": float(mse[k]), "psnr": float(psnr[k]), "iou": float(iou[k]), "f1": float(f1[k]),
                    "fsc05_A": resolution_at(curves[k], 0.5, corpus.apix, corpus.box),
                    "fsc_auc": fsc_auc(curves[k]),
                })
            bar.advance(len(chunk))
    means = {k: float(np.mean([m[k] for m in per_map])) for k in ("mse", "psnr", "iou", "f1", "fsc05_A", "fsc_auc")}
    stats = [s.as_dict() for s in model.codebook_stats()]
    for q in model.quantisers:
        q.reset_counts()
    return EvalResult(per_map, means, stats)


def write_montage(path: Path, inputs: Tensor, recons: Tensor, labels: Sequence[str]) -> Path:
    """PNG of central z-slices: inputs (top row) and reconstructions (bottom row), ``(n, D, D, D)`` each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = inputs.shape[0]
    c = inputs.shape[-1] // 2
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n, 3.9), squeeze=False)
    for i in range(n):
        lo, hi = float(inputs[i].min()), float(inputs[i].max())
        for r, vol in enumerate((inputs[i], recons[i])):
            ax = axes[r, i]
            ax.imshow(vol[c].numpy(), cmap="gray", vmin=lo, vmax=hi, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, i].set_title(labels[i], fontsize=7)
    axes[0, 0].set_ylabel("input", fontsize=8)
    axes[1, 0].set_ylabel("reconstruction", fontsize=8)
    fig.tight_layout()

    def save(tmp: Path) -> None:
        fig.savefig(tmp, dpi=110)

    try:
        return write_atomic(Path(path), save)
    finally:
        plt.close(fig)


# -------------------------------------------------------------------------------- training
@dataclass
class TrainSwanResult:
    outdir: Path
    model_path: Path
    arch: str
    epochs: int
    metrics: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    maps_per_second: float = 0.0

    def summary(self) -> str:
        if not self.metrics:  # a rank ≥ 1 process of a torchrun job: rank 0 evaluates and writes
            return f"train-swan {self.arch}: {self.epochs} epochs done on this process; rank 0 writes the results"
        m = self.metrics.get("test", {})
        usage = ", ".join(f"{c['usage']:.0%}" for c in self.metrics.get("codebook_train", []))
        return (f"train-swan {self.arch}: {self.epochs} epochs; {self.metrics.get('split', 'test')} PSNR "
                f"{m.get('psnr', float('nan')):.2f} dB, FSC-0.5 {m.get('fsc05_A', float('nan')):.2f} Å, "
                f"FSC-AUC {m.get('fsc_auc', float('nan')):.3f}, IoU {m.get('iou', float('nan')):.3f}; "
                f"codebook usage {usage}; model {self.model_path}")


def _sync_codebooks(model, ctx) -> None:
    if ctx.distributed:
        import torch.distributed as dist

        for q in model.quantisers:
            dist.broadcast(q.codebook.data, 0)


@torch.no_grad()
def init_codebooks(model, x: Tensor, generator: torch.Generator) -> None:
    """Start each level's codebook from random encoder outputs of the batch ``x`` (coarse first,
    since the fine level's input depends on the quantised coarse level)."""
    for level in reversed(range(len(model.quantisers))):
        z, _, _ = model.encode(x)
        model.quantisers[level].init_from(z[level], generator)


def _autocast(device, amp: bool):
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=amp)


def _epoch_batches(n: int, batch_size: int, seed: int, epoch: int, ctx) -> list[list[int]]:
    """This process's batches (positions 0 … n-1) of one epoch: a seeded shuffle, split by rank."""
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    perm = torch.randperm(n, generator=g).numpy()
    per_rank = perm[ctx.rank::ctx.world_size]
    usable = len(perm) // ctx.world_size  # same number of steps on every rank
    per_rank = per_rank[:usable]
    return [per_rank[i:i + batch_size].tolist() for i in range(0, len(per_rank), batch_size)]


def _prune(outdir: Path, stem: str) -> None:
    found = sorted((int(p.name.split(".")[-2]), p) for p in outdir.glob(f"{stem}.*.pt")
                   if p.name.split(".")[-2].isdigit())
    for _, p in found[:-KEEP_CHECKPOINTS]:
        p.unlink(missing_ok=True)


def _write_history(path: Path, history: list[dict[str, Any]]) -> None:
    if not history:
        return
    cols = list(history[0].keys())
    for h in history[1:]:
        cols += [k for k in h if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for h in history:
        w.writerow(h)
    write_text_atomic(path, buf.getvalue())


def run(corpus: Path, outdir: Path, *, arch: str = "swan", epochs: int = 50, batch_size: int = 8,
        lr: float = 1e-3, weight_decay: float = 1e-5, amp: bool = False, resume: bool = False,
        device: str = "auto", seed: int = 0, width: int = 32, latent_dim: int = 32,
        codebook_size: int = 4096, beta: float = 0.25, pe_levels: int = 10, rq_depth: int = 8,
        rq_latent: str = "coarse",
        fine_scales: Sequence[int] | None = None, coarse_scales: Sequence[int] | None = None,
        reinit_dead: bool = True, augment: bool = True, workers: int = 0, eval_batch_size: int = 8,
        max_eval: int | None = None, progress: bool = True) -> TrainSwanResult:
    """Train an autoencoder of ``arch`` on ``corpus``; outputs in ``outdir`` (module docstring).

    epochs: total epochs (with ``resume``, training continues up to this number);
    batch_size: maps per step per process; lr / weight_decay: AdamW; amp: bf16 autocast;
    width / latent_dim / codebook_size / beta / pe_levels / rq_depth / rq_latent / *_scales: model
    (:class:`~cryovox.models.swan.SwanConfig`); reinit_dead: re-initialise dead codes each
    epoch; augment: random rotations of the training maps (:class:`cryovox.data.volumes.VolumeDataset`,
    deterministic per epoch and map); workers: DataLoader worker processes; max_eval: evaluate at
    most this many test maps (None: all).
    """
    from cryovox.models.swan import SwanConfig, SwanAutoencoder
    from cryovox.utils.distributed import all_reduce_sum, init_distributed, shutdown, wrap_model
    from cryovox.utils.runtime import seed_everything

    t_start = time.monotonic()
    outdir = Path(outdir)
    store = open_corpus(corpus)
    train_rows = _split_indices(store, "train")
    if len(train_rows) == 0:
        raise InputError(f"{store.path}: corpus has no train samples")
    if epochs < 1:
        raise InputError(f"--epochs {epochs}: must be ≥ 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be ≥ 1")
    try:
        cfg = SwanConfig(arch=arch, box=store.box, width=width, latent_dim=latent_dim,
                         codebook_size=codebook_size, beta=beta, pe_levels=pe_levels, rq_depth=rq_depth,
                         rq_latent=rq_latent,
                         fine_scales=list(fine_scales) if fine_scales else None,
                         coarse_scales=list(coarse_scales) if coarse_scales else None)
    except ValueError as err:
        raise InputError(f"{store.path}: {err}") from None

    ctx = init_distributed(device)
    dev = ctx.device
    seed_everything(seed + ctx.rank)
    model = SwanAutoencoder(cfg).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=0.05 * lr)
    start_epoch, history = 0, []
    ckpt = latest_checkpoint(outdir, "weights") if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, kind=SWAN_CKPT_KIND, map_location=dev)
        if state["config"] != cfg.as_dict():
            raise InputError(f"{ckpt}: written for a different model ({state['config']['arch']}, "
                             f"width {state['config']['width']}); resume with the same options")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        sched.T_max = epochs  # a larger --epochs stretches the cosine from where it is
        start_epoch, history = int(state["epoch"]), list(state["history"])
        set_rng_state(state["rng"][ctx.rank] if isinstance(state["rng"], list) else state["rng"])
        log.info("resuming from %s (epoch %d)", ckpt, start_epoch)
    elif resume:
        log.info("--resume: no checkpoint in %s, starting from scratch", outdir)
    ddp = wrap_model(model, ctx)
    from torch.utils.data import DataLoader

    from cryovox.data.volumes import VolumeDataset

    train_ds = VolumeDataset(store, "train", rotate=augment, seed=seed)
    if start_epoch == 0:
        first = _batch(store, train_rows[: max(batch_size, 4)]).to(dev)
        init_codebooks(model, first, torch.Generator().manual_seed(seed))
        _sync_codebooks(model, ctx)
    log.info("train-swan %s: %d train maps of %d³ at %.3g Å; %.2f M parameters; scales fine %s coarse %s",
             arch, len(train_rows), store.box, store.apix, sum(p.numel() for p in model.parameters()) / 1e6,
             cfg.fine_scales, cfg.coarse_scales if cfg.levels == 2 else "-")
    val_rows = _split_indices(store, "val")
    n_seen, t_train = 0, 0.0
    for epoch in range(start_epoch, epochs):
        model.train()
        for q in model.quantisers:
            q.reset_counts()
        batches = _epoch_batches(len(train_ds), batch_size, seed, epoch, ctx)
        train_ds.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_sampler=batches, num_workers=workers)
        sums = torch.zeros(3, dtype=torch.float64)
        t0 = time.monotonic()
        with Progress(f"epoch {epoch + 1}/{epochs}", total=len(batches), enabled=progress and ctx.is_main) as bar:
            for x in loader:
                x = x.to(dev, non_blocking=True)
                with _autocast(dev, amp):
                    out = ddp(x)
                    rec = F.mse_loss(out.recon.float(), x)
                    loss = rec + out.vq_loss
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                b = x.shape[0]
                sums += torch.tensor([float(rec.detach()) * b, float(out.vq_loss.detach()) * b, b],
                                     dtype=torch.float64)
                bar.advance(1, loss=float(loss.detach()))
        sched.step()
        dt = time.monotonic() - t0
        t_train += dt
        for q in model.quantisers:
            all_reduce_sum(q.counts, ctx)
        all_reduce_sum(sums, ctx)
        n_seen += int(sums[2])
        stats = model.codebook_stats()
        replaced = [0] * len(stats)
        if reinit_dead:
            g = torch.Generator().manual_seed(seed * 31 + epoch)
            if ctx.is_main:
                replaced = [q.reinit_dead(g) for q in model.quantisers]
            _sync_codebooks(model, ctx)
        row: dict[str, Any] = {"epoch": epoch + 1, "train_mse": float(sums[0] / sums[2]),
                               "vq_loss": float(sums[1] / sums[2]), "lr": opt.param_groups[0]["lr"],
                               "seconds": round(dt, 2), "maps_per_s": round(float(sums[2]) / max(dt, 1e-9), 2)}
        if ctx.is_main and len(val_rows):
            vrows = val_rows[: min(len(val_rows), 64)]
            with torch.no_grad():
                model.eval()
                vm = []
                for s in range(0, len(vrows), eval_batch_size):
                    xb = _batch(store, vrows[s:s + eval_batch_size]).to(dev)
                    vm.append(((model(xb).recon.float() - xb) ** 2).mean(dim=(1, 2, 3, 4)).cpu())
                row["val_mse"] = float(torch.cat(vm).mean())
                model.train()
        for k, st in enumerate(stats):
            row[f"usage_l{k + 1}"] = round(st.usage, 4)
            row[f"perplexity_l{k + 1}"] = round(st.perplexity, 2)
            row[f"dead_l{k + 1}"] = st.dead
            row[f"reinit_l{k + 1}"] = replaced[k]
        history.append(row)
        if ctx.is_main:
            log.info("epoch %d/%d: train MSE %.4f, vq %.4f%s, %s (%.1f maps/s)", epoch + 1, epochs, row["train_mse"],
                     row["vq_loss"], f", val MSE {row['val_mse']:.4f}" if "val_mse" in row else "",
                     "; ".join(f"L{k + 1} usage {s.usage:.0%} perplexity {s.perplexity:.0f} dead {s.dead}"
                               for k, s in enumerate(stats)), row["maps_per_s"])
            save_checkpoint(outdir / f"weights.{epoch + 1}.pt", {
                "config": cfg.as_dict(), "model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "epoch": epoch + 1, "history": history,
                "rng": rng_state(),
                "corpus": {"path": str(store.path), "apix": store.apix, "box": store.box},
            }, kind=SWAN_CKPT_KIND)
            _prune(outdir, "weights")
            _write_history(outdir / "history.csv", history)

    result = TrainSwanResult(outdir=outdir, model_path=outdir / "model.pt", arch=arch, epochs=epochs)
    if ctx.is_main:
        save_model(outdir / "model.pt", model, store)
        split, eval_rows = _eval_split(store)
        if max_eval is not None:
            eval_rows = eval_rows[:max_eval]
        ev = evaluate(model, store, eval_rows, dev, batch_size=eval_batch_size, progress=progress)
        train_stats = [{k: v for k, v in history[-1].items() if k.endswith(f"_l{i + 1}")}
                       for i in range(cfg.levels)] if history else []
        metrics = {
            "arch": arch, "split": split, "n_maps": len(ev.per_map), "apix": store.apix, "box": store.box,
            "epochs": epochs, "binarisation": "IoU/F1 at tau = mean + 1 sigma of each original map",
            "test": ev.means,
            "codebook_test": ev.codebook,
            "codebook_train": [{"usage": s.get(f"usage_l{i + 1}"), "perplexity": s.get(f"perplexity_l{i + 1}"),
                                "dead": s.get(f"dead_l{i + 1}")} for i, s in enumerate(train_stats)],
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_maps_per_s": (n_seen / t_train) if t_train > 0 else None,
            "config": cfg.as_dict(),
            "per_map": ev.per_map,
        }
        write_text_atomic(outdir / "metrics.json", json.dumps(metrics, indent=1) + "\n")
        show = list(eval_rows[: min(6, len(eval_rows))])
        with torch.no_grad():
            xb = _batch(store, show).to(dev)
            model.eval()
            rb = model(xb).recon.float().cpu()
        write_montage(outdir / "montage.png", xb[:, 0].cpu(), rb[:, 0],
                      [str(store.metadata["entry_id"].iloc[r]) for r in show])
        result.metrics = metrics
        result.maps_per_second = metrics["train_maps_per_s"] or 0.0
    shutdown(ctx)
    result.seconds = time.monotonic() - t_start
    return result


def save_model(path: Path, model, store: Corpus) -> Path:
    """The trained autoencoder for ``embed``/``generate``/``denoise`` (kind ``swan``)."""
    from cryovox.utils.distributed import unwrap

    m = unwrap(model)
    return save_checkpoint(path, {"config": m.cfg.as_dict(), "model": m.state_dict(),
                                  "apix": store.apix, "box": store.box,
                                  "corpus": str(store.path)}, kind=SWAN_KIND)


def load_model(path: Path, device="cpu"):
    """``(model, state)`` from a ``model.pt`` written by train-swan; the model is in eval mode."""
    from cryovox.models.swan import model_from_state

    state = load_checkpoint(Path(path), kind=SWAN_KIND)
    model = model_from_state(state).to(device).eval()
    return model, state


# ------------------------------------------------------------------------------- diffusion
@dataclass
class TrainDiffusionResult:
    outdir: Path
    model_path: Path
    epochs: int
    final_loss: float
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"train-swan --stage diffusion: {self.epochs} epochs, final loss {self.final_loss:.4f}; "
                f"model {self.model_path}")


@torch.no_grad()
def corpus_latents(model, store: Corpus, rows: Sequence[int], device, batch_size: int = 16,
                   progress: bool = True) -> Tensor:
    """Stacked quantised latent grids ``(N, C·levels, D/4³)`` of the store rows (CPU float32)."""
    out = []
    rows = list(rows)
    with Progress("encode", total=len(rows), enabled=progress) as bar:
        for s in range(0, len(rows), batch_size):
            x = _batch(store, rows[s:s + batch_size]).to(device)
            out.append(model.latent_grid(x).float().cpu())
            bar.advance(len(rows[s:s + batch_size]))
    return torch.cat(out)


def run_diffusion(corpus: Path, outdir: Path, *, model: Path, epochs: int = 100, batch_size: int = 16,
                  lr: float = 2e-4, weight_decay: float = 0.0, amp: bool = False, resume: bool = False,
                  device: str = "auto", seed: int = 0, base: int = 64, mults: Sequence[int] = (1, 2),
                  timesteps: int = 1000, cond_pool: int = 2, p_uncond: float = 0.1,
                  progress: bool = True) -> TrainDiffusionResult:
    """Train the anchor-conditioned latent DDPM on the corpus's train latents of ``model``.

    base / mults: U-Net width and levels; timesteps: T; cond_pool: block size of the anchor
    condition; p_uncond: condition drop rate (classifier-free guidance). Writes
    ``diffusion.pt`` and ``history.csv``; ``resume`` continues from ``diffusion_weights.N.pt``.
    """
    from cryovox.models.swan.diffusion import DiffusionConfig, LatentDDPM
    from cryovox.utils.distributed import all_reduce_sum, init_distributed, shutdown, wrap_model
    from cryovox.utils.runtime import seed_everything

    t_start = time.monotonic()
    outdir = Path(outdir)
    store = open_corpus(corpus)
    ctx = init_distributed(device)
    dev = ctx.device
    seed_everything(seed + ctx.rank)
    ae, ae_state = load_model(model, dev)
    if int(ae_state["box"]) != store.box or abs(float(ae_state["apix"]) - store.apix) > 1e-3 * store.apix:
        raise InputError(f"{model}: autoencoder trained on {ae_state['box']}³ maps at {ae_state['apix']} Å; "
                         f"{store.path} has {store.box}³ at {store.apix} Å")
    train_rows = _split_indices(store, "train")
    if len(train_rows) == 0:
        raise InputError(f"{store.path}: corpus has no train samples")
    lat = corpus_latents(ae, store, train_rows, dev, progress=progress and ctx.is_main)
    try:
        cfg = DiffusionConfig(latent_channels=lat.shape[1], latent_size=lat.shape[-1], cond_pool=cond_pool,
                              timesteps=timesteps, base=base, mults=tuple(mults), p_uncond=p_uncond)
    except ValueError as err:
        raise InputError(f"{model}: {err}") from None
    ddpm = LatentDDPM(cfg).to(dev)
    mean, std = lat.mean(dim=(0, 2, 3, 4)), lat.std(dim=(0, 2, 3, 4))
    bound = float(((lat - mean[:, None, None, None]) / std.clamp_min(1e-6)[:, None, None, None]).abs().max())
    ddpm.set_normalisation(mean.to(dev), std.to(dev), bound)
    opt = torch.optim.AdamW(ddpm.parameters(), lr=lr, weight_decay=weight_decay)
    start_epoch, history = 0, []
    gen = torch.Generator().manual_seed(seed * 7919 + 29 + ctx.rank)
    ckpt = latest_checkpoint(outdir, "diffusion_weights") if resume else None
    if ckpt is not None:
        state = load_checkpoint(ckpt, kind=DIFF_CKPT_KIND, map_location=dev)
        if state["config"] != cfg.as_dict():
            raise InputError(f"{ckpt}: written with different diffusion options; resume with the same options")
        ddpm.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        set_rng_state(state["rng"])
        gen.set_state(state["generator"])
    net = wrap_model(ddpm, ctx)
    x_all = ddpm.normalise(lat.to(dev))
    n = x_all.shape[0]
    final = float("nan")
    log.info("train-swan diffusion: %d latents %s, U-Net base %d mults %s, T = %d", n, tuple(lat.shape[1:]), base,
             tuple(mults), timesteps)
    for epoch in range(start_epoch, epochs):
        ddpm.train()
        batches = _epoch_batches(n, batch_size, seed, epoch, ctx)
        sums = torch.zeros(2, dtype=torch.float64)
        t0 = time.monotonic()
        with Progress(f"diffusion epoch {epoch + 1}/{epochs}", total=len(batches),
                      enabled=progress and ctx.is_main) as bar:
            for b in batches:
                x0 = x_all[torch.as_tensor(b, device=dev)]
                with _autocast(dev, amp):
                    loss = net(x0, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sums += torch.tensor([float(loss.detach()) * len(b), len(b)], dtype=torch.float64)
                bar.advance(1, loss=float(loss.detach()))
        all_reduce_sum(sums, ctx)
        final = float(sums[0] / max(sums[1], 1))
        history.append({"epoch": epoch + 1, "loss": final, "seconds": round(time.monotonic() - t0, 2)})
        if ctx.is_main:
            if (epoch + 1) % max(1, epochs // 10) == 0 or epoch + 1 == epochs:
                log.info("diffusion epoch %d/%d: loss %.4f", epoch + 1, epochs, final)
            save_checkpoint(outdir / f"diffusion_weights.{epoch + 1}.pt", {
                "config": cfg.as_dict(), "model": ddpm.state_dict(), "optimizer": opt.state_dict(),
                "epoch": epoch + 1, "history": history, "rng": rng_state(), "generator": gen.get_state(),
            }, kind=DIFF_CKPT_KIND)
            _prune(outdir, "diffusion_weights")
            _write_history(outdir / "history.csv", history)
    path = outdir / "diffusion.pt"
    if ctx.is_main:
        save_checkpoint(path, {"config": cfg.as_dict(), "model": ddpm.state_dict(),
                               "swan_config": ae.cfg.as_dict(), "apix": store.apix, "box": store.box,
                               "swan_model": str(model)}, kind=DIFF_KIND)
    shutdown(ctx)
    return TrainDiffusionResult(outdir, path, epochs, final, time.monotonic() - t_start)


def load_diffusion(path: Path, device="cpu"):
    """``(ddpm, state)`` from a ``diffusion.pt``; the model is in eval mode."""
    from cryovox.models.swan.diffusion import diffusion_from_state

    state = load_checkpoint(Path(path), kind=DIFF_KIND)
    return diffusion_from_state(state).to(device).eval(), state


# ------------------------------------------------------------------ maps in, maps out
@dataclass
class FittedMap:
    """A user's map brought onto a model's grid (see :func:`fit_map`).

    data: ``(box, box, box)`` normalised float32 tensor on the model's grid; mean / std: the
    normalisation undone by :func:`unfit_map`; source_apix / source_box: the input grid;
    resampled_box: the edge after resampling to the model pixel size (before crop/pad).
    """

    data: Tensor
    mean: float
    std: float
    source_apix: float
    source_box: int
    resampled_box: int


def fit_map(data: np.ndarray | Tensor, apix: float, model_box: int, model_apix: float,
            source: str = "map") -> FittedMap:
    """Resample a cubic map ``(D, D, D)`` to the model's pixel size (Fourier crop/pad, when the
    sizes differ by more than 0.5 %), crop/pad it about the centre to the model's box, and
    normalise it to zero mean and unit variance (as ``curate`` does for the corpus)."""
    from cryovox.core.spectral import resample
    from cryovox.core.transform import center_crop_pad

    x = torch.as_tensor(np.asarray(data, dtype=np.float32)) if not isinstance(data, Tensor) else data.float()
    if x.dim() != 3 or not (x.shape[0] == x.shape[1] == x.shape[2]):
        raise InputError(f"{source}: map is {tuple(x.shape)}; a cubic map is needed")
    D = x.shape[-1]
    if not apix or apix <= 0:
        apix = model_apix
    if abs(apix - model_apix) > 5e-3 * model_apix:
        x, _ = resample(x.double(), apix, model_apix, ndim=3)
        x = x.float()
    resampled = x.shape[-1]
    x = center_crop_pad(x, model_box)
    mean, std = float(x.mean()), float(x.std())
    if not math.isfinite(std) or std <= 0:
        raise InputError(f"{source}: map is constant; nothing to encode")
    return FittedMap((x - mean) / std, mean, std, float(apix), D, resampled)


def unfit_map(fitted: FittedMap, out: Tensor) -> Tensor:
    """Undo :func:`fit_map` on a model output ``(box, box, box)``: the input's scale, box and pixel size."""
    from cryovox.core.spectral import fourier_resize
    from cryovox.core.transform import center_crop_pad

    y = out.float() * fitted.std + fitted.mean
    y = center_crop_pad(y, fitted.resampled_box, value=fitted.mean)
    if fitted.resampled_box != fitted.source_box:
        y = fourier_resize(y.double(), fitted.source_box, ndim=3).float()
    return y
