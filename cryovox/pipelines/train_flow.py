"""``cryovox train-flow``: train a CryoFM-style flow-matching prior on a curated corpus.

Data (the corpus's train split; val split for validation losses): per map, CryoFM's
normalisation (:class:`cryovox.models.flow.DensityNorm`: background subtracted, clipped to
[0, 99.999th percentile], scaled to [0, 1]); random rotation (uniform on SO(3), trilinear,
applied after the background is at 0 so the corners stay empty), random flips of the three
axes, a random crop of ``crop`` voxels when smaller than the corpus box (up to 5 draws, keeping
the first crop that holds at least a fifth of the map's mass above 0.1, as CryoFM prefers
crops with density); finally standardisation with the training set's mean and standard
deviation of those [0, 1] values, measured on up to 256 training maps before training and
stored in the model.

Objective: rectified flow, ``x_t = (1 − t) x_0 + t x_1``, regress ``x_0 − x_1``, t uniform
(:func:`cryovox.models.flow.flow_loss`). Optimiser as CryoFM: AdamW, betas (0.9, 0.98), weight
decay 0.01, linear warm-up from 1 % of ``lr`` over ``warmup`` steps, gradient clipping at 1, EMA of
the weights (used for sampling). bf16 autocast on GPU. Under ``torchrun`` each process
trains on its share of every epoch's permutation (DDP).

Outputs: ``prior.pt`` (kind ``flow-prior``: EMA weights, architecture, normalisation, box,
pixel size; what ``denoise``/``inpaint-wedge``/``abinitio``/``generate`` take),
``checkpoint.pt`` (everything for ``--resume``, written at the end of every epoch:
weights, EMA, optimiser, schedule, step, RNG states; resuming continues bit for bit at the next
epoch), ``metrics.csv`` (epoch, step, train loss, val loss of the EMA weights at fixed
t ∈ {0.1, 0.3, 0.5, 0.7, 0.9} with fixed noise, maps per second, seconds).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from cryovox.errors import InputError
from cryovox.utils.files import to_plain

log = logging.getLogger("cryovox")

__all__ = ["UNET_PRESETS", "model_config", "TrainFlowResult", "prepare_map", "run"]

UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(base=8, mults=[1, 2], num_res_blocks=1, attention=False),
    "small": dict(base=16, mults=[1, 2, 2], num_res_blocks=1, attention=True),
    "medium": dict(base=32, mults=[1, 2, 4], num_res_blocks=2, attention=True),
}

VAL_TIMES = (0.1, 0.3, 0.5, 0.7, 0.9)


def model_config(arch: str, preset: str | None) -> dict[str, Any]:
    """Network configuration of ``arch`` (``hdit`` | ``unet``) from a named preset."""
    if arch == "hdit":
        from cryovox.models.flow.hdit import hdit_config

        try:
            return hdit_config(preset or "small").to_dict()
        except ValueError as err:
            raise InputError(f"--preset {preset}: {err}") from None
    if arch == "unet":
        name = preset or "small"
        if name not in UNET_PRESETS:
            raise InputError(f"--preset {name}: unknown U-Net preset (choose {', '.join(UNET_PRESETS)})")
        return dict(UNET_PRESETS[name])
    raise InputError(f"--arch {arch}: expected hdit or unet")


@dataclass
class TrainFlowResult:
    prior: Path
    epochs: int
    steps: int
    train_loss: float
    val_loss: float
    maps_per_s: float
    params: int
    arch: str
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"flow prior {self.prior} ({self.arch}, {self.params / 1e6:.2f} M parameters): {self.epochs} epochs, "
                f"{self.steps} steps, train loss {self.train_loss:.4f}, val loss (EMA) {self.val_loss:.4f}, "
                f"{self.maps_per_s:.1f} maps/s")


def prepare_map(vol: Tensor, norm, *, crop: int, generator: torch.Generator | None, augment: bool) -> Tensor:
    """One training example ``(crop, crop, crop)`` (normalised) from a corpus map ``(D, D, D)`` (see module docstring)."""
    from cryovox.core.rotations import random_rotations
    from cryovox.core.transform import flip, random_flip_axes
    from cryovox.data.volumes import rotated_patch

    s = norm.fit(vol)
    x = ((vol - s.offset) / s.scale).clamp(0.0, 1.0)
    D = x.shape[-1]
    crop = min(crop, D)
    if not augment:
        o = (D - crop) // 2
        return (x[o:o + crop, o:o + crop, o:o + crop] - norm.mean) / norm.std
    R = random_rotations(1, generator, dtype=torch.float64)[0]
    total = float((x * (x > 0.1)).sum())
    for attempt in range(5 if crop < D else 1):
        start = tuple(torch.randint(0, D - crop + 1, (3,), generator=generator).tolist())
        c = rotated_patch(x, R, start, crop, order=1).clamp(0.0, 1.0)
        if total <= 0 or float((c * (c > 0.1)).sum()) >= 0.2 * total:
            break
    axes = random_flip_axes(generator)
    if axes:
        c = flip(c, axes)
    return (c - norm.mean) / norm.std


def _dataset_stats(volumes: np.ndarray, rows: np.ndarray, norm, limit: int = 256) -> tuple[float, float]:
    """Mean and std of the clipped, [0, 1]-scaled values over up to ``limit`` maps (evenly spaced rows)."""
    take = rows[np.linspace(0, len(rows) - 1, min(limit, len(rows))).round().astype(int)]
    total = total2 = count = 0.0
    for i in take:
        v = torch.from_numpy(np.asarray(volumes[i], dtype=np.float32))
        s = norm.fit(v)
        x = ((v - s.offset) / s.scale).clamp(0, 1).double()
        total += float(x.sum())
        total2 += float((x * x).sum())
        count += x.numel()
    mean = total / count
    return mean, math.sqrt(max(total2 / count - mean * mean, 1e-12))


def _val_loss(model, examples: Tensor, device, amp: bool) -> float:
    """Mean flow loss of ``model`` on fixed examples at fixed times and noise (deterministic)."""
    from cryovox.models.flow import flow_loss

    g = torch.Generator().manual_seed(1234)
    losses = []
    model.eval()
    with torch.no_grad():
        for t in VAL_TIMES:
            for s in range(0, examples.shape[0], 8):
                x0 = examples[s:s + 8].to(device)
                noise = torch.randn(x0.shape, generator=g).to(device)
                tt = torch.full((x0.shape[0],), t, device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    losses.append(float(flow_loss(model, x0, t=tt, noise=noise)) * x0.shape[0])
    model.train()
    return sum(losses) / (len(VAL_TIMES) * examples.shape[0])


def run(corpus: Path, outdir: Path, *, arch: str = "unet", preset: str | None = None, crop: int | None = None,
        epochs: int = 10, batch_size: int = 8, lr: float = 1e-4, warmup: int = 2000, weight_decay: float = 0.01,
        ema_decay: float = 0.999, grad_clip: float = 1.0, time_sampling: str = "uniform", resume: bool = False,
        device: str = "auto", seed: int = 0, bf16: bool = True, max_steps: int | None = None,
        augment: bool = True, checkpointing: bool = False) -> TrainFlowResult:
    """Train a flow prior on ``corpus`` into ``outdir`` (see module docstring)."""
    from cryovox.io.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
    from cryovox.io.corpus import open_corpus
    from cryovox.models.flow import EMA, PRIOR_KIND, DensityNorm, FlowPrior, build_velocity_model, flow_loss
    from cryovox.utils.distributed import all_reduce_sum, barrier, init_distributed, shutdown, unwrap, wrap_model
    from cryovox.utils.files import write_text_atomic
    from cryovox.utils.progress import Progress
    from cryovox.utils.runtime import seed_everything

    outdir = Path(outdir)
    corp = open_corpus(corpus)
    train_rows = corp.indices("train")
    val_rows = corp.indices("val")
    if len(val_rows) == 0:
        val_rows = corp.indices("test")
    if len(train_rows) == 0:
        raise InputError(f"{corpus}: the corpus has no training samples")
    crop = corp.box if crop is None else int(crop)
    if not 1 <= crop <= corp.box:
        raise InputError(f"--crop {crop}: must lie in [1, {corp.box}] (the corpus box)")
    config = model_config(arch, preset)
    if arch == "hdit":
        config["checkpointing"] = checkpointing
    probe = build_velocity_model(arch, config)
    div = probe.cfg.divisor if arch == "hdit" else probe.divisor
    if crop % div:
        raise InputError(f"--crop {crop}: must be a multiple of {div} for this network")
    if epochs < 1 or batch_size < 1:
        raise InputError("--epochs and --batch-size must be at least 1")

    ctx = init_distributed(device)
    dev = ctx.device
    amp = bf16 and dev.type == "cuda"
    seed_everything(seed)
    model = build_velocity_model(arch, config).to(dev)
    n_params = sum(p.numel() for p in model.parameters())
    ema = EMA(model, ema_decay)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, 0.01 + 0.99 * s / max(1, warmup)))
    norm = DensityNorm()
    start_epoch, step = 0, 0
    rows_log: list[str] = []
    ckpt_path = outdir / "checkpoint.pt"
    if resume and ckpt_path.is_file():
        state = load_checkpoint(ckpt_path, kind="flow-train", map_location=dev)
        if state["arch"] != arch or state["config"] != to_plain(config) or state["crop"] != crop:
            raise InputError(f"{ckpt_path}: was trained with other settings (arch/preset/crop); "
                             "resume with the same ones or use a new output directory")
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        norm = DensityNorm(**state["norm"])
        start_epoch, step = int(state["epoch"]), int(state["step"])
        rows_log = list(state["metrics"])
        set_rng_state(state["rng"])
        log.info("resumed from %s at epoch %d (step %d)", ckpt_path, start_epoch, step)
    else:
        mean, std = _dataset_stats(corp.volumes, train_rows, norm)
        norm = DensityNorm(mean=mean, std=std)
        log.info("training set: %d maps of %d³ at %.3f Å/px; normalised values mean %.4f, std %.4f",
                 len(train_rows), corp.box, corp.apix, mean, std)
    log.info("%s network, %.2f M parameters, crop %d³, batch %d × %d process(es), %s", arch, n_params / 1e6, crop,
             batch_size, ctx.world_size, f"{dev} (bf16)" if amp else str(dev))
    net = wrap_model(model, ctx)

    # fixed validation examples (centre crop, no augmentation)
    vrows = val_rows[: min(32, len(val_rows))]
    val_examples = (torch.stack([prepare_map(torch.from_numpy(corp[i]), norm, crop=crop, generator=None,
                                             augment=False) for i in vrows])[:, None]
                    if len(vrows) else None)

    def save(epoch: int, train_loss: float, val_loss: float) -> dict[str, Path]:
        files = {}
        if not ctx.is_main:
            return files
        prior = FlowPrior(model=ema.shadow, arch=arch, config=config, norm=norm, box=crop, apix=corp.apix)
        files["prior"] = save_checkpoint(outdir / "prior.pt", prior.state(), kind=PRIOR_KIND)
        files["checkpoint"] = save_checkpoint(ckpt_path, {
            "arch": arch, "config": to_plain(config), "crop": crop, "model": unwrap(net).state_dict(),
            "ema": ema.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
            "norm": norm.to_dict(), "epoch": epoch, "step": step, "metrics": rows_log, "rng": rng_state(),
        }, kind="flow-train")
        header = "epoch,step,train_loss,val_loss,maps_per_s,seconds"
        files["metrics"] = write_text_atomic(outdir / "metrics.csv", "\n".join([header] + rows_log) + "\n")
        return files

    per_rank = len(train_rows) // ctx.world_size
    if per_rank < 1:
        raise InputError(f"{corpus}: {len(train_rows)} training maps for {ctx.world_size} processes")
    steps_per_epoch = math.ceil(per_rank / batch_size)
    files: dict[str, Path] = {}
    train_loss = val_loss = float("nan")
    rate = 0.0
    try:
        for epoch in range(start_epoch, epochs):
            if max_steps is not None and step >= max_steps:
                break
            g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
            perm = train_rows[torch.randperm(len(train_rows), generator=g).numpy()]
            mine = perm[ctx.rank * per_rank:(ctx.rank + 1) * per_rank]
            aug = torch.Generator().manual_seed(seed * 7919 + epoch * 104_729 + ctx.rank)
            t0 = time.monotonic()
            total = torch.zeros(2, dtype=torch.float64, device=dev)
            with Progress(f"epoch {epoch + 1}/{epochs}", total=steps_per_epoch) as bar:
                for b in range(steps_per_epoch):
                    if max_steps is not None and step >= max_steps:
                        break
                    rows = mine[b * batch_size:(b + 1) * batch_size]
                    x0 = torch.stack([prepare_map(torch.from_numpy(corp[int(i)]), norm, crop=crop, generator=aug,
                                                  augment=augment) for i in rows])[:, None].to(dev)
                    with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                        loss = flow_loss(net, x0, strategy=time_sampling, generator=aug)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    opt.step()
                    sched.step()
                    ema.update(unwrap(net))
                    step += 1
                    value = float(loss.detach())
                    total += torch.tensor([value * len(rows), len(rows)], dtype=torch.float64, device=dev)
                    bar.advance(1, loss=value)
            all_reduce_sum(total, ctx)
            seconds = time.monotonic() - t0
            train_loss = float(total[0] / total[1].clamp_min(1))
            rate = float(total[1]) / max(seconds, 1e-9)
            val_loss = _val_loss(ema.shadow, val_examples, dev, amp) if val_examples is not None else float("nan")
            log.info("epoch %d: train loss %.4f, val loss (EMA) %.4f, %.1f maps/s", epoch + 1, train_loss, val_loss,
                     rate)
            rows_log.append(f"{epoch + 1},{step},{train_loss:.6f},{val_loss:.6f},{rate:.3f},{seconds:.1f}")
            files = save(epoch + 1, train_loss, val_loss)
            barrier(ctx)
    finally:
        shutdown(ctx)
    if not files and ctx.is_main:
        files = save(start_epoch, train_loss, val_loss)
    return TrainFlowResult(prior=outdir / "prior.pt", epochs=len(rows_log), steps=step, train_loss=train_loss,
                           val_loss=val_loss, maps_per_s=rate, params=n_params, arch=arch, files=files)
