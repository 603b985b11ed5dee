"""Particle preprocessing (``cryovox preprocess``): downsample, invert, normalise, rewrite the STAR.

The stack is processed chunk by chunk (``chunk`` images at a time are in memory, never the
whole stack) and every operation acts on each image alone, so an image's result does not
depend on the chunk size or on its neighbours in the stack (cryoDRGN 4.3.1's ``phase_flip``
mixed images through a 3D FFT over the stack axis).

- Downsampling (``downsample = d``): Fourier cropping of each image from ``D`` to ``d`` pixels
  (:func:`cryovox.core.spectral.downsample_images`: an ideal low-pass at the new Nyquist, no
  aliasing, pixel values keep their scale, origin pixel ``D//2`` → ``d//2``). The pixel size
  becomes ``apix · D / d``; shifts are stored in Å (``rlnOriginXAngst``) and need no change
  (in pixels they scale by ``d / D``).
- ``invert``: multiply by −1 (e.g. dark particles → white, as RELION expects).
- ``normalize``: as RELION's ``relion_preprocess --norm``: subtract the mean and divide by the
  standard deviation of the background, the pixels farther than ``bg_radius`` from the centre
  pixel ``d//2`` (default ``round(0.375 · d)``, RELION's 75 % of the half box), per image, after
  downsampling and inversion.

Outputs in OUTDIR: ``particles.mrcs`` and ``particles.star`` (RELION 3.1, pointing at the new
stack, with the new pixel size and box; poses, CTF, subsets and other columns carried over).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")


@dataclass
class PreprocessResult:
    n: int
    box_in: int
    box_out: int
    apix_in: float
    apix_out: float
    inverted: bool
    normalized: bool
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        ops = []
        if self.box_out != self.box_in:
            ops.append(f"box {self.box_in} → {self.box_out} ({self.apix_in:g} → {self.apix_out:.4g} Å/px)")
        else:
            ops.append(f"box {self.box_in} ({self.apix_in:g} Å/px)")
        if self.inverted:
            ops.append("contrast inverted")
        if self.normalized:
            ops.append("normalised on the background")
        return f"preprocessed {self.n} particles: {', '.join(ops)} → {self.files.get('star', '')}"


def background_mask(size: int, bg_radius: float, device=None):
    """Boolean ``(D, D)``: True for pixels farther than ``bg_radius`` pixels from pixel ``D//2``."""
    from cryovox.core.fft import radius_grid

    return radius_grid(size, 2, device=device) > bg_radius


def normalize_background(images, bg_radius: float):
    """``(B, D, D)`` → each image minus its background mean, divided by its background std.

    Background: pixels farther than ``bg_radius`` from the centre pixel ``D//2``. Standard
    deviation with ``n`` in the denominator (as RELION); an image with a constant background
    (std 0) is only mean-subtracted.
    """
    import torch

    D = images.shape[-1]
    m = background_mask(D, bg_radius, images.device)
    if int(m.sum()) < 2:
        raise InputError(f"--bg-radius {bg_radius:g}: leaves fewer than 2 background pixels in a {D}-pixel box")
    bg = images[:, m].to(torch.float64)
    mean = bg.mean(dim=1)
    std = bg.std(dim=1, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((images.to(torch.float64) - mean[:, None, None]) / std[:, None, None]).to(images.dtype)


def process_images(images, *, box_out: int, invert: bool, normalize: bool, bg_radius: float | None):
    """Downsample (Fourier crop), invert and normalise a chunk ``(B, D, D)`` → ``(B, d, d)``, image by image."""
    from cryovox.core.spectral import downsample_images

    out = images
    if box_out != images.shape[-1]:
        out = downsample_images(out, box_out)
    if invert:
        out = -out
    if normalize:
        radius = round(0.375 * box_out) if bg_radius is None else bg_radius
        out = normalize_background(out, radius)
    return out


def preprocess(particles: Path | str, outdir: Path, *, downsample: int | None = None, invert: bool = False,
               normalize: bool = False, bg_radius: float | None = None, datadir: Path | None = None,
               poses: Path | None = None, ctf: Path | None = None, apix: float | None = None,
               max_particles: int | None = None, chunk: int = 1000) -> PreprocessResult:
    """Write a preprocessed copy of a particle set into ``outdir`` (see module docstring).

    particles: ``.star``, ``.cs`` or a bare ``.mrcs`` (poses/CTF from cryoDRGN pickles);
    downsample: new box ``d`` in pixels (≤ the current box); bg_radius: background radius in
    pixels of the output images; chunk: images per chunk (bounds the memory).
    """
    import torch

    from cryovox.io.mrc import StackWriter
    from cryovox.io.particles import read_particles, write_star
    from cryovox.utils.progress import Progress

    path = Path(particles)
    if chunk < 1:
        raise InputError(f"--chunk {chunk}: must be at least 1")
    table = read_particles(path, datadir=datadir, poses=poses, ctf=ctf, apix=apix, max_particles=max_particles)
    n = len(table)
    if n == 0:
        raise InputError(f"{path}: no particles")
    boxes = np.unique(table.box)
    if len(boxes) > 1:
        raise InputError(f"{path}: particles have several box sizes ({', '.join(map(str, boxes))} px); "
                         "preprocess one optics group at a time")
    apix_in = table.apix
    if np.ptp(apix_in) > 1e-3 * apix_in.max():
        log.info("%s: several pixel sizes (%s Å); each optics group keeps its own, scaled by the same factor",
                 path, ", ".join(f"{a:g}" for a in np.unique(apix_in)))
    table.check_images()
    D = int(boxes[0]) if boxes[0] > 0 else int(table.load_images([0]).shape[-1])
    d = D if downsample is None else int(downsample)
    if d > D:
        raise InputError(f"--downsample {d}: larger than the current box ({D} px); only downsampling is supported")
    if d < 8:
        raise InputError(f"--downsample {d}: the box must be at least 8 pixels")
    if d % 2:
        raise InputError(f"--downsample {d}: use an even box (RELION and cryoDRGN expect even boxes)")
    if bg_radius is not None and not (0 < bg_radius < d / 2 * np.sqrt(2)):
        raise InputError(f"--bg-radius {bg_radius:g}: must lie between 0 and the box corner ({d / 2 * np.sqrt(2):.1f} px)")
    outdir = Path(outdir)
    files = {"stack": outdir / "particles.mrcs", "star": outdir / "particles.star"}
    apix_out = float(apix_in[0]) * D / d
    try:
        with StackWriter(files["stack"], d, apix_out) as writer, Progress("preprocess", n) as bar:
            for start in range(0, n, chunk):
                rows = np.arange(start, min(n, start + chunk))
                imgs = torch.from_numpy(table.load_images(rows))
                writer.write(process_images(imgs, box_out=d, invert=invert, normalize=normalize,
                                            bg_radius=bg_radius))
                bar.advance(len(rows))
    finally:
        table.close()
    new = table.with_images(str(files["stack"]), np.arange(n), box=d)
    write_star(files["star"], new)
    return PreprocessResult(n=n, box_in=D, box_out=d, apix_in=float(apix_in[0]), apix_out=apix_out,
                            inverted=invert, normalized=normalize, files=files)
