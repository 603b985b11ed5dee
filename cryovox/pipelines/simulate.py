"""Simulated data: density maps from atomic models and particle images from maps.

``simulate_map``: the electron-scattering potential of an atomic model (gemmi's
``DensityCalculatorE``, Peng's electron form factors, each atom's B-factor and occupancy)
in a ``box³`` grid of ``apix`` Å voxels with the model's centre of mass at voxel ``box // 2``.
The potential is rasterised on a 2× finer grid with an anti-aliasing blur, the blur is
divided out in Fourier space and the spectrum cropped to the final grid, so the map is the
model's potential band-limited at the final Nyquist frequency (no aliasing). ``--bfactor``
adds a global B-factor; ``--resolution`` applies a soft low-pass. The MRC origin is set so
that the map overlays the model in Chimera/ChimeraX/Coot (origin = centre of mass − box//2·apix).

``simulate_particles``: see :func:`simulate_particles`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")


# ----------------------------------------------------------------------------------------- maps
@dataclass
class SimulatedMap:
    """A map made from an atomic model.

    data: float32 ``[z, y, x]``; apix: Å/voxel; origin: Å ``(x, y, z)`` of voxel ``[0, 0, 0]``;
    center: the model's centre of mass (Å), which sits at voxel ``box // 2``.
    """

    data: np.ndarray
    apix: float
    origin: tuple[float, float, float]
    center: tuple[float, float, float]
    model: str
    n_atoms: int
    mass_kda: float
    resolution: float | None = None
    bfactor: float = 0.0

    @property
    def box(self) -> int:
        return int(self.data.shape[-1])

    def summary(self, path: Path | None = None) -> str:
        res = f", low-passed to {self.resolution:g} Å" if self.resolution else ""
        bf = f", B-factor {self.bfactor:g} Å²" if self.bfactor else ""
        where = f" → {path}" if path is not None else ""
        return (f"simulated map of {Path(self.model).name} ({self.n_atoms} atoms, {self.mass_kda:.1f} kDa): "
                f"box {self.box}, {self.apix:g} Å/px{res}{bf}{where}")


def _fourier_filter_volume(vol, apix: float, *, unblur: float = 0.0, bfactor: float = 0.0,
                           resolution: float | None = None):
    """Multiply the spectrum of a real volume ``(D, D, D)`` by radial factors.

    ``exp(+unblur s²/4) · exp(-bfactor s²/4)`` with ``s`` in 1/Å, times (with ``resolution``)
    RELION's soft low-pass at ``resolution`` Å (:func:`cryovox.core.filters.lowpass_weights`,
    2-pixel cosine edge). Returns a float64 tensor.
    """
    import torch

    from cryovox.core.fft import irfftn_c, rfftn_c
    from cryovox.core.filters import lowpass_weights, radial_frequency

    D = vol.shape[-1]
    F = rfftn_c(vol.to(torch.float64), 3)
    s2 = (radial_frequency(D, 3, half=True) / (D * apix)) ** 2
    factor = torch.exp((unblur - bfactor) * s2 / 4.0)
    if resolution:
        factor = factor * lowpass_weights(D, 3, D * apix / resolution, half=True)
    return irfftn_c(F * factor, D, 3)


def simulate_map(model: Path | str, *, apix: float, box: int, resolution: float | None = None,
                 bfactor: float = 0.0, oversample: int = 2,
                 center: tuple[float, float, float] | None = None) -> SimulatedMap:
    """Electron potential of an atomic model in a ``box³`` grid (see module docstring).

    apix: voxel size in Å (> 0); box: edge in voxels (≥ 8); resolution: optional low-pass in Å
    (≥ 2·apix); bfactor: extra global B-factor in Å² (may be negative to sharpen); center:
    model coordinates (x, y, z) in Å placed at voxel box // 2 (default: the model's centre of
    mass) — give the same centre to several conformations so that their maps share one frame.
    InputError for a missing/unreadable model or one that does not fit in the box.
    """
    import torch

    from cryovox.core.spectral import fourier_crop
    from cryovox.io.atomic import center_of_mass, model_mass_kda, rasterize_potential, read_model

    if not apix or apix <= 0:
        raise InputError(f"--apix {apix}: the voxel size must be > 0 Å")
    if box < 8:
        raise InputError(f"--box {box}: the box must be at least 8 voxels")
    if resolution is not None and resolution < 2 * apix:
        raise InputError(f"--resolution {resolution:g}: finer than Nyquist ({2 * apix:g} Å for {apix:g} Å/px)")
    st = read_model(model)
    com = center_of_mass(st) if center is None else np.asarray(center, dtype=np.float64)
    origin = com - (box // 2) * apix
    # The fine grid's centre sample (index box·oversample // 2) must land on coarse voxel box // 2
    # after the Fourier crop; for odd boxes that is half a voxel below the cube's middle.
    fine_origin = origin + ((box // 2) - box / 2) * apix
    fine, blur = rasterize_potential(st, box, apix, fine_origin, oversample, name=str(model))
    vol = fourier_crop(torch.from_numpy(fine), box, 3)
    vol = _fourier_filter_volume(vol, apix, unblur=blur, bfactor=bfactor, resolution=resolution)
    data = vol.to(torch.float32).numpy()
    return SimulatedMap(data=data, apix=float(apix), origin=tuple(float(v) for v in origin),
                        center=tuple(float(v) for v in com), model=str(model),
                        n_atoms=int(st[0].count_atom_sites()), mass_kda=model_mass_kda(st),
                        resolution=resolution, bfactor=float(bfactor))


def run_simulate_map(model: Path, output: Path, *, apix: float, box: int, resolution: float | None = None,
                     bfactor: float = 0.0, force: bool = False,
                     center: tuple[float, float, float] | None = None) -> SimulatedMap:
    """``cryovox simulate map``: compute the map and write it atomically to ``output`` (MRC)."""
    from cryovox.io.mrc import write_map

    output = Path(output)
    name = output.name.lower()
    if not name.endswith((".mrc", ".map", ".mrc.gz", ".map.gz")):
        raise InputError(f"{output}: the output map must end in .mrc or .map")
    if output.exists() and not force:
        raise InputError(f"{output}: exists (use --force to overwrite)")
    if output.is_dir():
        raise InputError(f"{output}: is a directory; give a file name ending in .mrc")
    sim = simulate_map(model, apix=apix, box=box, resolution=resolution, bfactor=bfactor, center=center)
    write_map(output, sim.data, sim.apix, origin=sim.origin)
    return sim


# ------------------------------------------------------------------------------------ particles
@dataclass
class ParticleSimulation:
    """What :func:`simulate_particles` wrote (paths inside ``outdir``) and its noise figures."""

    outdir: Path
    n: int
    box: int
    apix: float
    snr: float
    signal_variance: float
    noise_sigma: float
    state_counts: list[int]
    maps: list[str]
    ctf: bool
    defocus: tuple[float, float]
    shift: float
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        states = ("/".join(str(c) for c in self.state_counts) + " per state, "
                  if len(self.state_counts) > 1 else "")
        snr = "noise-free" if math.isinf(self.snr) else f"SNR {self.snr:g} (noise σ {self.noise_sigma:.4g})"
        ctf = (f"CTF defocus {self.defocus[0] / 1e4:g}–{self.defocus[1] / 1e4:g} µm" if self.ctf else "no CTF")
        return (f"simulated {self.n} particles ({states}box {self.box}, {self.apix:g} Å/px), {snr}, {ctf}, "
                f"shifts up to ±{self.shift:g} px → {self.files.get('star', self.outdir)}")


def _load_maps(maps: Sequence[Path], apix: float | None):
    """Read the maps; all must share box and pixel size. Returns (volumes (K, D, D, D) float32 tensor, apix)."""
    import torch

    from cryovox.io.mrc import read_map

    if not maps:
        raise InputError("simulate particles: give at least one map")
    vols, box, size = [], None, None
    for path in maps:
        m = read_map(path)
        map_apix = m.apix
        if map_apix <= 0:
            if apix is None:
                raise InputError(f"{path}: the map header has no pixel size; give --apix")
            map_apix = apix
        elif apix is not None and abs(apix - map_apix) > 1e-4 * map_apix:
            raise InputError(f"{path}: pixel size {map_apix:g} Å in the header disagrees with --apix {apix:g}")
        if box is None:
            box, size, first = m.box, map_apix, path
        else:
            if m.box != box:
                raise InputError(f"{path}: box {m.box} differs from {first}'s box {box}; all maps must share one box")
            if abs(map_apix - size) > 1e-4 * size:
                raise InputError(f"{path}: pixel size {map_apix:g} Å differs from {first}'s {size:g} Å")
        vols.append(torch.from_numpy(m.data))
    return torch.stack(vols), float(size)


def render_particles(vol_fts, states, rot, shifts_px, apix: float, ctf_params: dict | None, pad: int = 2):
    """Noise-free particle images ``(B, D, D)`` float32.

    vol_fts: ``(K, pD, pD, pD//2+1)`` padded half transforms (:func:`~cryovox.core.slicing.volume_to_fourier`
    with padding ``pad``); states: ``(B,)`` int64; rot: ``(B, 3, 3)`` pose matrices; shifts_px: ``(B, 2)`` (x, y)
    origin offsets in pixels; ctf_params: per-image tensors ``(B,)`` for
    :func:`~cryovox.core.ctf.compute_ctf` (``defocus_u`` …) or None for no CTF.
    Image formation (docs/conventions.md): ``image = T(-shift)[CTF · P]``.
    """
    import torch

    from cryovox.core.ctf import compute_ctf
    from cryovox.core.fft import irfftn_c, phase_ramp_2d
    from cryovox.core.slicing import project_volume

    D = vol_fts.shape[-2] // pad
    B = rot.shape[0]
    F = torch.zeros(B, D, D // 2 + 1, dtype=vol_fts.dtype)
    for k in torch.unique(states).tolist():
        sel = states == k
        F[sel] = project_volume(vol_fts[k], rot[sel], pad=pad)
    if ctf_params is not None:
        F = F * compute_ctf(D, apix, **ctf_params, half=True, dtype=torch.float32)
    F = F * phase_ramp_2d(-shifts_px.to(torch.float32), D, half=True)
    return irfftn_c(F, D, 2).to(torch.float32)


def simulate_particles(maps: Sequence[Path | str], outdir: Path, *, n: int, snr: float,
                       defocus: tuple[float, float] = (10000.0, 25000.0), astigmatism: float = 0.0,
                       shift: float = 0.0, weights: Sequence[float] | None = None, ctf: bool = True,
                       voltage: float = 300.0, cs: float = 2.7, amplitude_contrast: float = 0.1,
                       apix: float | None = None, seed: int = 0, batch_size: int = 500,
                       pilot: int = 1000, pad: int = 2) -> ParticleSimulation:
    """Simulate particle images from one or more maps (several maps: a heterogeneous set).

    Per particle: a state drawn with probabilities ``weights`` (default equal), a uniformly
    random pose (Haar measure on SO(3)), a shift uniform in ``[-shift, shift]`` pixels on each
    axis, defocus U uniform in ``defocus`` (Å) with ``V = U - a``, ``a`` uniform in
    ``[0, astigmatism]`` Å, and a uniform astigmatism angle; the map is projected by Fourier
    slicing (:mod:`cryovox.core.slicing`: padding ``pad``, trilinear, gridding-corrected; at the
    default pad 2 the projection of density ``r`` pixels from the centre of a ``D`` box is off by
    roughly ``(r / 2D)²``, e.g. 1 % at r = D/5, mostly as a too-bright DC term; pad 3 or 4 cuts
    this 2–4× at 3.4× / 8× the memory), multiplied by the CTF (RELION's
    formula, :mod:`cryovox.core.ctf`), shifted by ``-shift`` (the particle centre ends up at
    ``D//2 - shift`` as RELION's ``rlnOriginX/YAngst`` say) and Gaussian white noise is added.

    SNR: ``signal variance / noise variance``, both per pixel over the whole image: the signal
    variance is that of all pixels of the first ``min(n, pilot)`` noise-free images (CTF and
    shift applied); the noise standard deviation ``σ = sqrt(signal variance / snr)`` is then
    the same for every particle. ``snr = inf`` writes noise-free images.

    Writes into ``outdir``: ``particles.mrcs`` (chunk by chunk), ``particles.star`` (RELION 3.1,
    with ``rlnRandomSubset`` 1/2 and the ground-truth state as ``rlnClassNumber`` = state + 1),
    ``states.csv`` / ``states.npy`` (state per particle, 0-based) and ``ground_truth.npz``
    (rotations ``(n, 3, 3)``, shifts in pixels, states, defocus, noise σ).
    """
    import torch

    from cryovox.core.rotations import random_rotations
    from cryovox.core.slicing import volume_to_fourier
    from cryovox.io.mrc import StackWriter
    from cryovox.utils.progress import Progress

    if n < 1:
        raise InputError(f"-n {n}: the number of particles must be at least 1")
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    if not (snr > 0):
        raise InputError(f"--snr {snr}: the SNR must be > 0 (inf for noise-free images)")
    lo, hi = (float(v) for v in defocus)
    if ctf and not (0 < lo <= hi):
        raise InputError(f"--defocus {lo:g} {hi:g}: need 0 < low <= high (Å, positive = underfocus)")
    if astigmatism < 0 or (ctf and astigmatism >= lo):
        raise InputError(f"--astigmatism {astigmatism:g}: need 0 <= astigmatism < the lowest defocus")
    if shift < 0:
        raise InputError(f"--shift {shift:g}: the maximum shift must be >= 0 pixels")
    if ctf and not (0 <= amplitude_contrast < 1):
        raise InputError(f"--amp {amplitude_contrast:g}: the amplitude contrast must lie in [0, 1)")
    maps = [Path(m) for m in maps]
    K = len(maps)
    if weights is not None and len(weights) > 0:
        if len(weights) != K:
            raise InputError(f"--weights: {len(weights)} weights for {K} maps")
        if any(w < 0 for w in weights) or sum(weights) <= 0:
            raise InputError("--weights: weights must be >= 0 and not all zero")
        probs = torch.tensor([float(w) for w in weights], dtype=torch.float64)
    else:
        probs = torch.ones(K, dtype=torch.float64)
    vols, apix = _load_maps(maps, apix)
    D = vols.shape[-1]
    if shift >= D / 2:
        raise InputError(f"--shift {shift:g}: shifts must stay below half the box ({D // 2} px)")
    outdir = Path(outdir)

    g = torch.Generator().manual_seed(int(seed))
    states = torch.multinomial(probs, n, replacement=True, generator=g)
    rot = random_rotations(n, generator=g)                               # (n, 3, 3) float64
    shifts_px = (torch.rand(n, 2, generator=g, dtype=torch.float64) * 2 - 1) * shift
    dfu = lo + (hi - lo) * torch.rand(n, generator=g, dtype=torch.float64)
    dfv = dfu - astigmatism * torch.rand(n, generator=g, dtype=torch.float64)
    dfang = 180.0 * torch.rand(n, generator=g, dtype=torch.float64)
    subset = torch.arange(n) % 2 + 1
    subset = subset[torch.randperm(n, generator=g)]
    if not ctf:
        dfu = dfv = dfang = None

    if pad not in (1, 2, 3, 4):
        raise InputError(f"--pad {pad}: the padding factor must be 1, 2, 3 or 4")
    vol_fts = volume_to_fourier(vols.to(torch.float32), pad=pad)

    def ctf_of(sl):
        if not ctf:
            return None
        return dict(defocus_u=dfu[sl], defocus_v=dfv[sl], defocus_angle=dfang[sl], voltage=voltage,
                    cs=cs, amplitude_contrast=amplitude_contrast)

    def clean(sl):
        return render_particles(vol_fts, states[sl], rot[sl], shifts_px[sl], apix, ctf_of(sl), pad)

    # noise level from a pilot set of noise-free images
    n_pilot = min(n, pilot)
    first = clean(slice(0, n_pilot))
    signal_var = float(first.to(torch.float64).var())
    if signal_var <= 0:
        raise InputError(f"{maps[0]}: the projections are blank (an empty map?)")
    sigma = 0.0 if math.isinf(snr) else math.sqrt(signal_var / snr)

    files = {"stack": outdir / "particles.mrcs", "star": outdir / "particles.star",
             "states_csv": outdir / "states.csv", "states_npy": outdir / "states.npy",
             "truth": outdir / "ground_truth.npz"}
    noise_g = torch.Generator().manual_seed(int(seed) + 1)
    with StackWriter(files["stack"], D, apix) as writer, Progress("simulate particles", n) as bar:
        start = 0
        while start < n:
            stop = n_pilot if start == 0 else min(n, start + batch_size)
            imgs = first if start == 0 else clean(slice(start, stop))
            if sigma > 0:
                imgs = imgs + sigma * torch.randn(imgs.shape, generator=noise_g, dtype=torch.float32)
            writer.write(imgs)
            bar.advance(stop - start)
            start = stop
            first = None

    counts = torch.bincount(states, minlength=K).tolist()
    _write_particle_files(files, maps=maps, apix=apix, box=D, rot=rot, shifts_px=shifts_px,
                          states=states, subset=subset, dfu=dfu, dfv=dfv, dfang=dfang, voltage=voltage,
                          cs=cs, amplitude_contrast=amplitude_contrast, snr=snr, sigma=sigma,
                          signal_var=signal_var)
    return ParticleSimulation(outdir=outdir, n=n, box=D, apix=apix, snr=snr, signal_variance=signal_var,
                              noise_sigma=sigma, state_counts=counts, maps=[str(m) for m in maps], ctf=ctf,
                              defocus=(lo, hi), shift=shift, files=files)


def _write_particle_files(files: dict[str, Path], *, maps, apix, box, rot, shifts_px, states, subset,
                          dfu, dfv, dfang, voltage, cs, amplitude_contrast, snr, sigma, signal_var) -> None:
    """particles.star (RELION 3.1), states.csv/.npy and ground_truth.npz, each written atomically."""
    import pandas as pd

    from cryovox.core.rotations import matrix_to_euler
    from cryovox.io.particles import ParticleTable, write_star
    from cryovox.utils.files import write_atomic

    n = len(states)
    states_np = states.numpy().astype(np.int64)
    euler = matrix_to_euler(rot).numpy()
    ctf = None
    if dfu is not None:
        ctf = dict(defocus_u=dfu.numpy(), defocus_v=dfv.numpy(), defocus_angle=dfang.numpy(),
                   voltage=float(voltage), cs=float(cs), amplitude_contrast=float(amplitude_contrast))
    table = ParticleTable.from_arrays(
        str(files["stack"]), np.arange(n), apix=apix, box=box, euler=euler,
        shifts=shifts_px.numpy() * apix, ctf=ctf, subset=subset.numpy(),
        extra={"rlnClassNumber": states_np + 1})
    write_star(files["star"], table)
    csv = pd.DataFrame({"particle": np.arange(n), "image_name": [f"{i + 1:06d}@particles.mrcs" for i in range(n)],
                        "state": states_np, "map": [str(maps[k]) for k in states_np]})
    write_atomic(files["states_csv"], lambda p: csv.to_csv(p, index=False))
    write_atomic(files["states_npy"], lambda p: np.save(p, states_np))
    truth = dict(rotations=rot.numpy(), euler=euler, shifts_px=shifts_px.numpy(),
                 shifts_angst=shifts_px.numpy() * apix, states=states_np, subset=subset.numpy(),
                 apix=np.float64(apix), box=np.int64(box), snr=np.float64(snr), noise_sigma=np.float64(sigma),
                 signal_variance=np.float64(signal_var), maps=np.array([str(m) for m in maps]))
    if dfu is not None:
        truth.update(defocus_u=dfu.numpy(), defocus_v=dfv.numpy(), defocus_angle=dfang.numpy(),
                     voltage=np.float64(voltage), cs=np.float64(cs),
                     amplitude_contrast=np.float64(amplitude_contrast))
    write_atomic(files["truth"], lambda p: np.savez(p, **truth))
