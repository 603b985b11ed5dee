"""Posterior sampling with a flow prior, shared by denoise, inpaint-wedge, abinitio and generate.

A *task* says what was observed: for a batch of windows of the map it returns the likelihood
closure (CryoFM Alg. 1) and/or the data-consistency projection (Alg. 2) that
:func:`cryovox.models.flow.sampling.flow_sample` applies at every step. This module
splits a map into windows, runs the sampler over (sample × window) batches, blends the
windows back and summarises several posterior samples as their mean and per-voxel standard
deviation.

Windows (sliding-window sampling for maps larger than the prior's box): a map of edge ``D``
larger than the window ``w`` (the prior's training box) is covered by windows at starts
``0, w − o, 2(w − o), …`` with the last one flush with the far edge (overlap ``o``, default
``w / 4``); each window is sampled on its own and the results are blended with weights
that ramp as a raised cosine over the overlaps (1 elsewhere) and are normalised per voxel. A
map smaller than the window (or not a multiple of the network's size divisor) is padded with
the background value to the next multiple instead, and cropped back. Memory is bounded by
``batch_size`` windows whatever the map size.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Protocol, Sequence

import torch
from torch import Tensor

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

__all__ = ["Task", "SampleSet", "window_starts", "blend_weights", "padded_size", "pad_to", "sample_posterior",
           "summarize", "load_prior", "resample_power_grid", "write_sample_set", "to_prior_grid", "from_prior_grid"]

Start = tuple[int, int, int]


class Task(Protocol):
    """Observation model of a restoration task, in the prior's normalised units."""

    def terms(self, jobs: Sequence[tuple[int, Start]], size: int) -> tuple[Callable | None, Callable | None]:
        """``(likelihood, projection)`` for a batch of ``(sample index, window start (z, y, x))`` jobs.

        Windows have edge ``size`` on the padded grid (:func:`padded_size`). likelihood
        ``(x̂_0 (B, 1, w, w, w), t) → (B,)`` and projection ``(x̂_0, t) → x̃_0``, B = ``len(jobs)``
        in that order; either may be None.
        """


@dataclass
class SampleSet:
    """Posterior samples ``(S, D, D, D)`` and their voxel-wise mean and standard deviation (input units)."""

    samples: Tensor
    mean: Tensor
    std: Tensor | None


def load_prior(path: Path, device=None):
    """The :class:`~cryovox.models.flow.FlowPrior` in a ``train-flow`` model file (InputError if it is not one)."""
    from cryovox.io.checkpoint import load_checkpoint
    from cryovox.models.flow import PRIOR_KIND, FlowPrior

    state = load_checkpoint(path, kind=PRIOR_KIND)
    try:
        return FlowPrior.from_state(state, device=device)
    except (KeyError, RuntimeError, TypeError) as err:
        raise InputError(f"{path}: flow prior could not be loaded ({type(err).__name__}: {err})") from None


def window_starts(n: int, w: int, overlap: int) -> list[int]:
    """Window starts covering ``[0, n)`` with windows of ``w`` overlapping by at least ``overlap``."""
    if w >= n:
        return [0]
    step = max(1, w - overlap)
    starts = list(range(0, n - w, step))
    starts.append(n - w)
    return sorted(set(starts))


def blend_weights(w: int, overlap: int, lead: bool, trail: bool, device=None) -> Tensor:
    """1D weights ``(w,)``: raised-cosine ramps over ``overlap`` voxels at an inner leading / trailing edge."""
    out = torch.ones(w, dtype=torch.float64, device=device)
    if overlap > 0:
        ramp = 0.5 - 0.5 * torch.cos(math.pi * (torch.arange(overlap, dtype=torch.float64, device=device) + 0.5)
                                     / overlap)
        if lead:
            out[:overlap] = ramp
        if trail:
            out[w - overlap:] = torch.minimum(out[w - overlap:], ramp.flip(0))
    return out


def resample_power_grid(power: Tensor, size: int) -> Tensor:
    """A full centred noise-power grid ``(D, D, D)`` read at the frequencies of a ``size`` box (trilinear), × ``(size/D)³``."""
    import torch.nn.functional as F

    D = power.shape[-1]
    if size == D:
        return power
    idx = (torch.arange(size, dtype=torch.float64) - size // 2) * (D / size) + D // 2   # float indices in the D grid
    coord = 2 * idx / (D - 1) - 1
    gz, gy, gx = torch.meshgrid(coord, coord, coord, indexing="ij")
    grid = torch.stack([gx, gy, gz], -1)[None].to(power.device, torch.float64)
    out = F.grid_sample(power.to(torch.float64)[None, None], grid, mode="bilinear", padding_mode="border",
                        align_corners=True)[0, 0]
    return (out * (size / D) ** 3).to(power.dtype)


def _window_plan(D: int, box: int, divisor: int, overlap: int | None) -> tuple[int, int, list[int], int]:
    """(padded size, window size, starts per axis, overlap)."""
    if D <= box:
        size = int(math.ceil(D / divisor) * divisor)
        return size, size, [0], 0
    w = box
    o = w // 4 if overlap is None else int(overlap)
    if not 0 <= o < w:
        raise InputError(f"--overlap {o}: must lie in [0, {w})")
    return D, w, window_starts(D, w, o), o


def padded_size(size: int, prior) -> int:
    """Edge of the grid the sampler works on for a map of edge ``size`` (≥ size; see module docstring)."""
    return _window_plan(size, prior.box, prior.divisor, 0)[0]


def pad_to(vol: Tensor, size: int, value: float) -> Tensor:
    """Pad the last three axes of ``vol`` at their far ends to ``size`` with ``value``."""
    D = vol.shape[-1]
    if D == size:
        return vol
    out = torch.full(vol.shape[:-3] + (size, size, size), float(value), dtype=vol.dtype, device=vol.device)
    out[..., :D, :D, :D] = vol
    return out


def sample_posterior(prior, size: int, task: Task | None, *, samples: int = 1, steps: int = 1000,
                     zeta_max: float = 5.0, guidance_scale: float = 1.0, backprop: bool = True,
                     batch_size: int = 4, overlap: int | None = None, seed: int = 0, pad_value: float = 0.0,
                     label: str = "sampling", amp: bool = False, single_window: bool = False) -> Tensor:
    """Posterior samples ``(S, D, D, D)`` in the prior's normalised units for a map of edge ``size``.

    prior: a :class:`~cryovox.models.flow.FlowPrior` (on its device); task: the observation
    model for the (padded) ``D`` grid, or None for unconditional samples; ``pad_value``: the
    normalised background used where the map is padded to the network's size divisor (the
    task sees the padded grid, :func:`padded_size`). Window noise comes from a CPU generator seeded by ``seed``,
    so results are repeatable and independent of the device. ``single_window`` samples the whole
    map as one window even when it is larger than the prior's box (tasks whose observation is
    global, such as projections).
    """
    from cryovox.models.flow.sampling import flow_sample
    from cryovox.utils.progress import Progress

    device = next(prior.model.parameters()).device
    padded, w, starts1, o = _window_plan(size, max(size, prior.box) if single_window else prior.box,
                                         prior.divisor, overlap)
    windows = [(z, y, x) for z in starts1 for y in starts1 for x in starts1]
    jobs = [(s, win) for s in range(samples) for win in windows]
    out = torch.zeros((samples, padded, padded, padded), dtype=torch.float64)
    norm = torch.zeros((padded, padded, padded), dtype=torch.float64)
    gen = torch.Generator().manual_seed(int(seed))
    noise = [torch.randn((1, w, w, w), generator=gen) for _ in jobs]

    weights = {}
    for win in windows:
        ax = [blend_weights(w, o, lead=st > 0, trail=st + w < padded) for st in win]
        weights[win] = ax[0][:, None, None] * ax[1][None, :, None] * ax[2][None, None, :]
        z, y, x = win
        norm[z:z + w, y:y + w, x:x + w] += weights[win]

    def velocity(xt: Tensor, t: Tensor) -> Tensor:
        if amp and device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.bfloat16):
                return prior.velocity(xt, t).float()
        return prior.velocity(xt, t)

    total = len(jobs) * steps
    with Progress(label, total=total) as bar:
        for b0 in range(0, len(jobs), max(1, batch_size)):
            batch = jobs[b0:b0 + batch_size]
            lik, proj = task.terms(batch, w) if task is not None else (None, None)
            x1 = torch.stack([noise[b0 + i] for i in range(len(batch))]).to(device)
            res = flow_sample(velocity, x1, steps, likelihood=lik, projection=proj, zeta_max=zeta_max,
                              guidance_scale=guidance_scale, backprop=backprop,
                              on_step=lambda i, t: bar.advance(len(batch)))
            res = res[:, 0].to("cpu", torch.float64)
            for (s, (z, y, x)), r in zip(batch, res):
                out[s, z:z + w, y:y + w, x:x + w] += r * weights[(z, y, x)]
    out = out / norm
    return out[:, :size, :size, :size].to(torch.float32)


def summarize(samples: Tensor) -> SampleSet:
    """Mean and (unbiased, S > 1) standard deviation over the first axis."""
    mean = samples.mean(0)
    std = samples.std(0, unbiased=True) if samples.shape[0] > 1 else None
    return SampleSet(samples=samples, mean=mean, std=std)


def write_sample_set(outdir: Path, stem: str, result: SampleSet, apix: float, origin, nstart,
                     save_samples: bool = False) -> dict[str, Path]:
    """Write ``{stem}.mrc`` (mean), ``{stem}_std.mrc`` (S > 1) and optionally every sample, float32."""
    from cryovox.io.mrc import write_map

    paths = {"mean": write_map(outdir / f"{stem}.mrc", result.mean, apix, origin=origin, nstart=nstart)}
    if result.std is not None:
        paths["std"] = write_map(outdir / f"{stem}_std.mrc", result.std, apix, origin=origin, nstart=nstart)
    if save_samples:
        for i, s in enumerate(result.samples):
            paths[f"sample_{i:03d}"] = write_map(outdir / f"{stem}_sample{i:03d}.mrc", s, apix, origin=origin,
                                                 nstart=nstart)
    return paths


def to_prior_grid(vol: Tensor, apix: float, prior_apix: float, tol: float = 0.01) -> tuple[Tensor, float]:
    """Resample a map ``(D, D, D)`` to the prior's pixel size (Fourier crop/pad) when they differ by > ``tol``.

    Returns ``(map on the prior's grid, its pixel size)``; unchanged when already close.
    """
    from cryovox.core.spectral import resample

    if apix <= 0 or abs(apix / prior_apix - 1) <= tol:
        return vol, apix
    out, actual = resample(vol.to(torch.float64), apix, prior_apix, 3)
    log.info("resampled %d³ at %.3f Å/px to %d³ at %.3f Å/px (the prior's pixel size)",
             vol.shape[-1], apix, out.shape[-1], actual)
    return out.to(vol.dtype), actual


def from_prior_grid(vol: Tensor, size: int) -> Tensor:
    """Back to the input's box ``size`` (Fourier crop/pad over the last three axes)."""
    from cryovox.core.spectral import fourier_resize

    if vol.shape[-1] == size:
        return vol
    return fourier_resize(vol.to(torch.float64), size, 3).to(vol.dtype)
