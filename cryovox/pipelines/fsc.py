"""``cryovox fsc``: Fourier shell correlation between two maps, optionally masked and corrected.

Reads two cubic maps (and an optional mask), checks that they share box and pixel size, and
computes the FSC over rounded Fourier shells 0 (DC) … D/2 (:func:`cryovox.core.fsc.fsc`).
With a mask it also computes, as relion_postprocess does, the masked FSC, the FSC of the
masked phase-randomised maps and the corrected FSC (:func:`cryovox.core.fsc.fsc_corrected`).
Resolutions at FSC = 0.143 and 0.5 are the first crossings, linearly interpolated between
shells; the AUC is :func:`cryovox.core.fsc.fsc_auc`.

Outputs in OUTDIR:

* ``fsc.csv``: ``shell, frequency_inv_A, resolution_A`` and one column per curve
  (``fsc_unmasked``; with a mask also ``fsc_masked``, ``fsc_phase_randomized_masked``,
  ``fsc_corrected``; the phase-randomised curve is left out when the unmasked FSC never
  drops below 0.8, as then nothing is randomised and the corrected curve is the masked one);
  the DC row has resolution ``inf``;
* ``fsc.star``: a ``data_fsc`` table in relion_postprocess's vocabulary (``rlnSpectralIndex``,
  ``rlnResolution`` 1/Å, ``rlnAngstromResolution`` with 999 at DC as RELION writes it,
  ``rlnFourierShellCorrelationUnmaskedMaps``; with a mask also
  ``rlnFourierShellCorrelationCorrected``, ``rlnFourierShellCorrelationMaskedMaps`` and
  ``rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps``), as RELION writes it with
  and without ``--mask``;
* ``fsc.png``: the curves against spatial frequency with the 0.143 and 0.5 lines.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

APIX_TOLERANCE = 1e-3      # relative difference below which two pixel sizes are the same

CURVE_COLUMNS = {  # our name → (CSV column, RELION label)
    "unmasked": ("fsc_unmasked", "rlnFourierShellCorrelationUnmaskedMaps"),
    "masked": ("fsc_masked", "rlnFourierShellCorrelationMaskedMaps"),
    "randomized_masked": ("fsc_phase_randomized_masked", "rlnCorrectedFourierShellCorrelationPhaseRandomizedMaskedMaps"),
    "corrected": ("fsc_corrected", "rlnFourierShellCorrelationCorrected"),
}


@dataclass
class FscResult:
    """FSC curves (float64, shells 0 … D // 2) and the numbers reported for them.

    ``curves`` maps ``unmasked`` (always) and, with a mask, ``masked``, ``randomized_masked``
    and ``corrected`` to arrays; ``final`` is the corrected curve with a mask, else the
    unmasked one. Resolutions in Å (interpolated first crossings; when the curve never falls
    below a threshold the resolution of the last shell is given and ``crossed`` is False).
    """

    curves: dict[str, np.ndarray]
    apix: float
    box: int
    resolution_0143: float
    resolution_05: float
    auc: float
    crossed_0143: bool
    crossed_05: bool
    randomize_from: int | None = None
    files: dict[str, Path] = field(default_factory=dict)

    @property
    def masked(self) -> bool:
        return "corrected" in self.curves

    @property
    def final(self) -> np.ndarray:
        return self.curves["corrected"] if self.masked else self.curves["unmasked"]

    @property
    def shells(self) -> np.ndarray:
        return np.arange(self.box // 2 + 1)

    @property
    def frequency(self) -> np.ndarray:
        """Spatial frequency of each shell in 1/Å: ``i / (D · apix)``."""
        return self.shells / (self.box * self.apix)

    def summary(self) -> str:
        def res(value: float, crossed: bool) -> str:
            return f"{value:.2f} Å" if crossed else f"≤ {value:.2f} Å (never below; Nyquist-limited)"

        kind = "corrected masked FSC" if self.masked else "unmasked FSC"
        return (f"FSC=0.143: {res(self.resolution_0143, self.crossed_0143)}, "
                f"FSC=0.5: {res(self.resolution_05, self.crossed_05)}, AUC {self.auc:.3f} "
                f"({kind}, box {self.box}, {self.apix:.4g} Å/px)")


def _read(path: Path):
    from cryovox.io.mrc import read_map

    return read_map(Path(path), cubic=True)


def _same_apix(a: float, b: float) -> bool:
    return abs(a - b) <= APIX_TOLERANCE * max(abs(a), abs(b))


def _shape_text(shape) -> str:
    z, y, x = shape
    return f"{x}×{y}×{z}"


def resolve_apix(map1: Path, apix1: float, map2: Path, apix2: float, override: float | None) -> float:
    """Pixel size to use: ``override`` if given, else the maps' common header value (InputError otherwise)."""
    if override is not None:
        if not override > 0:
            raise InputError(f"--apix {override}: the pixel size must be > 0 Å")
        return float(override)
    if apix1 <= 0 and apix2 <= 0:
        raise InputError(f"{map1}: no pixel size in the header (nor in {map2}); give --apix")
    if apix1 <= 0 or apix2 <= 0:
        known, path = (apix2, map2) if apix1 <= 0 else (apix1, map1)
        log.warning("%s has no pixel size in its header; using %.4g Å/px from %s",
                    map1 if apix1 <= 0 else map2, known, path)
        return known
    if not _same_apix(apix1, apix2):
        raise InputError(f"{map1}: pixel size {apix1:.4g} Å differs from {map2}: {apix2:.4g} Å "
                         "(give --apix to override)")
    return float(apix1)


def fsc_table(result: FscResult):
    """The curves as a DataFrame with the CSV columns (``shell, frequency_inv_A, resolution_A, fsc_*``)."""
    import pandas as pd

    freq = result.frequency
    with np.errstate(divide="ignore"):
        res = np.where(result.shells > 0, result.box * result.apix / np.maximum(result.shells, 1), np.inf)
    df = pd.DataFrame({"shell": result.shells, "frequency_inv_A": freq, "resolution_A": res})
    for name, (column, _) in CURVE_COLUMNS.items():
        if name in result.curves:
            df[column] = result.curves[name]
    return df


def relion_fsc_table(result: FscResult):
    """``data_fsc`` as relion_postprocess writes it (DC: 999 Å, 1/999 Å⁻¹)."""
    import pandas as pd

    shells = result.shells
    res = np.where(shells > 0, result.box * result.apix / np.maximum(shells, 1), 999.0)
    df = pd.DataFrame({"rlnSpectralIndex": shells.astype(int), "rlnResolution": 1.0 / res,
                       "rlnAngstromResolution": res})
    order = ["corrected", "unmasked", "masked", "randomized_masked"] if result.masked else ["unmasked"]
    for name in order:
        if name in result.curves:
            df[CURVE_COLUMNS[name][1]] = result.curves[name]
    return df


def write_outputs(result: FscResult, outdir: Path, title: str = "") -> dict[str, Path]:
    """Write ``fsc.csv``, ``fsc.star`` and ``fsc.png`` into ``outdir`` (atomically)."""
    import starfile

    from cryovox.utils.files import write_atomic

    outdir = Path(outdir)
    files = {
        "csv": write_atomic(outdir / "fsc.csv", lambda p: fsc_table(result).to_csv(p, index=False, float_format="%.8g")),
        "star": write_atomic(outdir / "fsc.star",
                             lambda p: starfile.write({"fsc": relion_fsc_table(result)}, p, float_format="%.8g")),
        "png": write_atomic(outdir / "fsc.png", lambda p: plot_fsc(result, p, title)),
    }
    return files


def plot_fsc(result: FscResult, path: Path, title: str = "") -> None:
    """FSC curves against spatial frequency (1/Å), with the 0.143 and 0.5 thresholds, as PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(111)
    labels = {"unmasked": "unmasked", "masked": "masked", "randomized_masked": "phase-randomised, masked",
              "corrected": "corrected"}
    styles = {"unmasked": dict(color="tab:blue"), "masked": dict(color="tab:orange"),
              "randomized_masked": dict(color="tab:red", linestyle=":"), "corrected": dict(color="black", lw=2)}
    for name, curve in result.curves.items():
        ax.plot(result.frequency, curve, label=labels[name], **styles[name])
    for level in (0.143, 0.5):
        ax.axhline(level, color="grey", lw=0.8, linestyle="--")
        ax.text(result.frequency[-1], level + 0.01, f"{level:g}", ha="right", va="bottom", fontsize=8, color="grey")
    ax.axhline(0.0, color="black", lw=0.5)
    ax.set_xlim(0, result.frequency[-1])
    ax.set_ylim(min(-0.1, float(np.nanmin([c.min() for c in result.curves.values()]))), 1.05)
    ax.set_xlabel("spatial frequency (1/Å)")
    ax.set_ylabel("FSC")
    top = ax.twiny()                                     # resolution labels at the top
    top.set_xlim(ax.get_xlim())
    ticks = [t for t in ax.get_xticks() if 0 < t <= result.frequency[-1]]
    top.set_xticks(ticks)
    top.set_xticklabels([f"{1 / t:.3g}" for t in ticks], fontsize=8)
    top.set_xlabel("resolution (Å)", fontsize=8)
    fig.suptitle((f"{title}\n" if title else "") + result.summary(), fontsize=8)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, format="png")


def compute(a: np.ndarray, b: np.ndarray, apix: float, mask: np.ndarray | None = None, *, seed: int = 0,
            device="cpu") -> FscResult:
    """FSC curves and numbers for two maps ``[z, y, x]`` (float) already checked (no files)."""
    import torch

    from cryovox.core.fsc import crossing_shell, fsc, fsc_auc, fsc_corrected, resolution_at

    ta = torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32, device=device)
    tb = torch.as_tensor(np.ascontiguousarray(b), dtype=torch.float32, device=device)
    box = int(a.shape[-1])
    if mask is None:
        curves = {"unmasked": fsc(ta, tb).cpu().numpy()}
        randomize_from = None
    else:
        tm = torch.as_tensor(np.ascontiguousarray(mask), dtype=torch.float32, device=device)
        c = fsc_corrected(ta, tb, tm, torch.Generator().manual_seed(int(seed)))
        randomize_from = c.randomize_from
        curves = {"unmasked": c.unmasked.cpu().numpy(), "masked": c.masked.cpu().numpy()}
        if randomize_from is None:
            log.warning("the unmasked FSC never drops below 0.8: no phase randomisation, corrected = masked FSC")
        else:
            curves["randomized_masked"] = c.randomized_masked.cpu().numpy()
        curves["corrected"] = c.corrected.cpu().numpy()
    final = curves["corrected"] if mask is not None else curves["unmasked"]
    tf = torch.from_numpy(final)
    return FscResult(
        curves=curves, apix=float(apix), box=box,
        resolution_0143=resolution_at(tf, 0.143, apix, box), resolution_05=resolution_at(tf, 0.5, apix, box),
        auc=fsc_auc(tf), crossed_0143=crossing_shell(tf, 0.143) is not None,
        crossed_05=crossing_shell(tf, 0.5) is not None, randomize_from=randomize_from)


def run(map1: Path, map2: Path, *, mask: Path | None = None, apix: float | None = None, outdir: Path,
        seed: int = 0, device="cpu") -> FscResult:
    """Read, check, compute and write (see module docstring). Bad input → InputError, nothing written."""
    map1, map2 = Path(map1), Path(map2)
    m1 = _read(map1)
    m2 = _read(map2)
    if m1.data.shape != m2.data.shape:
        raise InputError(f"{map2}: map is {_shape_text(m2.data.shape)} but {map1} is {_shape_text(m1.data.shape)}; "
                         "the maps must have the same box")
    px = resolve_apix(map1, m1.apix, map2, m2.apix, apix)
    mask_data = None
    if mask is not None:
        mask = Path(mask)
        mm = _read(mask)
        if mm.data.shape != m1.data.shape:
            raise InputError(f"{mask}: mask is {_shape_text(mm.data.shape)} but the maps are "
                             f"{_shape_text(m1.data.shape)}")
        if apix is None and mm.apix > 0 and not _same_apix(mm.apix, px):
            raise InputError(f"{mask}: pixel size {mm.apix:.4g} Å differs from the maps' {px:.4g} Å "
                             "(give --apix to override)")
        lo, hi = float(mm.data.min()), float(mm.data.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise InputError(f"{mask}: mask values must lie in [0, 1] (found {lo:.4g} … {hi:.4g})")
        if hi <= 0:
            raise InputError(f"{mask}: mask is empty (all zero)")
        mask_data = np.clip(mm.data, 0.0, 1.0)
    log.info("FSC of %s and %s (%s, %.4g Å/px)%s", map1, map2, _shape_text(m1.data.shape), px,
             f", mask {mask}" if mask is not None else "")
    result = compute(m1.data, m2.data, px, mask_data, seed=seed, device=device)
    if result.randomize_from is not None:
        log.info("phases randomised beyond shell %d (%.2f Å), where the unmasked FSC first drops below 0.8",
                 result.randomize_from, result.box * px / result.randomize_from)
    result.files = write_outputs(result, Path(outdir), title=f"{map1.name} vs {map2.name}")
    return result
