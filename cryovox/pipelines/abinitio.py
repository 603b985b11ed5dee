"""Ab initio map from a few class averages with unknown poses and a flow prior (CryoFM Alg. 3).

At sampler step ``t`` the prior's clean-map estimate ``x̂_0`` is compared with the class averages
through its projections (:func:`cryovox.core.degrade.project_maps`, the Fourier-slice
projector of :mod:`cryovox.core.slicing`):

1. pose search (every ``search_every`` steps, always at the first): for each average, a global
   search over an SO(3) grid (:func:`cryovox.core.so3.so3_grid`, ``angular_step``) and all
   in-plane shifts up to ``max_shift`` pixels (cross-correlation by FFT), then ``refine_levels``
   local searches (:func:`cryovox.core.so3.local_grid`), each at half the previous step: coarse
   to fine. The score is the normalised cross-correlation of the images and the projections
   within a Fourier band ``1 ≤ |k| ≤ r(t)``, ``r(t) = r_min + (r_max − r_min)(1 − t)`` (low
   resolution while the estimate is blurry, up to ``r_max`` at the end);
2. likelihood (the loss whose gradient guides the flow): ``−Σ_i NCC_i`` at the found poses plus
   ``background_weight · mean((x̂_0 − b)² outside the particle sphere)`` (``b`` the normalised
   background level), which keeps density inside the sphere. The projected map is
   ``(x̂_0 − b) · sphere``, i.e. density above background within the particle.
   With ``stop_gradient`` the gradient is taken with respect to ``x̂_0`` only, not through the
   network (cheaper; our reading of the paper's optional stop-gradient).

Class averages are read from an MRC stack, resampled to the prior's pixel size if needed,
each standardised inside a soft circular mask. A map from projections is determined up to
its hand (mirror image) and an overall orientation; compare with a reference only after
aligning both (the benchmark does). Outputs: ``abinitio.mrc`` (mean over samples, at the
prior's pixel size, box = the averages' box), ``abinitio_std.mrc`` (``samples > 1``),
``poses.csv`` (the first sample's final Euler angles (RELION ZYZ, degrees) and shifts (px)).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

__all__ = ["search_poses", "AbinitioTask", "AbinitioResult", "run"]


def _band(size: int, r_max: float, device) -> Tensor:
    """Half-layout boolean ``(D, D//2+1)`` of ``1 ≤ |k| ≤ r_max`` and the Hermitian weights as float."""
    ky = torch.arange(size, device=device, dtype=torch.float64) - size // 2
    kx = torch.arange(size // 2 + 1, device=device, dtype=torch.float64)
    r = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    return (r >= 1) & (r <= r_max)


def _hw(size: int, device, dtype) -> Tensor:
    from cryovox.core.spectral import hermitian_weights

    return hermitian_weights(size, device=device, dtype=dtype)


def _shift_mask(size: int, max_shift: float, device) -> Tensor:
    k = torch.arange(size, device=device, dtype=torch.float64) - size // 2
    return (k[:, None] ** 2 + k[None, :] ** 2) <= max_shift ** 2 + 1e-9


def _ncc_maps(S: Tensor, I: Tensor, band: Tensor, hw: Tensor) -> Tensor:
    """NCC over all cyclic shifts: S ``(m, D, D//2+1)`` projections, I ``(m, D, D//2+1)`` images → ``(m, D, D)``.

    Entry ``[c + s]`` (``c = D // 2``) scores the projection translated by ``+s`` pixels.
    """
    from cryovox.core.fft import irfftn_c

    D = S.shape[-2]
    bw = band.to(S.real.dtype) * hw
    S = S * band
    I = I * band
    ns = torch.sqrt((bw * (S.real ** 2 + S.imag ** 2)).sum((-2, -1))).clamp_min(1e-30)
    ni = torch.sqrt((bw * (I.real ** 2 + I.imag ** 2)).sum((-2, -1))).clamp_min(1e-30)
    cc = irfftn_c(S.conj() * I, D, 2) * D ** 2
    return cc / (ns * ni)[:, None, None]


def search_poses(vol: Tensor, images_ft: Tensor, *, angular_step: float = 15.0, refine_levels: int = 2,
                 max_shift: float = 4.0, r_max: float | None = None, pad: int = 2,
                 chunk_elements: int = 1 << 23, grid: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Best pose of each image against the projections of ``vol``: coarse global search, then local refinement.

    vol: ``(D, D, D)`` real map; images_ft: ``(n, D, D//2+1)`` half transforms
    (:func:`cryovox.core.fft.rfftn_c`) of the images; ``r_max``: band limit in pixels (default
    ``D/2 − 1``). Returns ``(rot (n, 3, 3), shifts (n, 2) px (x, y), ncc (n,))``: projecting at
    ``rot`` and translating by ``shifts`` gives the best match.
    """
    from cryovox.core.slicing import project_volume, volume_to_fourier
    from cryovox.core.so3 import local_grid, so3_grid

    D = vol.shape[-1]
    n = images_ft.shape[0]
    dev = vol.device
    r_max = D / 2 - 1 if r_max is None else r_max
    band = _band(D, r_max, dev)
    hw = _hw(D, dev, vol.dtype)
    smask = _shift_mask(D, max_shift, dev)
    c = D // 2
    V = volume_to_fourier(vol.detach(), pad=pad)
    G = (so3_grid(angular_step, dtype=vol.dtype, device=dev) if grid is None else grid.to(dev, vol.dtype))

    best = torch.full((n,), -math.inf, dtype=vol.dtype, device=dev)
    best_rot = torch.eye(3, dtype=vol.dtype, device=dev).repeat(n, 1, 1)
    best_shift = torch.zeros(n, 2, dtype=vol.dtype, device=dev)
    step = max(1, chunk_elements // max(1, n * D * D))

    def consider(scores: Tensor, rots: Tensor, which: Tensor) -> None:
        # scores (m, D, D) for images `which` (m,) at rotations rots (m, 3, 3)
        scores = scores.masked_fill(~smask, -math.inf)
        flat = scores.reshape(scores.shape[0], -1)
        val, idx = flat.max(-1)
        for j in range(scores.shape[0]):
            i = int(which[j])
            if val[j] > best[i]:
                best[i] = val[j]
                best_rot[i] = rots[j]
                sy, sx = divmod(int(idx[j]), D)
                best_shift[i] = torch.tensor([sx - c, sy - c], dtype=vol.dtype, device=dev)

    with torch.no_grad():
        for s in range(0, G.shape[0], step):
            R = G[s:s + step]
            S = project_volume(V, R, pad=pad)                                  # (m, D, D//2+1)
            m = R.shape[0]
            cc = _ncc_maps(S.repeat_interleave(n, 0), images_ft.repeat(m, 1, 1), band, hw)
            cc = cc.reshape(m, n, D, D)
            # best rotation per image within this chunk
            flat = cc.masked_fill(~smask, -math.inf).reshape(m, n, -1).max(-1).values   # (m, n)
            j = flat.argmax(0)                                                 # (n,)
            sel = cc[j, torch.arange(n)]
            consider(sel, R[j], torch.arange(n))
        st = angular_step
        for _ in range(refine_levels):
            st = st / 2
            cand = local_grid(best_rot, st, st * 1.5)                          # (n, K, 3, 3)
            K = cand.shape[1]
            R = cand.reshape(-1, 3, 3)
            which = torch.arange(n, device=dev).repeat_interleave(K)
            for s in range(0, R.shape[0], step * n):
                Rs = R[s:s + step * n]
                S = project_volume(V, Rs, pad=pad)
                cc = _ncc_maps(S, images_ft[which[s:s + step * n]], band, hw)
                consider(cc, Rs, which[s:s + step * n])
    return best_rot, best_shift, best


class AbinitioTask:
    """Alg. 3 likelihood with per-sample pose state (see module docstring)."""

    def __init__(self, images: Tensor, *, steps: int, search_every: int = 10, angular_step: float = 15.0,
                 refine_levels: int = 2, max_shift: float = 4.0, r_min: float = 3.0, r_max: float | None = None,
                 background: float = 0.0, background_weight: float = 1.0, device=None, pad: int = 2):
        from cryovox.core.fft import rfftn_c
        from cryovox.core.masks import spherical_mask
        from cryovox.core.so3 import so3_grid

        self.images = images.to(device, torch.float32)
        self.D = images.shape[-1]
        self.images_ft = rfftn_c(self.images, 2)
        self.steps = steps
        self.search_every = max(1, int(search_every))
        self.angular_step = angular_step
        self.refine_levels = refine_levels
        self.max_shift = max_shift
        self.r_min = r_min
        self.r_max = self.D / 2 - 1 if r_max is None else r_max
        self.background = float(background)
        self.background_weight = float(background_weight)
        self.device = device
        self.pad = pad
        self.sphere = spherical_mask(self.D, 0.4 * self.D, 0.08 * self.D, device=device)
        self.grid = so3_grid(angular_step, dtype=torch.float32, device=device)
        self.poses: dict[int, tuple[Tensor, Tensor, Tensor]] = {}
        self.calls: dict[int, int] = {}

    def band_radius(self, t: float) -> float:
        return self.r_min + (self.r_max - self.r_min) * (1.0 - t)

    def density(self, x0: Tensor) -> Tensor:
        """What is projected: ``(x̂_0 − background) · sphere``."""
        return (x0 - self.background) * self.sphere

    def terms(self, jobs, size):
        from cryovox.core.degrade import project_maps

        if size != self.D:
            raise InputError(f"ab initio needs one window the size of the class averages ({self.D}); got {size}")
        samples = [s for s, _ in jobs]
        band_cache: dict[float, Tensor] = {}
        hw = _hw(self.D, self.device, torch.float32)

        def likelihood(x0: Tensor, t: float) -> Tensor:
            from cryovox.core.fft import rfftn_c

            r = self.band_radius(t)
            if r not in band_cache:
                band_cache[r] = _band(self.D, r, self.device)
            band = band_cache[r]
            losses = []
            for b, s in enumerate(samples):
                k = self.calls.get(s, 0)
                self.calls[s] = k + 1
                dens = self.density(x0[b, 0])
                if s not in self.poses or k % self.search_every == 0:
                    self.poses[s] = search_poses(dens.detach(), self.images_ft, angular_step=self.angular_step,
                                                 refine_levels=self.refine_levels, max_shift=self.max_shift,
                                                 r_max=r, pad=self.pad, grid=self.grid)
                rot, shifts, _ = self.poses[s]
                proj = project_maps(dens, rot, shifts, pad=self.pad)
                P = rfftn_c(proj, 2)
                bw = band.to(P.real.dtype) * hw
                num = (bw * (P * self.images_ft.conj()).real).sum((-2, -1))
                npj = torch.sqrt((bw * (P.real ** 2 + P.imag ** 2)).sum((-2, -1))).clamp_min(1e-12)
                nim = torch.sqrt((bw * (self.images_ft.real ** 2 + self.images_ft.imag ** 2)).sum((-2, -1)))
                ncc = num / (npj * nim.clamp_min(1e-12))
                outside = (1 - self.sphere)
                bg = ((x0[b, 0] - self.background) ** 2 * outside).sum() / outside.sum()
                losses.append(-ncc.sum() + self.background_weight * bg)
            return torch.stack(losses)

        return likelihood, None

    def final_ncc(self, sample: int) -> float:
        return float(self.poses[sample][2].mean()) if sample in self.poses else float("nan")


@dataclass
class AbinitioResult:
    output: Path
    std: Path | None
    samples: int
    steps: int
    images: int
    mean_ncc: float
    apix: float
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        extra = f", std map {self.std}" if self.std else ""
        return (f"ab initio map {self.output} from {self.images} class averages ({self.samples} sample(s) × "
                f"{self.steps} steps; mean NCC of averages and projections {self.mean_ncc:.3f}{extra})")


def _standardize(images: Tensor) -> Tensor:
    from cryovox.core.masks import spherical_mask

    D = images.shape[-1]
    m = spherical_mask(D, 0.45 * D, 0.05 * D, ndim=2, dtype=images.dtype)
    x = images - (images * m).sum((-2, -1), keepdim=True) / m.sum()
    x = x * m
    return x / x.flatten(1).std(1).clamp_min(1e-12)[:, None, None]


def run(averages: Path, *, prior: Path, outdir: Path, steps: int = 1000, samples: int = 1, search_every: int = 10,
        angular_step: float = 15.0, refine_levels: int = 2, max_shift: float | None = None,
        resolution: float | None = None, background_weight: float = 1.0, stop_gradient: bool = False,
        zeta_max: float = 5.0, guidance_scale: float = 1.0, seed: int = 0, device: str = "auto",
        save_samples: bool = False) -> AbinitioResult:
    """Ab initio map from the class averages in ``averages`` (MRC stack) into ``outdir``."""
    from cryovox.core.rotations import matrix_to_euler
    from cryovox.core.spectral import resample
    from cryovox.io.mrc import open_stack
    from cryovox.models.flow import MapScale
    from cryovox.pipelines.flow_sample import load_prior, sample_posterior, summarize, write_sample_set
    from cryovox.utils.files import write_text_atomic
    from cryovox.utils.runtime import resolve_device

    if samples < 1 or steps < 1:
        raise InputError("--samples and --steps must be at least 1")
    dev = resolve_device(device)
    with open_stack(averages) as st:
        imgs = torch.from_numpy(st[:]).to(torch.float64)
        apix_in = st.apix
    if imgs.shape[0] < 2:
        raise InputError(f"{averages}: {imgs.shape[0]} image; ab initio needs at least 2 class averages")
    fp = load_prior(Path(prior), device=dev)
    if apix_in <= 0:
        log.info("%s: no pixel size in the header; assuming the prior's %.3f Å/px", averages, fp.apix)
        apix_in = fp.apix
    imgs, apix = (resample(imgs, apix_in, fp.apix, 2) if abs(apix_in / fp.apix - 1) > 0.01 else (imgs, apix_in))
    D = imgs.shape[-1]
    if D % fp.divisor:
        raise InputError(f"{averages}: box {D} (at {apix:.3f} Å/px) is not a multiple of {fp.divisor}, "
                         "which the prior's network needs; pad or crop the averages")
    imgs = _standardize(imgs).to(torch.float32)
    scale = MapScale(offset=0.0, scale=1.0)
    background = fp.norm.normalize(torch.tensor(0.0), scale).item()
    r_max = D / 2 - 1 if resolution is None else min(D / 2 - 1, D * apix / resolution)
    task = AbinitioTask(imgs, steps=steps, search_every=search_every, angular_step=angular_step,
                        refine_levels=refine_levels, max_shift=D / 8 if max_shift is None else max_shift,
                        r_max=r_max, background=background, background_weight=background_weight, device=dev)
    z = sample_posterior(fp, D, task, samples=samples, steps=steps, zeta_max=zeta_max, guidance_scale=guidance_scale,
                         backprop=not stop_gradient, batch_size=1, seed=seed, pad_value=background,
                         label="abinitio", amp=dev.type == "cuda", single_window=True)
    maps = fp.norm.denormalize(z.to(torch.float64), scale).to(torch.float32)
    result = summarize(maps)
    files = write_sample_set(Path(outdir), "abinitio", result, apix, None, None, save_samples)
    rot, shifts, ncc = task.poses[0]
    eul = matrix_to_euler(rot.to(torch.float64).cpu())
    lines = ["image,rot,tilt,psi,shift_x_px,shift_y_px,ncc"]
    lines += [f"{i + 1},{e[0]:.3f},{e[1]:.3f},{e[2]:.3f},{float(s[0]):.2f},{float(s[1]):.2f},{float(c):.4f}"
              for i, (e, s, c) in enumerate(zip(eul.tolist(), shifts.cpu(), ncc.cpu()))]
    files["poses"] = write_text_atomic(Path(outdir) / "poses.csv", "\n".join(lines) + "\n")
    return AbinitioResult(output=files["mean"], std=files.get("std"), samples=samples, steps=steps,
                          images=imgs.shape[0], mean_ncc=float(ncc.mean()), apix=apix, files=files)
