"""Unconditional samples from a flow prior (``cryovox generate --prior MODEL -n N``).

Each sample integrates the learnt flow from Gaussian noise (t = 1) to a map (t = 0) with
Euler steps, on a cube of the prior's training box (or ``box``, a multiple of the network's
size divisor), at the prior's pixel size. Maps are written in the prior's density scale
(``(z · std + mean)``: background ≈ 0, peak ≈ 1) as ``sample_000.mrc`` …, plus their
voxel-wise mean and standard deviation when ``n > 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from cryovox.errors import InputError

__all__ = ["GenerateResult", "run"]


@dataclass
class GenerateResult:
    outdir: Path
    n: int
    box: int
    apix: float
    steps: int
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        return (f"{self.n} map(s) of {self.box}³ at {self.apix:.3f} Å/px sampled from the flow prior "
                f"({self.steps} Euler steps) in {self.outdir}")


def run(prior: Path, *, outdir: Path, n: int = 1, steps: int = 1000, box: int | None = None, batch_size: int = 4,
        seed: int = 0, device: str = "auto") -> GenerateResult:
    """Write ``n`` unconditional samples of the prior into ``outdir``."""
    from cryovox.io.mrc import write_map
    from cryovox.models.flow import MapScale
    from cryovox.pipelines.flow_sample import load_prior, sample_posterior
    from cryovox.utils.runtime import resolve_device

    if n < 1 or steps < 1:
        raise InputError("-n and --steps must be at least 1")
    dev = resolve_device(device)
    fp = load_prior(Path(prior), device=dev)
    size = fp.box if box is None else int(box)
    if size < 1 or size % fp.divisor:
        raise InputError(f"--box {size}: must be a positive multiple of {fp.divisor} for this prior")
    z = sample_posterior(fp, size, None, samples=n, steps=steps, batch_size=batch_size, seed=seed,
                         label="generate", amp=dev.type == "cuda", single_window=True)
    maps = fp.norm.denormalize(z.to(torch.float64), MapScale(0.0, 1.0)).to(torch.float32)
    outdir = Path(outdir)
    files = {}
    for i, m in enumerate(maps):
        files[f"sample_{i:03d}"] = write_map(outdir / f"sample_{i:03d}.mrc", m, fp.apix)
    if n > 1:
        files["mean"] = write_map(outdir / "samples_mean.mrc", maps.mean(0), fp.apix)
        files["std"] = write_map(outdir / "samples_std.mrc", maps.std(0), fp.apix)
    return GenerateResult(outdir=outdir, n=n, box=size, apix=fp.apix, steps=steps, files=files)
