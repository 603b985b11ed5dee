"""``cryovox generate --swan MODEL --diffusion DIFF --anchor MAP``: new maps shaped like an anchor,
drawn by the latent diffusion model and decoded by the Cryo-SWAN autoencoder.

The anchor is brought onto the model's grid (resampled to its pixel size, cropped/padded to its
box, normalised: :func:`cryovox.pipelines.train_swan.fit_map`), encoded to its quantised latent
grid, and its condition (the block-averaged grid) is handed to the DDPM with
classifier-free guidance weight ``w`` (``ε̃ = (1 + w) ε(c) − w ε(∅)``). Each sampled latent grid
is snapped to the codebooks (every level re-quantised by its residual quantiser) and decoded;
the map is given the anchor's mean and standard deviation and written on the anchor's grid
(box and pixel size) as ``sample_NNN.mrc``. ``samples.csv`` lists each sample's FSC-AUC and
FSC-0.5 resolution against the anchor's reconstruction through the same model.
"""

from __future__ import annotations

import csv
import io
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cryovox.errors import InputError
from cryovox.utils.files import write_text_atomic

log = logging.getLogger("cryovox")


@dataclass
class SwanGenerateResult:
    """paths: the written maps; fsc_auc: each sample's FSC-AUC against the anchor
    (as reconstructed by the autoencoder); apix: their pixel size (Å)."""

    outdir: Path
    paths: list[Path] = field(default_factory=list)
    fsc_auc: list[float] = field(default_factory=list)
    apix: float = 0.0

    def summary(self) -> str:
        mean = float(np.mean(self.fsc_auc)) if self.fsc_auc else float("nan")
        return (f"generate --swan: {len(self.paths)} maps at {self.apix:.4g} Å in {self.outdir}; "
                f"mean FSC-AUC with the anchor {mean:.3f}")


@torch.no_grad()
def sample_latents(ae, ddpm, anchor: torch.Tensor, n: int, *, guidance: float, steps: int, eta: float,
                   generator: torch.Generator, batch_size: int = 8) -> torch.Tensor:
    """Decoded samples ``(n, D, D, D)`` (normalised units) for one normalised anchor map ``(D, D, D)``."""
    dev = next(ae.parameters()).device
    grid = ae.latent_grid(anchor[None, None].to(dev))
    cond = ddpm.condition(ddpm.normalise(grid))
    out = []
    for s in range(0, n, batch_size):
        m = min(batch_size, n - s)
        x = ddpm.sample(cond.expand(m, -1, -1, -1, -1).contiguous(), steps=steps, guidance=guidance, eta=eta,
                        generator=generator)
        out.append(ae.decode_grid(ddpm.denormalise(x), snap=True).float().cpu())
    return torch.cat(out)


def run(*, swan_model: Path, diffusion_model: Path, anchor: Path, n: int, outdir: Path,
        guidance: float = 1.0, steps: int = 100, eta: float = 1.0, device: str = "auto",
        seed: int = 0) -> SwanGenerateResult:
    """Write ``n`` maps ``sample_000.mrc …`` conditioned on ``anchor`` into ``outdir``.

    swan_model: ``model.pt`` of ``train-swan``; diffusion_model: ``diffusion.pt`` of
    ``train-swan --stage diffusion`` (trained on that autoencoder); anchor: MRC map (any box
    and pixel size; see the module docstring); n: number of maps (≥ 1); guidance: w (0 = the
    conditional model, larger = closer to the anchor); steps: denoising steps (≤ the model's
    T); eta: 1 = ancestral DDPM noise, 0 = deterministic DDIM; seed: makes the run repeatable.
    Returns the paths and each sample's FSC-AUC against the anchor.
    """
    from cryovox.core.fsc import fsc, fsc_auc, resolution_at
    from cryovox.io.mrc import read_map, write_map
    from cryovox.pipelines.train_swan import fit_map, load_diffusion, load_model, unfit_map
    from cryovox.utils.runtime import resolve_device

    if n < 1:
        raise InputError(f"-n {n}: must be ≥ 1")
    if steps < 1:
        raise InputError(f"--steps {steps}: must be ≥ 1")
    dev = resolve_device(device)
    ae, state = load_model(swan_model, dev)
    ddpm, dstate = load_diffusion(diffusion_model, dev)
    if dstate.get("swan_config") != ae.cfg.as_dict():
        raise InputError(f"{diffusion_model}: trained on the latents of another autoencoder than {swan_model}")
    md = read_map(anchor)
    box, apix = int(state["box"]), float(state["apix"])
    fitted = fit_map(md.data, md.apix, box, apix, source=str(anchor))
    g = torch.Generator().manual_seed(seed)
    samples = sample_latents(ae, ddpm, fitted.data, n, guidance=guidance, steps=steps, eta=eta, generator=g)
    ref = ae.reconstruct(fitted.data[None, None].to(dev))[0].float().cpu()
    outdir = Path(outdir)
    out_apix = md.apix if md.apix > 0 else apix
    result = SwanGenerateResult(outdir=outdir, apix=out_apix)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["file", "fsc_auc_vs_anchor", "fsc05_A_vs_anchor"])
    for i in range(n):
        curve = fsc(samples[i].double(), ref.double())
        auc = fsc_auc(curve)
        res = resolution_at(curve, 0.5, apix, box)
        vol = unfit_map(fitted, samples[i])
        path = write_map(outdir / f"sample_{i:03d}.mrc", vol.numpy(), out_apix, origin=md.origin)
        result.paths.append(path)
        result.fsc_auc.append(auc)
        w.writerow([path.name, f"{auc:.4f}", f"{res:.2f}"])
    write_text_atomic(outdir / "samples.csv", buf.getvalue())
    return result
