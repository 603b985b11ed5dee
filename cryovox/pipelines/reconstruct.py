"""Homogeneous reconstruction from known poses (``cryovox reconstruct``).

Method (RELION's ``relion_reconstruct`` in outline):

1. Particles are streamed in batches (memory bounded by the batch, never the whole stack).
   Each image is Fourier transformed (:func:`~cryovox.core.fft.rfftn_c`), centred by its
   known shift (translated by ``+shift``, docs/conventions.md), multiplied by its CTF
   (RELION's formula; CTF = 1 when the particles have none) and inserted into a Fourier
   volume padded twice (:func:`~cryovox.core.slicing.backproject`, padding factor 2,
   trilinear), accumulating ``Σ CTF·X`` (data) and ``Σ CTF²`` (weight) separately for the two
   half sets (``rlnRandomSubset`` when every particle has 1 or 2, else a random split by
   ``--seed``).
2. Regularisation from the data themselves (RELION's tau² scheme): half maps
   ``data / (weight + ε)`` give an FSC; per shell ``SNR = FSC / (1 − FSC)`` is the ratio of
   signal to noise power of a half map, so the Wiener constant of a shell is
   ``⟨weight⟩_shell / SNR`` (σ²/τ² in RELION's notation, with ⟨weight⟩ the mean half-set weight
   over the shell's voxels). Shells with FSC ≤ 0.001 are suppressed (SNR floored at 0.001).
3. Half maps ``data_h / (weight_h + reg)`` and the final map ``(data_1 + data_2) /
   (weight_1 + weight_2 + reg)`` (the Wiener reconstruction from all particles, which is what
   averaging the half maps approximates), each inverse transformed, cropped to the box and
   divided by the trilinear gridding correction (:func:`~cryovox.core.slicing.fourier_to_volume`)
   and, as RELION, blended into the background mean beyond the inscribed sphere
   (:func:`soft_mask_outside`, 3-voxel cosine edge: the corners hold only amplified noise).
4. The gold-standard FSC between the two written half maps (unmasked), its 0.143 and 0.5
   crossings (interpolated), written as ``cryovox fsc`` writes it (:mod:`cryovox.pipelines.fsc`).

Outputs in OUTDIR: ``half1.mrc``, ``half2.mrc``, ``map.mrc`` (float32, the particles' pixel
size), ``fsc.csv`` (column ``fsc_unmasked``), ``fsc.star`` (relion_postprocess's ``data_fsc``)
and ``fsc.png``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

PAD = 2
SNR_FLOOR = 1e-3


@dataclass
class Reconstruction:
    """Maps ``[z, y, x]`` float32, the gold-standard FSC (shells 0 … D//2) and its crossings."""

    half1: np.ndarray
    half2: np.ndarray
    full: np.ndarray
    apix: float
    fsc: np.ndarray
    resolution_0143: float
    resolution_05: float
    n_particles: int
    n_half: tuple[int, int]
    ctf: bool
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def box(self) -> int:
        return int(self.full.shape[-1])

    def summary(self) -> str:
        where = f" → {self.files['map']}" if "map" in self.files else ""
        return (f"reconstructed {self.n_particles} particles ({self.n_half[0]}/{self.n_half[1]} per half, "
                f"box {self.box}, {self.apix:g} Å/px{'' if self.ctf else ', no CTF'}): gold-standard FSC "
                f"0.143 at {self.resolution_0143:.2f} Å, 0.5 at {self.resolution_05:.2f} Å{where}")


def _half_sets(table, seed: int) -> np.ndarray:
    """(N,) 1/2: rlnRandomSubset when every particle has 1 or 2, else a random balanced split."""
    subset = table.subset
    if len(subset) and np.isin(subset, (1, 2)).all() and (subset == 1).any() and (subset == 2).any():
        return subset.astype(np.int64)
    rng = np.random.default_rng(seed)
    halves = np.where(np.arange(len(subset)) % 2 == 0, 1, 2)
    log.info("no rlnRandomSubset in the particles: random half sets (seed %d)", seed)
    return halves[rng.permutation(len(subset))]


def _check_table(table, path: Path) -> None:
    if len(table) == 0:
        raise InputError(f"{path}: no particles")
    if not table.has_poses:
        raise InputError(f"{path}: no poses (rlnAngleRot, rlnAngleTilt, rlnAnglePsi); reconstruct needs known "
                         "poses (for a bare stack give --poses)")
    boxes = np.unique(table.box)
    if len(boxes) > 1:
        raise InputError(f"{path}: particles have several box sizes ({', '.join(map(str, boxes))} px); "
                         "run cryovox preprocess --downsample to bring them to one")
    apix = table.apix
    if np.ptp(apix) > 1e-3 * apix.max():
        raise InputError(f"{path}: optics groups have different pixel sizes ({', '.join(f'{a:g}' for a in np.unique(apix))} Å); "
                         "reconstruct needs one pixel size")
    if not (apix > 0).all():
        raise InputError(f"{path}: pixel size unknown; give --apix")


def backproject_particles(table, halves: np.ndarray, *, batch_size: int = 256, device="cpu",
                          use_ctf: bool = True, label: str = "backproject"):
    """Stream the particles and accumulate per half set.

    Returns ``(data, weight)``: complex ``(2, 2D, 2D, D+1)`` Σ CTF·X and real ``(2, 2D, 2D, D+1)``
    Σ CTF² (padding 2, :mod:`cryovox.core.slicing` layout); index 0 is half set 1.
    """
    import torch

    from cryovox.core.ctf import compute_ctf
    from cryovox.core.fft import phase_ramp_2d, rfftn_c
    from cryovox.core.rotations import euler_to_matrix
    from cryovox.core.slicing import backproject
    from cryovox.utils.progress import Progress

    device = torch.device(device)
    n = len(table)
    D = int(table.box[0]) if table.box[0] > 0 else None
    euler = table.euler
    shifts_px = table.shifts_px
    if shifts_px is None:
        shifts_px = np.zeros((n, 2))
    ctf = table.ctf if use_ctf else None
    apix = float(table.apix[0])
    data = weight = None
    with Progress(label, n) as bar:
        for start in range(0, n, batch_size):
            rows = np.arange(start, min(n, start + batch_size))
            imgs = torch.from_numpy(table.load_images(rows)).to(device)
            if D is None:
                D = imgs.shape[-1]
            elif imgs.shape[-1] != D:
                raise InputError(f"{table.image_file[rows[0]]}: images are {imgs.shape[-1]} px but the "
                                 f"particle file says {D} px")
            if data is None:
                P = PAD * D
                data = torch.zeros(2, P, P, P // 2 + 1, dtype=torch.complex64, device=device)
                weight = torch.zeros(2, P, P, P // 2 + 1, dtype=torch.float32, device=device)
            F = rfftn_c(imgs, 2)
            F = F * phase_ramp_2d(torch.as_tensor(shifts_px[rows], dtype=torch.float32, device=device), D, half=True)
            if ctf is not None:
                c = compute_ctf(D, apix, **{k: torch.as_tensor(v[rows], device=device) for k, v in ctf.items()},
                                half=True, dtype=torch.float32)
                F = F * c
                w = c * c
            else:
                w = torch.ones(F.shape, dtype=torch.float32, device=device)
            e = euler[rows]
            rot = euler_to_matrix(e[:, 0], e[:, 1], e[:, 2]).to(device=device, dtype=torch.float32)
            hv = torch.as_tensor(halves[rows], device=device)
            for h in (1, 2):
                sel = hv == h
                if bool(sel.any()):
                    d, wt = backproject(F[sel], rot[sel], w[sel], pad=PAD)
                    data[h - 1] += d
                    weight[h - 1] += wt
            bar.advance(len(rows))
    return data, weight


def _padded_shells(D: int, device) -> "torch.Tensor":
    """Shell (in box-``D`` units, rounded) of each voxel of the padded half grid; > D//2 → D//2 + 1."""
    import torch

    from cryovox.core.filters import radial_frequency

    r = radial_frequency(PAD * D, 3, half=True, device=device) / PAD
    return torch.round(r).to(torch.long).clamp(max=D // 2 + 1)


def _shell_mean(x, shells, nshell: int):
    import torch

    s = torch.zeros(nshell + 1, dtype=torch.float64, device=x.device).index_add_(
        0, shells.reshape(-1), x.reshape(-1).to(torch.float64))
    c = torch.bincount(shells.reshape(-1), minlength=nshell + 1).to(torch.float64)
    return s / c.clamp(min=1)


def soft_mask_outside(vol, radius: float | None = None, width: float = 3.0):
    """RELION's ``softMaskOutsideMap``: beyond ``radius`` (default ``D / 2``) blend to the background mean.

    vol: real ``(D, D, D)``. Inside the sphere the map is untouched; over ``width`` voxels a
    raised cosine blends it into the mean of the region outside (weighted by the cosine); the
    cube's corners get that mean. Removes the noise that the gridding correction amplifies in
    the corners (RELION does this after every reconstruction, "to prevent aliasing artefacts").
    """
    from cryovox.core.masks import spherical_mask

    D = vol.shape[-1]
    inside = spherical_mask(D, D / 2 if radius is None else radius, width, device=vol.device, dtype=vol.dtype)
    outside = 1 - inside
    total = outside.sum()
    if float(total) == 0.0:
        return vol
    background = (vol * outside).sum() / total
    return vol * inside + background * outside


def wiener_maps(data, weight, *, snr_floor: float = SNR_FLOOR):
    """Half maps, final map and gold-standard FSC from accumulated (data, weight) (see module docstring).

    data: complex ``(2, 2D, 2D, D+1)``; weight: real, same shape. Returns
    ``(half1, half2, full, reg)``: real ``(D, D, D)`` tensors (the dtype of ``weight``) and the
    Wiener constant per shell ``(D//2+2,)`` (last: beyond Nyquist).
    """
    import torch

    from cryovox.core.fsc import fsc as fsc_curve
    from cryovox.core.slicing import fourier_to_volume

    D = data.shape[-3] // PAD
    nshell = D // 2 + 1
    shells = _padded_shells(D, data.device)
    w_mean = 0.5 * (_shell_mean(weight[0], shells, nshell) + _shell_mean(weight[1], shells, nshell))
    eps = (1e-3 * w_mean).clamp(min=1e-12)

    def to_map(d, w, reg):
        return soft_mask_outside(fourier_to_volume(d / (w + reg.to(w.dtype)[shells]), pad=PAD))

    h1 = to_map(data[0], weight[0], eps)
    h2 = to_map(data[1], weight[1], eps)
    f = fsc_curve(h1, h2).clamp(0.0, 0.999)
    snr = (f / (1 - f)).clamp(min=snr_floor)
    reg = torch.empty(nshell + 1, dtype=torch.float64, device=data.device)
    reg[:nshell] = w_mean[:nshell] / snr
    reg[nshell] = float("inf")                     # beyond Nyquist: nothing
    half1 = to_map(data[0], weight[0], reg)
    half2 = to_map(data[1], weight[1], reg)
    full = to_map(data[0] + data[1], weight[0] + weight[1], reg)
    return half1, half2, full, reg


def reconstruct(particles: Path | str, outdir: Path | None = None, *, datadir: Path | None = None,
                apix: float | None = None, max_particles: int | None = None, poses: Path | None = None,
                ctf: Path | None = None, use_ctf: bool = True, batch_size: int = 256, seed: int = 0,
                device="cpu") -> Reconstruction:
    """Reconstruct a map from particles with known poses (see module docstring).

    particles: ``.star`` / ``.cs`` / bare ``.mrcs`` (with ``poses``/``ctf`` cryoDRGN pickles);
    datadir: where relative stack paths resolve; apix: override the pixel size (Å/px);
    max_particles: use only the first N; use_ctf: False ignores the CTF of the particles.
    With ``outdir`` the maps, FSC CSV and PNG are written there. InputError on bad input
    (nothing is written then).
    """
    import torch

    from cryovox.io.mrc import write_map
    from cryovox.io.particles import read_particles
    from cryovox.pipelines import fsc as fsc_pipeline

    path = Path(particles)
    if batch_size < 1:
        raise InputError(f"--batch-size {batch_size}: must be at least 1")
    table = read_particles(path, datadir=datadir, poses=poses, ctf=ctf, apix=apix, max_particles=max_particles)
    _check_table(table, path)
    table.check_images()
    if len(table) < 2:
        raise InputError(f"{path}: at least 2 particles are needed for two half sets")
    has_ctf = use_ctf and table.has_ctf
    if use_ctf and not table.has_ctf:
        log.info("%s: no CTF parameters; reconstructing without CTF correction", path)
    halves = _half_sets(table, seed)
    n1, n2 = int((halves == 1).sum()), int((halves == 2).sum())
    px = float(table.apix[0])
    try:
        data, weight = backproject_particles(table, halves, batch_size=batch_size, device=device, use_ctf=has_ctf)
    finally:
        table.close()
    half1, half2, full, _ = wiener_maps(data, weight)
    half1 = half1.to(torch.float32).cpu().numpy()
    half2 = half2.to(torch.float32).cpu().numpy()
    gold = fsc_pipeline.compute(half1, half2, px)                    # unmasked half-map FSC
    rec = Reconstruction(
        half1=half1, half2=half2, full=full.to(torch.float32).cpu().numpy(), apix=px, fsc=gold.final,
        resolution_0143=gold.resolution_0143, resolution_05=gold.resolution_05,
        n_particles=len(table), n_half=(n1, n2), ctf=has_ctf)
    if outdir is not None:
        outdir = Path(outdir)
        files = {"half1": outdir / "half1.mrc", "half2": outdir / "half2.mrc", "map": outdir / "map.mrc"}
        write_map(files["half1"], rec.half1, px)
        write_map(files["half2"], rec.half2, px)
        write_map(files["map"], rec.full, px)
        title = f"{path.name}: {rec.n_particles} particles, gold-standard FSC of the half maps"
        fsc_files = fsc_pipeline.write_outputs(gold, outdir, title)
        files.update({"fsc_csv": fsc_files["csv"], "fsc_star": fsc_files["star"], "fsc_png": fsc_files["png"]})
        rec.files = files
    return rec
