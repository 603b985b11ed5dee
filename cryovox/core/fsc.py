"""Fourier shell correlation, RELION-style mask correction, resolution and AUC.

Shells are those of :mod:`cryovox.core.spectral`: shell ``i`` holds the Fourier samples whose
distance from DC rounds to ``i`` (cycles per box), ``i = 0`` (DC) … ``D // 2`` (Nyquist); shell
``i`` stands for the resolution ``D · apix / i`` Å. Each shell sums over the *whole* Fourier
sphere (computed on the half transform with Hermitian weights, which gives identical sums):

    FSC(i) = Σ Re(A B*) / sqrt(Σ |A|² · Σ |B|²)

RELION's ``getFSC`` uses the same rounded shells but sums over the stored half transform only
(``kx ≥ 0``), which counts the ``kx = 0`` plane relatively twice; the two agree closely except
in the first few shells.

Resolution (:func:`resolution_at`) is the first crossing of the threshold, linearly
interpolated between the two shells around it. RELION reports ``D · apix / i`` for the last
shell ``i`` before the corrected FSC first drops below 0.143 (no interpolation by default), so
its number is coarser than ours by less than one shell. cryoDRGN 4.3.1's ``fsc`` puts the
samples with ``i - 1 ≤ |k| < i`` under the label ``i / D`` (one step higher than the floor
of their radius, half a step higher than our rounded shells), reports the highest such label
whose FSC is ≥ the threshold anywhere on the curve, and does not interpolate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cryovox.core.fft import irfftn_c, rfftn_c
from cryovox.core.spectral import shell_sum

__all__ = ["fsc", "phase_randomize", "FscCurves", "fsc_corrected", "crossing_shell", "resolution_at", "fsc_auc"]


def fsc(a: Tensor, b: Tensor, mask: Tensor | None = None, *, ndim: int = 3) -> Tensor:
    """FSC per Fourier shell between real maps.

    a, b: ``(..., D, D, D)`` (or ``(..., D, D)`` images with ``ndim = 2``: FRC) on the same grid;
    mask: ``(D, D, D)`` in [0, 1] multiplied into both (broadcast), or None.
    Returns float64 ``(..., D // 2 + 1)`` from shell 0 (DC) to ``D // 2``; a shell where either
    map has no power gets 0.
    """
    if a.shape != b.shape:
        raise ValueError(f"maps differ in shape: {tuple(a.shape)} and {tuple(b.shape)}")
    if mask is not None:
        a = a * mask
        b = b * mask
    A = rfftn_c(a, ndim)
    B = rfftn_c(b, ndim)
    terms = torch.stack([A.real * B.real + A.imag * B.imag,          # Re(A B*)
                         A.real ** 2 + A.imag ** 2, B.real ** 2 + B.imag ** 2])
    num, paa, pbb = shell_sum(terms, ndim=ndim, half=True).unbind(0)
    den = torch.sqrt(paa * pbb)
    # clamp: float32 transforms can give 1 + 1e-7 for identical shells
    return torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(num)).clamp(-1.0, 1.0)


def phase_randomize(x: Tensor, from_shell: float, generator: torch.Generator | None = None, *,
                    ndim: int = 3) -> Tensor:
    """Give every Fourier component at ``|k| ≥ from_shell`` a uniformly random phase.

    As RELION's ``randomizePhasesBeyond``: amplitudes are kept, the test is on the exact radius
    (``kx² + ky² + kz² ≥ from_shell²``), one uniform draw per stored half-transform sample; the inverse
    transform returns real data (the ``kx = 0`` plane is made Hermitian by the real inverse).
    x: real ``(..., D, …)``; generator: a CPU ``torch.Generator`` (draws are made on the CPU so
    results do not depend on the device). Returns the same shape and dtype.
    """
    D = x.shape[-1]
    F = rfftn_c(x, ndim)
    k = torch.arange(D, device=x.device, dtype=torch.float64) - D // 2
    kx = torch.arange(D // 2 + 1, device=x.device, dtype=torch.float64)
    axes = [k] * (ndim - 1) + [kx]
    r2 = torch.zeros((), dtype=torch.float64, device=x.device)
    for i, ax in enumerate(axes):
        shape = [1] * ndim
        shape[i] = ax.numel()
        r2 = r2 + ax.reshape(shape) ** 2
    select = r2 >= float(from_shell) ** 2
    # one draw per stored sample (in storage order), used where selected
    phases = torch.rand(F.shape, generator=generator, dtype=torch.float64) * (2 * torch.pi)
    phases = phases.to(device=x.device, dtype=F.real.dtype)
    F = torch.where(select, torch.polar(F.abs(), phases), F)
    return irfftn_c(F, D, ndim).to(x.dtype)


@dataclass
class FscCurves:
    """The curves of relion_postprocess, each float64 ``(D // 2 + 1,)`` (shells 0 … D // 2).

    ``randomize_from``: the shell from which phases were randomised (first shell > 0 where the
    unmasked FSC drops below ``randomize_below``), or None when it never does, in which case
    ``randomized_masked`` is None and ``corrected`` equals ``masked``.
    """

    unmasked: Tensor
    masked: Tensor | None = None
    randomized_masked: Tensor | None = None
    corrected: Tensor | None = None
    randomize_from: int | None = None

    @property
    def final(self) -> Tensor:
        """The curve to report: corrected when a mask was used, otherwise unmasked."""
        return self.corrected if self.corrected is not None else self.unmasked


def fsc_corrected(a: Tensor, b: Tensor, mask: Tensor, generator: torch.Generator | None = None, *,
                  randomize_below: float = 0.8, ndim: int = 3) -> FscCurves:
    """Masked FSC corrected for the mask's own correlation by phase randomisation (Chen et al. 2013).

    As relion_postprocess: phases of both unmasked maps are randomised from the first shell
    ``n > 0`` where the unmasked FSC is below ``randomize_below`` (0.8), then masked, giving
    FSC_n; for shells ``i ≥ n + 2`` the corrected curve is ``(FSC_t − FSC_n) / (1 − FSC_n)``
    with FSC_t the masked FSC, and FSC_t itself below that (RELION moved the switch two shells
    outwards to avoid artefacts next to the randomisation shell). As RELION, a DC value ≤ 0 of
    the masked or randomised curve is set to 1. a, b, mask: ``(D, D, D)``.
    """
    unmasked = fsc(a, b, ndim=ndim)
    masked = fsc(a, b, mask, ndim=ndim)
    below = torch.nonzero(unmasked[1:] < randomize_below)
    if below.numel() == 0:
        return FscCurves(unmasked, masked, None, masked.clone(), None)
    n = int(below[0, 0]) + 1
    ra = phase_randomize(a, n, generator, ndim=ndim)
    rb = phase_randomize(b, n, generator, ndim=ndim)
    rand = fsc(ra, rb, mask, ndim=ndim)
    if masked[0] <= 0:
        masked[0] = 1.0
    if rand[0] <= 0:
        rand[0] = 1.0
    shells = torch.arange(masked.shape[-1], device=masked.device)
    denom = 1.0 - rand
    true = torch.where(denom != 0, (masked - rand) / torch.where(denom != 0, denom, torch.ones_like(denom)),
                       torch.zeros_like(masked))
    corrected = torch.where(shells < n + 2, masked, true)
    return FscCurves(unmasked, masked, rand, corrected, n)


def crossing_shell(curve: Tensor, threshold: float) -> float | None:
    """Fractional shell where ``curve`` first falls below ``threshold`` (linear between shells).

    The search starts after DC: with ``i`` the first shell ≥ 1 where ``curve[i] < threshold``,
    the result is ``i - 1 + (c[i-1] - t) / (c[i-1] - c[i])``. None if the curve never falls below.
    """
    c = curve.detach().to("cpu", torch.float64).reshape(-1)
    below = torch.nonzero(c[1:] < threshold)
    if below.numel() == 0:
        return None
    i = int(below[0, 0]) + 1
    c0, c1 = float(c[i - 1]), float(c[i])
    if c0 < threshold:        # DC already below: no crossing inside the curve
        return 0.0
    return (i - 1) + (c0 - threshold) / (c0 - c1)


def resolution_at(curve: Tensor, threshold: float, apix: float, size: int) -> float:
    """Resolution in Å where ``curve`` first crosses ``threshold``: ``size · apix / shell``.

    ``shell`` from :func:`crossing_shell` (linear interpolation between shells). If the curve
    never falls below the threshold the resolution of its last shell (Nyquist for an even box)
    is returned, i.e. "at least this good"; a crossing at shell 0 returns ``inf``.
    """
    s = crossing_shell(curve, threshold)
    if s is None:
        s = float(curve.shape[-1] - 1)
    return float("inf") if s <= 0 else size * apix / s


def fsc_auc(curve: Tensor) -> float:
    """Area under the FSC curve, normalised so that FSC ≡ 1 gives 1.

    Trapezoid rule over the normalised frequency from DC (shell 0) to the last shell (Nyquist
    for even boxes), divided by that frequency range; equivalently twice the area over spatial
    frequency 0 … 0.5 cycles/pixel used by CryoBench-style "FSC AUC" (theirs = ours / 2).
    """
    c = curve.detach().to("cpu", torch.float64).reshape(-1)
    n = c.numel() - 1
    if n < 1:
        raise ValueError("need at least two shells")
    return float((c.sum() - 0.5 * (c[0] + c[-1])) / n)
