"""Denoise a map from its two half maps with a flow prior (CryoFM spectral / anisotropic noise task).

Recipe:

1. read both half maps (same grid), resample to the prior's pixel size if needed;
2. noise model: per-shell noise power of one half map from the gold-standard FSC,
   ``N = P (1 − FSC)`` (App. D.1, :func:`cryovox.core.noise.halfmap_noise_power`); with
   ``anisotropic`` the direction-dependent power (App. D.2) from the half-map difference
   (:func:`cryovox.core.noise.directional_noise_power`), or from the particles' viewing
   directions when a particle file is given (:func:`cryovox.core.noise.orientation_noise_power`);
3. normalisation: background and peak level (99.999th percentile) measured on the FSC-weighted
   average (``√(2 FSC / (1 + FSC))`` per shell), so that noise does not inflate the peak; the
   observations are mapped to the prior's units with that affine map (never clipped);
4. flow posterior sampling (Alg. 1) with the Gaussian likelihood ``Σ_k |X̂₀ − Y|² / N`` on
   either the average of the half maps (noise ``N / 2``, ``halves="average"``, default) or each
   half map separately (``halves="separate"``, as the public CryoFM code does; the two
   results are averaged, each output sample is such an average);
5. outputs at the input's pixel size, box and origin: ``denoised.mrc`` (mean of the samples),
   ``denoised_std.mrc`` (per-voxel standard deviation, ``samples > 1``), ``noise.csv``
   (half-map FSC and noise power per shell).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

__all__ = ["DenoiseResult", "DenoiseTask", "fsc_weighted_average", "run"]


@dataclass
class DenoiseResult:
    output: Path
    std: Path | None
    samples: int
    steps: int
    fsc143: float
    apix: float
    anisotropic: bool
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        noise = "direction-dependent" if self.anisotropic else "per-shell"
        extra = f", std map {self.std}" if self.std else ""
        return (f"denoised map {self.output} (flow posterior, {self.samples} sample(s) × {self.steps} steps, "
                f"{noise} noise from half maps whose FSC crosses 0.143 at {self.fsc143:.2f} Å{extra})")


class DenoiseTask:
    """Observation model ``y = x + n`` (Fourier-diagonal noise) for each window, in normalised units.

    obs: ``(K, D, D, D)`` observations on the padded grid; which observation a job uses is
    ``sample index % K``; power: noise power of each observation, a per-shell profile ``(n,)``
    measured on a ``source_size`` box (default: the observations' box) or a full grid on it;
    signal: per-shell signal power ``(n,)`` on the same box (needed by ``mode="wiener"``).

    ``mode="gradient"`` (CryoFM Alg. 1): the likelihood ``Σ_k |F(x̂_0) − F(y)|² / N_k`` whose
    normalised gradient guides the flow. ``mode="wiener"``: a data-consistency projection
    instead (as Alg. 2 does for the wedge): per Fourier sample, the Gaussian posterior mean of
    ``x_0`` given the flow's estimate ``x̂_0`` (prior variance ``V_k(t)``) and the data (noise ``N_k``),
    ``X̃ = (N_k X̂_0 + V_k Y) / (N_k + V_k)`` with ``V_k(t) = S_k t² M / ((1 − t)² S_k + t² M)``, the
    variance of ``X_0`` given ``X_t`` when ``X_0`` has power ``S_k`` (``M`` voxels per window): at
    t = 1 this is the Wiener filter of the data, at t → 0 the flow's own estimate.
    """

    def __init__(self, obs: Tensor, power: Tensor, device=None, signal: Tensor | None = None,
                 mode: str = "gradient", source_size: int | None = None):
        if mode not in ("gradient", "wiener"):
            raise InputError(f"--guidance {mode}: expected gradient or wiener")
        if mode == "wiener" and signal is None:
            raise ValueError("mode='wiener' needs the signal power")
        self.obs = obs
        self.power = power
        self.signal = signal
        self.mode = mode
        self.D = obs.shape[-1] if source_size is None else int(source_size)   # box the profiles were measured on
        self.device = device
        self._cache: dict[tuple[str, int], Tensor] = {}

    def _grid(self, what: str, profile: Tensor, w: int) -> Tensor:
        from cryovox.core.degrade import radial_power_grid
        from cryovox.pipelines.flow_sample import resample_power_grid

        key = (what, w)
        if key not in self._cache:
            if profile.ndim == 1:
                p = radial_power_grid(profile, w, source_size=self.D, dtype=torch.float64)
            else:
                p = resample_power_grid(profile.to(torch.float64), w)
            self._cache[key] = p.to(self.device, torch.float32)
        return self._cache[key]

    def power_for(self, w: int) -> Tensor:
        return self._grid("noise", self.power, w)

    def terms(self, jobs, size):
        from cryovox.core.degrade import gaussian_nll
        from cryovox.core.fft import fftn_c, ifftn_c

        K = self.obs.shape[0]
        y = torch.stack([self.obs[s % K, z:z + size, yy:yy + size, x:x + size] for s, (z, yy, x) in jobs])
        y = y.to(self.device, torch.float32)
        power = self.power_for(size)
        if self.mode == "gradient":
            def likelihood(x0: Tensor, t: float) -> Tensor:
                return gaussian_nll(x0[:, 0], y, power)

            return likelihood, None

        signal = self._grid("signal", self.signal, size).clamp_min(0)
        Y = fftn_c(y)
        M = float(size ** 3)

        def projection(x0: Tensor, t: float) -> Tensor:
            V = signal * t * t * M / ((1 - t) ** 2 * signal + t * t * M)
            X = fftn_c(x0[:, 0])
            return ifftn_c((X * power + Y * V) / (power + V).clamp_min(1e-30)).real[:, None].to(x0.dtype)

        return None, projection


def fsc_weighted_average(h1: Tensor, h2: Tensor, curve: Tensor) -> Tensor:
    """``(h1 + h2) / 2`` filtered by ``√(2 FSC / (1 + FSC))`` per shell (FSC < 0 → 0), as relion_postprocess."""
    from cryovox.core.fft import fftn_c, ifftn_c
    from cryovox.core.spectral import shell_index

    D = h1.shape[-1]
    c = curve.clamp(min=0.0, max=1.0)
    w = torch.sqrt(2 * c / (1 + c))
    w = torch.cat([w, torch.zeros(1, dtype=w.dtype)])                   # corners beyond Nyquist → 0
    idx = shell_index(D, 3).clamp(max=D // 2 + 1)
    avg = 0.5 * (h1.to(torch.float64) + h2.to(torch.float64))
    return ifftn_c(fftn_c(avg) * w[idx]).real.to(h1.dtype)


def _read_halves(half1: Path, half2: Path):
    from cryovox.io.mrc import read_map

    m1, m2 = read_map(half1), read_map(half2)
    if m1.data.shape != m2.data.shape:
        raise InputError(f"{half2}: half maps differ in size ({m1.box}³ and {m2.box}³)")
    if m1.apix > 0 and m2.apix > 0 and abs(m1.apix - m2.apix) > 1e-3 * m1.apix:
        raise InputError(f"{half2}: half maps differ in pixel size ({m1.apix} and {m2.apix} Å)")
    if m1.apix <= 0:
        raise InputError(f"{half1}: the MRC header has no pixel size; set it (e.g. relion_image_handler --angpix)")
    return m1, m2


def _particle_rotations(path: Path) -> Tensor:
    from cryovox.io.particles import read_particles

    table = read_particles(path)
    rot = getattr(table, "rotations", None)
    if rot is None:
        raise InputError(f"{path}: no particle orientations found")
    return torch.as_tensor(rot() if callable(rot) else rot, dtype=torch.float64)


def run(half1: Path, half2: Path, *, prior: Path, outdir: Path, anisotropic: bool = False,
        particles: Path | None = None, halves: str = "average", steps: int = 1000, samples: int = 1,
        zeta_max: float = 5.0, guidance_scale: float = 1.0, backprop: bool = True, batch_size: int = 4,
        overlap: int | None = None, seed: int = 0, device: str = "auto", save_samples: bool = False,
        guidance: str = "gradient") -> DenoiseResult:
    """Denoise ``half1``/``half2`` into ``outdir`` (see module docstring)."""
    from cryovox.core.fsc import resolution_at
    from cryovox.core.noise import directional_noise_power, halfmap_noise_power, orientation_noise_power, shell_power
    from cryovox.models.flow import MapScale
    from cryovox.pipelines.flow_sample import (from_prior_grid, load_prior, pad_to, padded_size, sample_posterior,
                                               summarize, to_prior_grid, write_sample_set)
    from cryovox.utils.files import write_text_atomic
    from cryovox.utils.runtime import resolve_device

    if halves not in ("average", "separate"):
        raise InputError(f"--halves {halves}: expected average or separate")
    if samples < 1 or steps < 1:
        raise InputError("--samples and --steps must be at least 1")
    dev = resolve_device(device)
    m1, m2 = _read_halves(Path(half1), Path(half2))
    fp = load_prior(Path(prior), device=dev)
    D_in, apix_in = m1.box, m1.apix
    h1, apix = to_prior_grid(torch.from_numpy(m1.data), apix_in, fp.apix)
    h2, _ = to_prior_grid(torch.from_numpy(m2.data), apix_in, fp.apix)
    D = h1.shape[-1]

    noise_half, curve = halfmap_noise_power(h1, h2)
    fsc143 = resolution_at(curve, 0.143, apix, D)
    log.info("half-map FSC crosses 0.143 at %.2f Å (box %d, %.3f Å/px)", fsc143, D, apix)
    if anisotropic:
        if particles is not None:
            power = orientation_noise_power(_particle_rotations(Path(particles)), noise_half, D).to(torch.float64)
        else:
            power = directional_noise_power(h1, h2)
    else:
        power = noise_half

    ref = fsc_weighted_average(h1, h2, curve)
    scale: MapScale = fp.norm.fit(ref)
    k2 = fp.norm.noise_scale(scale) ** 2
    if halves == "average":
        obs = fp.norm.normalize(0.5 * (h1 + h2), scale)[None]
        power_n = power * k2 / 2
        n_traj = samples
    else:
        obs = torch.stack([fp.norm.normalize(h1, scale), fp.norm.normalize(h2, scale)])
        power_n = power * k2
        n_traj = 2 * samples
    # signal power per shell of either half map (= of the average): P_half · FSC
    signal_n = (0.5 * (shell_power(h1) + shell_power(h2)) * curve.clamp(0, 1)) * k2
    P = padded_size(D, fp)
    background = fp.norm.normalize(torch.tensor(scale.offset), scale).item()
    task = DenoiseTask(pad_to(obs.to(torch.float64), P, background), power_n, device=dev, signal=signal_n,
                       mode=guidance, source_size=D)
    z = sample_posterior(fp, D, task, samples=n_traj, steps=steps, zeta_max=zeta_max, guidance_scale=guidance_scale,
                         backprop=backprop, batch_size=batch_size, overlap=overlap, seed=seed,
                         pad_value=background, label="denoise", amp=dev.type == "cuda")
    if halves == "separate":
        z = 0.5 * (z[0::2] + z[1::2])
    maps = fp.norm.denormalize(z.to(torch.float64), scale)
    maps = from_prior_grid(maps, D_in).to(torch.float32)
    result = summarize(maps)

    outdir = Path(outdir)
    files = write_sample_set(outdir, "denoised", result, apix_in, m1.origin, m1.nstart, save_samples)
    from cryovox.core.spectral import shell_resolution

    res = shell_resolution(D, apix)
    lines = ["shell,resolution_A,fsc,noise_power_half_map"]
    lines += [f"{i},{float(res[i]):.4f},{float(curve[i]):.6f},{float(noise_half[i]):.6g}" for i in range(len(curve))]
    files["noise"] = write_text_atomic(outdir / "noise.csv", "\n".join(lines) + "\n")
    return DenoiseResult(output=files["mean"], std=files.get("std"), samples=samples, steps=steps, fsc143=fsc143,
                         apix=apix_in, anisotropic=anisotropic, files=files)
