"""Decode volumes from a trained heterogeneity model (``cryovox eval-vol``).

:func:`load_run` reads a ``train-hetero`` output directory (``weights.N.pt`` of any registered
model kind, and ``z.N.pkl``); :func:`write_volumes` decodes latent points to real-space maps
(gridding-corrected, at the particles' pixel size, float32 MRC) with an optional low-pass and
handedness flip. :func:`eval_vol` is the command: latent points given with ``-z``, read from a
file, or a straight traversal between the latent points of two particles.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")


@dataclass
class TrainedRun:
    """A trained model with its latent means: model (eval mode, on ``device``), epoch, ``z``
    ``(n, zdim)`` float32, the checkpoint dict and its path."""

    model: object
    epoch: int
    z: np.ndarray
    state: dict
    path: Path

    @property
    def apix(self) -> float:
        return float(self.model.apix)


def _epochs(outdir: Path) -> list[int]:
    out = []
    for p in Path(outdir).glob("weights.*.pt"):
        m = re.fullmatch(r"weights\.(\d+)\.pt", p.name)
        if m:
            out.append(int(m.group(1)))
    return sorted(out)


def resolve_epoch(outdir: Path | str, epoch: int | None = None) -> int:
    """The epoch to use: ``epoch`` (negative counts from the end) or the last one with a ``weights.N.pt``."""
    outdir = Path(outdir)
    if not outdir.is_dir():
        raise InputError(f"{outdir}: no such directory (expected a train-hetero output directory)")
    epochs = _epochs(outdir)
    if not epochs:
        raise InputError(f"{outdir}: no weights.N.pt checkpoints (not a train-hetero output directory?)")
    if epoch is None:
        return epochs[-1]
    if epoch < 0:
        epoch = epochs[-1] + 1 + epoch
    if epoch not in epochs:
        raise InputError(f"{outdir}: no weights.{epoch}.pt (epochs available: {epochs[0]}–{epochs[-1]})")
    return epoch


def load_run(outdir: Path | str, epoch: int | None = None, device="cpu") -> TrainedRun:
    """Load ``weights.N.pt`` and ``z.N.pkl`` of epoch ``N`` (default: the last) from a train-hetero directory.

    InputError when the directory has no checkpoints, the epoch is missing, the checkpoint is
    not a heterogeneity model's, or ``z.N.pkl`` does not match the model.
    """
    from cryovox.io.checkpoint import load_checkpoint
    from cryovox.io.pickles import safe_load_pickle
    from cryovox.models import model_from_checkpoint

    outdir = Path(outdir)
    epoch = resolve_epoch(outdir, epoch)
    path = outdir / f"weights.{epoch}.pt"
    state = load_checkpoint(path)
    model = model_from_checkpoint(state, source=str(path)).to(device).eval()
    zpath = outdir / f"z.{epoch}.pkl"
    z = safe_load_pickle(zpath)
    if not isinstance(z, np.ndarray) or z.ndim != 2 or z.shape[1] != model.zdim:
        shape = getattr(z, "shape", type(z).__name__)
        raise InputError(f"{zpath}: expected a (particles, {model.zdim}) array of latent means, found {shape}")
    return TrainedRun(model=model, epoch=epoch, z=z.astype(np.float32), state=state, path=path)


def decode(model, z: np.ndarray, device="cpu"):
    """Real-space maps ``(D, D, D)`` float32 numpy, one per row of ``z`` ``(m, zdim)`` (generator)."""
    import torch

    with torch.no_grad():
        for row in np.asarray(z, dtype=np.float32).reshape(-1, model.zdim):
            zt = torch.from_numpy(row[None]).to(device)
            yield model.decode_volume(zt)[0].float().cpu().numpy()


def write_volumes(model, z: np.ndarray, paths: Sequence[Path], *, device="cpu", lowpass: float | None = None,
                  flip: bool = False) -> list[Path]:
    """Decode each row of ``z`` and write it to the matching path (float32 MRC at the model's pixel size).

    lowpass: resolution in Å of a soft low-pass (:func:`cryovox.core.filters.lowpass`);
    flip: mirror the map along z (handedness flip).
    """
    import torch

    from cryovox.core.filters import lowpass as lowpass_filter
    from cryovox.io.mrc import write_map

    apix = float(model.apix)
    out = []
    for vol, path in zip(decode(model, z, device), paths):
        if lowpass is not None:
            vol = lowpass_filter(torch.from_numpy(vol).double(), apix, lowpass, ndim=3).float().numpy()
        if flip:
            vol = np.ascontiguousarray(vol[::-1])
        out.append(write_map(path, vol, apix))
    return out


@dataclass
class EvalVolResult:
    files: list[Path]
    z: np.ndarray
    epoch: int
    apix: float
    box: int
    seconds_per_volume: float
    extra: dict = field(default_factory=dict)

    def summary(self) -> str:
        where = self.files[0] if len(self.files) == 1 else self.files[0].parent
        return (f"decoded {len(self.files)} volume(s) of {self.box} px at {self.apix:g} Å/px from epoch {self.epoch} "
                f"({1000 * self.seconds_per_volume:.1f} ms each) → {where}")


def parse_z(values: Sequence[str], zdim: int) -> np.ndarray:
    """``-z`` values: each a latent point as ``zdim`` numbers separated by commas or spaces → ``(m, zdim)``."""
    rows = []
    for v in values:
        parts = [p for p in re.split(r"[,\s]+", str(v).strip()) if p]
        try:
            row = [float(p) for p in parts]
        except ValueError:
            raise InputError(f"-z {v!r}: expected {zdim} numbers separated by commas") from None
        if len(row) != zdim:
            raise InputError(f"-z {v!r}: {len(row)} numbers given; the model's latent dimension is {zdim}")
        rows.append(row)
    return np.asarray(rows, dtype=np.float32)


def read_zfile(path: Path, zdim: int) -> np.ndarray:
    """Latent points from a text file (one per line), ``.npy`` or ``.pkl`` → ``(m, zdim)``."""
    from cryovox.io.pickles import safe_load_pickle

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    if path.suffix == ".pkl":
        z = safe_load_pickle(path)
    elif path.suffix == ".npy":
        try:
            z = np.load(path, allow_pickle=False)
        except ValueError as err:
            raise InputError(f"{path}: not a readable .npy array ({err})") from None
    else:
        try:
            z = np.loadtxt(path, dtype=np.float64, ndmin=2)
        except ValueError as err:
            raise InputError(f"{path}: not a text table of numbers ({err})") from None
    z = np.asarray(z, dtype=np.float32)
    if z.ndim == 1 and zdim == 1:
        z = z[:, None]
    if z.ndim == 1 and z.shape[0] == zdim:
        z = z[None]
    if z.ndim != 2 or z.shape[1] != zdim or z.shape[0] == 0:
        raise InputError(f"{path}: expected rows of {zdim} numbers (the model's latent dimension), found shape {z.shape}")
    return z


def traversal(z: np.ndarray, a: int, b: int, steps: int) -> np.ndarray:
    """``steps`` points on the straight line from ``z[a]`` to ``z[b]`` (particle rows, 0-based)."""
    n = len(z)
    for i in (a, b):
        if not 0 <= i < n:
            raise InputError(f"--traversal: particle {i} is out of range (0–{n - 1})")
    if steps < 2:
        raise InputError(f"--traversal: {steps} steps; at least 2 are needed")
    t = np.linspace(0.0, 1.0, steps, dtype=np.float32)[:, None]
    return (1 - t) * z[a][None] + t * z[b][None]


def attention_maps(model, z: np.ndarray, queries: Sequence[int], head: int | None = None, device="cpu",
                   source: str = "model") -> np.ndarray:
    """Per-voxel attention ``(m, len(queries), D, D, D)`` float32 of the chosen queries at each latent point
    ``z`` ``(m, zdim)`` (models with ``attention_volume``: cryoformer with its transformer decoder); head:
    one attention head (default: their mean). InputError for other models or out-of-range queries."""
    import torch

    if not hasattr(model, "attention_volume"):
        raise InputError(f"{source}: attention maps need a cryoformer model; this is a {model.kind} model")
    try:
        with torch.no_grad():
            att = model.attention_volume(torch.from_numpy(np.asarray(z, dtype=np.float32)).to(device),
                                         [int(q) for q in queries], head)
    except ValueError as err:
        raise InputError(f"--attention-map: {err}") from None
    return att.float().cpu().numpy()


def eval_vol(outdir: Path | str, output: Path, *, z: Sequence[str] | None = None, zfile: Path | None = None,
             traversal_points: tuple[int, int, int] | None = None, epoch: int | None = None,
             lowpass: float | None = None, flip: bool = False, device="cpu",
             attention: Sequence[int] | None = None, attention_head: int | None = None) -> EvalVolResult:
    """Decode volumes from a train-hetero run.

    Exactly one of ``z`` (``-z`` strings, see :func:`parse_z`), ``zfile`` or ``traversal_points``
    ``(a, b, steps)`` (particle rows). ``output`` ending in ``.mrc`` with one volume is that file;
    otherwise ``output`` is a directory receiving ``vol_000.mrc …`` and ``z_values.txt``.
    attention: query indices whose per-voxel attention (:func:`attention_maps`, ``attention_head``) is
    written next to each volume as ``<volume>_attn_qNN.mrc`` (values in [0, 1], same grid, pixel
    size and flip), for colouring the map by region in ChimeraX (``color zone`` / ``volume … style``).
    """
    given = sum(x is not None and (not isinstance(x, (list, tuple)) or len(x) > 0)
                for x in (z, zfile, traversal_points))
    if given != 1:
        raise InputError("eval-vol: give exactly one of -z, --zfile or --traversal")
    if lowpass is not None and not (lowpass > 0):
        raise InputError(f"--lowpass {lowpass}: the resolution must be > 0 Å")
    run = load_run(outdir, epoch, device)
    model = run.model
    if z:
        points = parse_z(z, model.zdim)
    elif zfile is not None:
        points = read_zfile(zfile, model.zdim)
    else:
        a, b, steps = traversal_points
        points = traversal(run.z, int(a), int(b), int(steps))
    output = Path(output)
    if lowpass is not None and lowpass < 2 * run.apix:
        raise InputError(f"--lowpass {lowpass:g}: finer than Nyquist ({2 * run.apix:g} Å)")
    att = attention_maps(model, points, attention, attention_head, device, str(run.path)) if attention else None
    if output.suffix == ".mrc" and len(points) == 1:
        paths = [output]
    else:
        if output.suffix == ".mrc":
            raise InputError(f"{output}: {len(points)} volumes need an output directory, not one .mrc file")
        output.mkdir(parents=True, exist_ok=True)
        paths = [output / f"vol_{i:03d}.mrc" for i in range(len(points))]
        from cryovox.utils.files import write_text_atomic

        write_text_atomic(output / "z_values.txt",
                          "\n".join(" ".join(f"{v:.6g}" for v in row) for row in points) + "\n")
    t0 = time.perf_counter()
    files = write_volumes(model, points, paths, device=device, lowpass=lowpass, flip=flip)
    per = (time.perf_counter() - t0) / max(1, len(files))
    extra = {}
    if att is not None:
        from cryovox.io.mrc import write_map

        extra["attention_files"] = [
            write_map(path.with_name(f"{path.stem}_attn_q{int(q):02d}.mrc"),
                      np.ascontiguousarray(att[i, j][::-1] if flip else att[i, j]), run.apix)
            for i, path in enumerate(paths) for j, q in enumerate(attention)]
    return EvalVolResult(files=files, z=points, epoch=run.epoch, apix=run.apix, box=int(model.box),
                         seconds_per_volume=per, extra=extra)
