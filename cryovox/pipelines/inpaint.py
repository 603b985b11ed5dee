"""Fill the missing wedge of a map with a flow prior (CryoFM Alg. 2).

The input map ``y`` is assumed to hold only the Fourier components a single-axis tilt series
measures (:func:`cryovox.core.degrade.wedge_mask`: tilt range and axis; beam along z). At
every sampler step the prior's clean-map estimate ``x̂_0`` gets its measured Fourier part
replaced by the observation (``wedge_fill``: the degradation's pseudo-inverse applied to the
residual), and the flow velocity is recomputed to land on that estimate. The map is
normalised with its own background and peak level (affine; see
:class:`cryovox.models.flow.DensityNorm`).

For maps larger than the prior's box the sliding-window sampler applies the wedge to each
window's own transform: exact for the wedge geometry (it is scale-free), approximate for the
data (a window's transform is the map's convolved with the window's), which is acceptable when
the windows overlap.

Outputs at the input's pixel size, box and origin: ``inpainted.mrc`` (mean of the samples),
``inpainted_std.mrc`` (``samples > 1``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from cryovox.errors import InputError

__all__ = ["WedgeTask", "InpaintResult", "run"]


@dataclass
class InpaintResult:
    output: Path
    std: Path | None
    samples: int
    steps: int
    tilt_range: tuple[float, float]
    tilt_axis: str
    missing_fraction: float
    files: dict[str, Path] = field(default_factory=dict)

    def summary(self) -> str:
        extra = f", std map {self.std}" if self.std else ""
        return (f"inpainted map {self.output} (tilt {self.tilt_range[0]:g}…{self.tilt_range[1]:g}° about "
                f"{self.tilt_axis}, {100 * self.missing_fraction:.0f}% of Fourier space filled by the prior; "
                f"{self.samples} sample(s) × {self.steps} steps{extra})")


class WedgeTask:
    """Alg. 2 data consistency: replace the measured Fourier part of each window's ``x̂_0``.

    obs: ``(D, D, D)`` normalised observation on the padded grid; the mask is recomputed for the
    window size (the wedge depends only on direction).
    """

    def __init__(self, obs: Tensor, tilt_range: tuple[float, float], tilt_axis: str, device=None):
        self.obs = obs
        self.tilt_range = tilt_range
        self.tilt_axis = tilt_axis
        self.device = device
        self._masks: dict[int, Tensor] = {}

    def mask(self, w: int) -> Tensor:
        from cryovox.core.degrade import wedge_mask

        if w not in self._masks:
            self._masks[w] = wedge_mask(w, self.tilt_range, self.tilt_axis, device=self.device)
        return self._masks[w]

    def terms(self, jobs, size):
        from cryovox.core.degrade import wedge_fill

        y = torch.stack([self.obs[z:z + size, yy:yy + size, x:x + size] for _, (z, yy, x) in jobs])
        y = y.to(self.device, torch.float32)[:, None]
        m = self.mask(size)

        def projection(x0: Tensor, t: float) -> Tensor:
            return wedge_fill(x0, y, m)

        return None, projection


def run(map_path: Path, *, prior: Path, outdir: Path, tilt_range: tuple[float, float] = (-60.0, 60.0),
        tilt_axis: str = "y", steps: int = 1000, samples: int = 1, batch_size: int = 4, overlap: int | None = None,
        seed: int = 0, device: str = "auto", save_samples: bool = False) -> InpaintResult:
    """Inpaint the missing wedge of ``map_path`` into ``outdir`` (see module docstring)."""
    from cryovox.core.degrade import wedge_mask
    from cryovox.core.fft import radius_grid
    from cryovox.io.mrc import read_map
    from cryovox.pipelines.flow_sample import (from_prior_grid, load_prior, pad_to, padded_size, sample_posterior,
                                               summarize, to_prior_grid, write_sample_set)
    from cryovox.utils.runtime import resolve_device

    lo, hi = float(tilt_range[0]), float(tilt_range[1])
    if not -90 <= lo < hi <= 90:
        raise InputError(f"--tilt-range {lo:g} {hi:g}: need -90 ≤ min < max ≤ 90 degrees")
    if tilt_axis not in ("x", "y"):
        raise InputError(f"--tilt-axis {tilt_axis}: expected x or y")
    if samples < 1 or steps < 1:
        raise InputError("--samples and --steps must be at least 1")
    dev = resolve_device(device)
    m = read_map(map_path)
    if m.apix <= 0:
        raise InputError(f"{map_path}: the MRC header has no pixel size")
    fp = load_prior(Path(prior), device=dev)
    vol, apix = to_prior_grid(torch.from_numpy(m.data), m.apix, fp.apix)
    D = vol.shape[-1]
    scale = fp.norm.fit(vol)
    background = fp.norm.normalize(torch.tensor(scale.offset), scale).item()
    P = padded_size(D, fp)
    obs = pad_to(fp.norm.normalize(vol.to(torch.float64), scale), P, background)
    task = WedgeTask(obs, (lo, hi), tilt_axis, device=dev)
    z = sample_posterior(fp, D, task, samples=samples, steps=steps, batch_size=batch_size, overlap=overlap,
                         seed=seed, pad_value=background, label="inpaint-wedge", amp=dev.type == "cuda")
    maps = from_prior_grid(fp.norm.denormalize(z.to(torch.float64), scale), m.box).to(torch.float32)
    result = summarize(maps)
    files = write_sample_set(Path(outdir), "inpainted", result, m.apix, m.origin, m.nstart, save_samples)
    r = radius_grid(D, 3)
    inside = r <= D // 2
    missing = 1.0 - wedge_mask(D, (lo, hi), tilt_axis)[inside].double().mean().item()
    return InpaintResult(output=files["mean"], std=files.get("std"), samples=samples, steps=steps,
                         tilt_range=(lo, hi), tilt_axis=tilt_axis, missing_fraction=missing, files=files)
