"""``cryovox curate``: a ProteinNet3D-style training corpus from EMDB entries or local maps.

Per entry (the Cryo-SWAN paper's ProteinNet3D recipe, made explicit):

1. **filter** on the header, in this order: method in ``methods``, molecular weight within
   ``mw_kda`` (whole assembly, see :func:`cryovox.io.emdb.assembly_weight`; without one in
   the header it is estimated after reading the map from the volume enclosed at the contour
   level, ``n_voxels · apix³ / 1.21 Å³/Da``), resolution no worse than ``max_resolution``
   (when given; an entry without a resolution is then dropped);
2. **read and check** the map: readable, cubic, dimensions and voxel size as the header says;
3. **mask** at the author's primary contour level: ``threshold_mask(map, contour)`` grown by
   ``mask_extend`` Å with a raised-cosine edge of ``mask_soft_edge`` Å, multiplied in;
4. **resample** to ``apix`` in Fourier space: the masked map is cropped to its non-zero
   support (exact: only zeros go) and zero-padded to a box whose size converts to an
   integer box at the target pixel size (within 1e-4), its spectrum is cropped (ideal
   low-pass at the new Nyquist) and a spherical cosine low-pass falling to zero at Nyquist
   (2 Fourier pixels wide) removes the cube's corners, so nothing aliases;
   ``below_nyquist`` records that the entry's resolution is worse than the new Nyquist
   (``resolution > 2 · apix``: its spectrum does not reach the outer shells);
5. **crop/pad** to ``box`` about the map centre (voxel ``D // 2``, docs/conventions.md) and
6. **augment** with ``rotations`` uniformly random rotations (plus the unrotated map with
   ``keep_original``), sampled straight onto the output box by cubic B-spline interpolation
   (:func:`cryovox.core.transform.affine_resample`; the residual pixel-size correction of
   step 4 is folded into the same resampling) — the rotations' seed comes from the global
   seed and the entry id only, so results do not depend on worker count or order;
7. **normalise** every sample to zero mean and unit variance over the box.

Bad or odd entries are never fatal: each is recorded in ``rejected.csv`` with a category and
a reason. Outputs and the resume mechanism: :mod:`cryovox.io.corpus`.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
import traceback
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from cryovox.errors import InputError
from cryovox.io.emdb import PROTEIN_VOLUME_A3_PER_DA, EmdbHeader, MirrorEntry, discover, read_header

log = logging.getLogger("cryovox")

DEFAULT_METHODS = ("singleParticle", "subtomogramAveraging")
#: relative tolerance between the header's and the map's voxel size
APIX_TOLERANCE = 2e-3
#: the spherical anti-aliasing low-pass falls from 1 to 0 over this many Fourier pixels below Nyquist
ANTIALIAS_EDGE_PX = 2.0


@dataclass(frozen=True)
class CurateOptions:
    """Options that shape the corpus (all of them are recorded and checked on ``--resume``).

    apix: output voxel size (Å); box: output edge (voxels); methods: EMDB method names kept;
    mw_kda: (min, max) molecular weight in kDa, inclusive; max_resolution: worst resolution
    kept (Å) or None for no limit; rotations: random rotations per entry; keep_original: also
    store the unrotated map (first); split: train/val/test fractions of entries; seed: global
    seed; mask_extend / mask_soft_edge: mask growth and soft-edge width in Å (None: one and
    two output voxels).
    """

    apix: float = 4.0
    box: int = 64
    methods: tuple[str, ...] = DEFAULT_METHODS
    mw_kda: tuple[float, float] = (100.0, 1500.0)
    max_resolution: float | None = None
    rotations: int = 5
    keep_original: bool = False
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 0
    mask_extend: float | None = None
    mask_soft_edge: float | None = None

    def validate(self) -> "CurateOptions":
        if not self.apix or self.apix <= 0:
            raise InputError(f"--apix {self.apix}: must be > 0 Å")
        if self.box < 8:
            raise InputError(f"--box {self.box}: must be at least 8 voxels")
        if self.rotations < 0:
            raise InputError(f"--rotations {self.rotations}: must be ≥ 0")
        if self.rotations == 0 and not self.keep_original:
            raise InputError("--rotations 0 without --keep-original would store no sample")
        lo, hi = self.mw_kda
        if lo < 0 or hi < lo:
            raise InputError(f"--mw-kda {lo:g} {hi:g}: need 0 ≤ min ≤ max")
        if len(self.split) != 3 or any(f < 0 for f in self.split) or abs(sum(self.split) - 1.0) > 1e-6:
            raise InputError(f"--split {' '.join(f'{f:g}' for f in self.split)}: three fractions ≥ 0 summing to 1")
        if self.max_resolution is not None and self.max_resolution <= 0:
            raise InputError(f"--max-resolution {self.max_resolution}: must be > 0 Å")
        if not self.methods:
            raise InputError("--methods: give at least one method")
        return self

    @property
    def extend_a(self) -> float:
        return self.apix if self.mask_extend is None else float(self.mask_extend)

    @property
    def soft_edge_a(self) -> float:
        return 2 * self.apix if self.mask_soft_edge is None else float(self.mask_soft_edge)

    @property
    def samples_per_entry(self) -> int:
        return self.rotations + (1 if self.keep_original else 0)

    def record(self) -> dict:
        d = asdict(self)
        d["methods"] = list(self.methods)
        d["mw_kda"] = list(self.mw_kda)
        d["split"] = list(self.split)
        return d


class Rejected(Exception):
    """An entry that is dropped: ``category`` (short, stable) and a one-line reason."""

    def __init__(self, category: str, reason: str):
        super().__init__(reason)
        self.category = category
        self.reason = reason


# ------------------------------------------------------------------------------ the science
def entry_seed(seed: int, entry_id: str) -> int:
    """A 63-bit seed from the global seed and the entry id (stable across processes and runs)."""
    digest = hashlib.sha256(f"curate:{seed}:{entry_id}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _exact_ratio_size(n: int, apix_in: float, apix_out: float, max_growth: float = 1.25) -> int:
    """Smallest ``m ≥ n`` (≤ n·max_growth) with ``m · apix_in / apix_out`` an integer within 1e-4
    relative; the ``m`` with the smallest relative error when none is that close."""
    r = apix_in / apix_out
    best, best_err = n, math.inf
    for m in range(n, max(n, int(math.ceil(n * max_growth))) + 1):
        d = m * r
        k = max(1, round(d))
        err = abs(d - k) / d
        if err < 1e-4:
            return m
        if err < best_err - 1e-12:
            best, best_err = m, err
    return best


def _support_reach(binary: np.ndarray) -> int | None:
    """Largest distance (voxels, per axis) of a True voxel from the centre ``D // 2``; None if none."""
    D = binary.shape[-1]
    reach = None
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(binary.any(axis=other))
        if not len(idx):
            return None
        r = int(max(abs(idx[0] - D // 2), abs(idx[-1] - D // 2)))
        reach = r if reach is None else max(reach, r)
    return reach


def resample_map(vol, apix_in: float, apix_out: float):
    """Fourier resampling of a (masked) map to ``apix_out`` without aliasing (step 4 above).

    vol: (D, D, D) tensor whose values outside the molecule are zero. Returns
    ``(resampled (d, d, d) float64 tensor, apix_actual)``; ``apix_actual`` differs from
    ``apix_out`` by < 1e-4 relative when an exact size was found, otherwise by at most half a
    voxel over the box (the caller folds the difference into its final resampling).
    """
    import torch

    from cryovox.core.filters import lowpass_weights, apply_radial_filter
    from cryovox.core.spectral import fourier_resize
    from cryovox.core.transform import center_crop_pad

    reach = _support_reach((vol != 0).numpy())
    if reach is not None:
        vol = center_crop_pad(vol, min(vol.shape[-1], 2 * reach + 2))  # only zeros are removed
    n = vol.shape[-1]
    m = _exact_ratio_size(n, apix_in, apix_out)
    vol = center_crop_pad(vol.to(torch.float64), m)
    d = max(1, int(round(m * apix_in / apix_out)))
    out = fourier_resize(vol, d, 3) if d != m else vol
    apix_actual = m * apix_in / d
    w = lowpass_weights(d, 3, d / 2 - ANTIALIAS_EDGE_PX, ANTIALIAS_EDGE_PX)
    return apply_radial_filter(out, w, 3), apix_actual


def make_samples(resampled, apix_actual: float, apix_out: float, box: int, rotations) -> "np.ndarray":
    """Output samples: the resampled map rotated by each matrix onto a ``box³`` grid, normalised.

    resampled: (d, d, d) tensor at ``apix_actual`` Å; rotations: (n, 3, 3) (x, y, z) rotation
    matrices (``rotate`` convention: content at ``q`` moves to ``R q``). The grid scale
    ``apix_out / apix_actual`` is applied in the same interpolation. An identity rotation
    at an exact scale is a plain crop/pad (no interpolation). Returns float32 (n, box, box, box),
    each sample with zero mean and unit variance (statistics in float64 with NumPy's pairwise
    sums, which do not depend on thread count).
    """
    import torch

    from cryovox.core.transform import affine_resample, center_crop_pad, spline_prefilter

    s = apix_out / apix_actual
    R = torch.as_tensor(rotations, dtype=torch.float64)
    coef = None
    out = []
    for k in range(R.shape[0]):
        if abs(s - 1.0) < 1e-9 and torch.equal(R[k], torch.eye(3, dtype=torch.float64)):
            vol = center_crop_pad(resampled, box)
        else:
            if coef is None:
                coef = spline_prefilter(resampled)
            vol = affine_resample(resampled, s * R[k].T, out_size=box, order=3, prefiltered=coef)
        arr = vol.detach().cpu().numpy().astype(np.float64)
        sd = arr.std()
        if not np.isfinite(sd) or sd <= 0:
            raise Rejected("empty", "the sample is constant after masking and resampling")
        out.append(((arr - arr.mean()) / sd).astype(np.float32))
    return np.stack(out)


def _mass_estimate_kda(data: np.ndarray, contour: float, apix: float) -> float:
    """Molecular weight (kDa) from the volume enclosed at the contour (1.21 Å³/Da)."""
    n = int(np.count_nonzero(data >= contour))
    return n * apix**3 / PROTEIN_VOLUME_A3_PER_DA / 1000.0


def _read_map_checked(entry: MirrorEntry, meta: EmdbHeader):
    from cryovox.io.mrc import read_map

    try:
        m = read_map(entry.map_path, cubic=False)
    except InputError as err:
        raise Rejected("unreadable_map", str(err)) from None
    except (zlib.error, OSError, EOFError, ValueError) as err:
        raise Rejected("unreadable_map", f"{entry.map_path}: not a readable map ({type(err).__name__}: {err})") from None
    z, y, x = m.data.shape
    if not (x == y == z):
        raise Rejected("non_cubic", f"{entry.map_path}: map is {x}×{y}×{z}; a cubic map is needed")
    if meta.dims is not None and tuple(meta.dims) != (x, y, z):
        c, r, s = meta.dims
        raise Rejected("header_mismatch", f"{entry.map_path}: map is {x}×{y}×{z} but the header says {c}×{r}×{s}")
    apix = None
    if meta.apix is not None:
        ax, ay, az = meta.apix
        if max(meta.apix) - min(meta.apix) > APIX_TOLERANCE * max(meta.apix):
            raise Rejected("header_mismatch", f"header voxel size {ax:g}×{ay:g}×{az:g} Å is anisotropic")
        apix = float(ax)
        if m.apix > 0 and abs(m.apix - apix) > APIX_TOLERANCE * apix:
            raise Rejected("header_mismatch", f"{entry.map_path}: voxel size {m.apix:g} Å but the header says {apix:g} Å")
    elif m.apix > 0:
        apix = float(m.apix)
    if apix is None:
        raise Rejected("no_pixel_size", "neither the header nor the map gives a voxel size")
    return m, apix


def _missing_reason(entry: MirrorEntry) -> tuple[str, str]:
    if entry.map_path is None:
        if entry.header_path is not None:
            return "no_map", f"header {entry.header_path.name} has no map file (emd_N.map[.gz]) beside it"
        name = entry.meta.map_file if entry.meta is not None and entry.meta.map_file else "no map"
        return "no_map", f"the metadata row names {name}, which is not there"
    return "no_header", f"map {entry.map_path.name} has no header/metadata"


def process_entry(entry: MirrorEntry, opts: CurateOptions) -> tuple[np.ndarray, list[dict]]:
    """Curate one entry: ``(samples (n, box, box, box) float32, metadata rows)``.

    Raises :class:`Rejected` (with a category and reason) for an entry that is dropped.
    """
    import torch

    from cryovox.core.masks import threshold_mask
    from cryovox.core.rotations import matrix_to_euler, random_rotations
    from cryovox.core.transform import center_crop_pad

    if entry.map_path is None or (entry.meta is None and entry.header_path is None):
        raise Rejected(*_missing_reason(entry))
    if entry.meta is not None:
        meta = entry.meta
    else:
        try:
            meta = read_header(entry.header_path)
        except InputError as err:
            raise Rejected("bad_header", str(err)) from None

    wanted = {m.lower() for m in opts.methods}
    if meta.method is None:
        raise Rejected("method", "no method given (header or metadata CSV)")
    if meta.method.lower() not in wanted:
        raise Rejected("method", f"method {meta.method} is not one of {', '.join(opts.methods)}")
    lo, hi = opts.mw_kda
    if meta.mw_kda is not None and not (lo <= meta.mw_kda <= hi):
        raise Rejected("mass", f"molecular weight {meta.mw_kda:.1f} kDa ({meta.mw_source}) is outside "
                               f"{lo:g}–{hi:g} kDa")
    if opts.max_resolution is not None:
        if meta.resolution is None:
            raise Rejected("resolution", "the header gives no resolution (needed for --max-resolution)")
        if meta.resolution > opts.max_resolution:
            raise Rejected("resolution", f"resolution {meta.resolution:g} Å is worse than --max-resolution "
                                         f"{opts.max_resolution:g} Å")
    if meta.contour is None:
        raise Rejected("no_contour", "no contour level (needed for the mask)")

    m, apix_in = _read_map_checked(entry, meta)
    mw, mw_source = meta.mw_kda, meta.mw_source
    if mw is None:
        mw, mw_source = _mass_estimate_kda(m.data, meta.contour, apix_in), "volume at contour"
        if not (lo <= mw <= hi):
            raise Rejected("mass", f"molecular weight {mw:.1f} kDa (estimated from the volume at the contour) "
                                   f"is outside {lo:g}–{hi:g} kDa")

    inside = _support_reach(m.data >= meta.contour)
    if inside is None:
        raise Rejected("empty", f"no voxel reaches the contour level {meta.contour:g}")
    # crop to the region the mask can reach (exact: everything beyond is multiplied by 0);
    # the distance transforms of the mask then run on far fewer voxels
    D = m.data.shape[-1]
    extend_px, soft_px = opts.extend_a / apix_in, opts.soft_edge_a / apix_in
    reach = inside + int(math.ceil(max(extend_px, 0) + soft_px)) + 2
    vol = center_crop_pad(torch.from_numpy(m.data), min(D, 2 * reach + 2))
    mask = threshold_mask(vol, meta.contour, extend_px, soft_px)
    resampled, apix_actual = resample_map(vol.to(torch.float64) * mask.to(torch.float64), apix_in, opts.apix)

    gen = torch.Generator().manual_seed(entry_seed(opts.seed, entry.entry_id))
    mats = random_rotations(opts.rotations, generator=gen) if opts.rotations else torch.zeros(0, 3, 3,
                                                                                         dtype=torch.float64)
    if opts.keep_original:
        mats = torch.cat([torch.eye(3, dtype=torch.float64)[None], mats])
    samples = make_samples(resampled, apix_actual, opts.apix, opts.box, mats)
    eulers = matrix_to_euler(mats).tolist()
    effective = max(meta.resolution or 0.0, 2 * apix_in)  # the source's own Nyquist limits it too
    below = bool(effective > 2 * opts.apix)
    rows = []
    for k, (rot, tilt, psi) in enumerate(eulers):
        rows.append({
            "entry_id": entry.entry_id, "rotation": k, "rot": round(rot, 6) + 0.0, "tilt": round(tilt, 6) + 0.0,
            "psi": round(psi, 6) + 0.0, "method": meta.method, "resolution": meta.resolution,
            "mw_kda": round(float(mw), 4), "mw_source": mw_source, "contour": meta.contour,
            "source_apix": apix_in, "source_box": int(m.data.shape[-1]), "apix": opts.apix, "box": opts.box,
            "below_nyquist": below, "n_half_maps": len(meta.half_maps) or len(entry.half_maps),
            "source_map": entry.map_path.name,
        })
    return samples, rows


# ------------------------------------------------------------------------------- the driver
def _work(task: tuple) -> tuple[str, str, str, float]:
    """Worker: curate one entry and write its shard. Returns (entry_id, status, text, seconds)."""
    from cryovox.io.corpus import write_kept, write_rejected

    entry, opts, outdir = task
    t0 = time.perf_counter()
    header = str(entry.header_path or "")
    mp = str(entry.map_path or "")
    try:
        samples, rows = process_entry(entry, opts)
    except Rejected as rej:
        write_rejected(outdir, entry.entry_id, rej.category, rej.reason, header, mp)
        return entry.entry_id, "rejected", f"{rej.category}: {rej.reason}", time.perf_counter() - t0
    except Exception as err:  # one odd entry must not end the run: record it with the traceback in the log
        reason = f"unexpected {type(err).__name__}: {err}"
        write_rejected(outdir, entry.entry_id, "error", reason, header, mp)
        return entry.entry_id, "error", reason + "\n" + traceback.format_exc(), time.perf_counter() - t0
    write_kept(outdir, entry.entry_id, samples, rows)
    return entry.entry_id, "kept", f"{len(rows)} samples", time.perf_counter() - t0


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))


@dataclass
class CurateResult:
    outdir: Path
    n_entries_seen: int
    n_kept: int
    n_rejected: int
    n_samples: int
    splits: dict[str, int]
    processed_now: int
    seconds: float
    rejected_by_category: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        cats = ", ".join(f"{k} {v}" for k, v in sorted(self.rejected_by_category.items()))
        return (f"curated {self.n_entries_seen} entries: kept {self.n_kept} ({self.n_samples} samples; "
                f"entries train/val/test {self.splits.get('train', 0)}/{self.splits.get('val', 0)}/"
                f"{self.splits.get('test', 0)}), rejected {self.n_rejected}" + (f" ({cats})" if cats else "")
                + f" → {self.outdir}")


class StopForTest(RuntimeError):
    """Raised by the ``stop_after`` test hook to interrupt a run as a kill would."""


def run(source: Path, outdir: Path, opts: CurateOptions, *, workers: int = 1, resume: bool = False,
        write_mrc: bool = False, report: bool = True, stop_after: int | None = None) -> CurateResult:
    """Curate every entry of ``source`` into the store at ``outdir`` (see module docstring).

    workers: processes (spawn) over entries; 1 runs in this process. resume: skip entries
    with a finished shard (or in a finished store); options must match the earlier run.
    write_mrc: also write every sample as ``mrc/<entry>_<k>.mrc``. stop_after: test hook,
    raise :class:`StopForTest` after that many entries were processed in this call (the
    state is then exactly that of a run killed at that point).
    """
    from cryovox.io.corpus import Corpus, WorkDir, assemble, check_same_options, write_rejected
    from cryovox.utils.progress import Progress

    opts.validate()
    source, outdir = Path(source), Path(outdir)
    t0 = time.monotonic()
    entries = discover(source)
    if not entries:
        raise InputError(f"{source}: no entries found")
    record = opts.record()
    previous = None
    if resume and (outdir / "corpus.json").exists():
        previous = Corpus(outdir)
        check_same_options(previous.info.get("options", {}), record, outdir / "corpus.json")
    wd = WorkDir(outdir)
    wd.create(record, resume=resume)
    done = wd.done()
    if previous is not None:
        done |= {r["entry_id"] for r in previous.metadata_rows()}
        if (outdir / "rejected.csv").exists():
            import csv

            with open(outdir / "rejected.csv", newline="") as f:
                done |= {r["entry_id"] for r in csv.DictReader(f)}
    todo = [e for e in entries if e.entry_id not in done]
    log.info("%s: %d entries (%d already done), %d to process with %d worker(s)", source, len(entries),
             len(entries) - len(todo), len(todo), workers)

    processed = 0

    def handle(result: tuple[str, str, str, float], progress: Progress) -> None:
        nonlocal processed
        eid, status, text, secs = result
        if status == "kept":
            log.debug("%s: kept, %s (%.1f s)", eid, text, secs)
        elif status == "error":
            first, _, tb = text.partition("\n")
            log.warning("%s: rejected, %s", eid, first)
            log.debug("%s", tb)
        else:
            log.info("%s: rejected, %s", eid, text)
        processed += 1
        progress.advance()
        if stop_after is not None and processed >= stop_after:
            raise StopForTest(f"stopped after {processed} entries (test hook)")

    # entries missing a map or a header are recorded without a worker
    quick = [e for e in todo if e.map_path is None or (e.header_path is None and e.meta is None)]
    quick_ids = {e.entry_id for e in quick}
    slow = [e for e in todo if e.entry_id not in quick_ids]
    with Progress("curate", total=len(todo)) as progress:
        for e in quick:
            cat, why = _missing_reason(e)
            write_rejected(outdir, e.entry_id, cat, why, str(e.header_path or ""), str(e.map_path or ""))
            handle((e.entry_id, "rejected", f"{cat}: {why}", 0.0), progress)
        tasks = [(e, opts, outdir) for e in slow]
        if workers <= 1 or len(tasks) <= 1:
            for t in tasks:
                handle(_work(t), progress)
        else:
            import multiprocessing as mp
            from concurrent.futures import ProcessPoolExecutor, as_completed

            threads = max(1, (os.cpu_count() or 1) // workers)
            # spawn: safe with torch and threads; a worker that dies (e.g. out of memory) stops
            # the run with BrokenProcessPool instead of hanging, and --resume continues it
            with ProcessPoolExecutor(min(workers, len(tasks)), mp_context=mp.get_context("spawn"),
                                     initializer=_init_worker, initargs=(threads,)) as pool:
                futures = [pool.submit(_work, t) for t in tasks]
                try:
                    for fut in as_completed(futures):
                        handle(fut.result(), progress)
                except BaseException:
                    for f in futures:
                        f.cancel()
                    raise

    order = [e.entry_id for e in entries]
    res = assemble(outdir, order, record, opts.split, opts.seed, opts.apix, opts.box, previous=previous)
    from cryovox.io.corpus import Corpus as _Corpus

    corpus = _Corpus(outdir)
    if write_mrc:
        _write_mrcs(corpus)
    if report:
        write_report(corpus, outdir / "report.png")
    wd.remove()
    rej = corpus.rejected()
    cats = rej["category"].value_counts().to_dict() if len(rej) else {}
    return CurateResult(outdir=outdir, n_entries_seen=len(entries), n_kept=res.n_entries, n_rejected=res.n_rejected,
                        n_samples=res.n_samples, splits=res.splits, processed_now=processed,
                        seconds=time.monotonic() - t0, rejected_by_category={str(k): int(v) for k, v in cats.items()})


def _write_mrcs(corpus) -> None:
    """Every sample as ``mrc/<entry>_<rotation>.mrc`` (float32, the corpus voxel size)."""
    import re

    from cryovox.io.mrc import write_map

    import shutil

    folder = corpus.path / "mrc"
    shutil.rmtree(folder, ignore_errors=True)  # no stale samples from an earlier run
    folder.mkdir()
    md = corpus.metadata
    for i, (eid, k) in enumerate(zip(md["entry_id"], md["rotation"])):
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(eid))
        write_map(folder / f"{safe}_{int(k)}.mrc", corpus[i], corpus.apix)


def write_report(corpus, path: Path, max_montage: int = 24) -> Path:
    """PNG summary: molecular weight and resolution histograms (one count per entry), entries
    per split, and a montage of central z-slices (first sample of each entry)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cryovox.utils.files import write_atomic

    md = corpus.metadata
    first = md.drop_duplicates("entry_id")
    rej = corpus.rejected()
    n_show = min(max_montage, len(first))
    cols = 8
    rows_m = max(1, math.ceil(n_show / cols))
    fig = plt.figure(figsize=(16, 4 + 2 * rows_m))
    gs = fig.add_gridspec(1 + rows_m, cols, height_ratios=[2.2] + [1] * rows_m)
    ax = fig.add_subplot(gs[0, 0:3])
    ax.hist(first["mw_kda"].astype(float), bins=20, color="tab:blue")
    ax.set_xlabel("molecular weight (kDa)")
    ax.set_ylabel("entries")
    ax.set_title(f"{len(first)} entries kept, {len(rej)} rejected")
    ax = fig.add_subplot(gs[0, 3:6])
    res = first["resolution"].dropna().astype(float)
    if len(res):
        ax.hist(res, bins=20, color="tab:green")
    ax.axvline(2 * corpus.apix, color="k", ls="--", lw=1, label=f"Nyquist {2 * corpus.apix:g} Å")
    ax.legend(fontsize=8)
    ax.set_xlabel("resolution (Å)")
    ax = fig.add_subplot(gs[0, 6:8])
    counts = first["split"].value_counts()
    names = ["train", "val", "test"]
    ax.bar(names, [int(counts.get(n, 0)) for n in names], color="tab:gray")
    ax.set_title("entries per split")
    for j in range(n_show):
        a = fig.add_subplot(gs[1 + j // cols, j % cols])
        vol = corpus[int(first["index"].iloc[j])]
        a.imshow(vol[vol.shape[0] // 2], cmap="gray")
        a.set_title(str(first["entry_id"].iloc[j]), fontsize=7)
        a.axis("off")
    fig.suptitle(f"cryovox corpus: {len(corpus)} samples, box {corpus.box}, {corpus.apix:g} Å/px")
    fig.tight_layout()
    write_atomic(path, lambda p: fig.savefig(p, dpi=80))
    plt.close(fig)
    return path


def parse_methods(text: str | Sequence[str]) -> tuple[str, ...]:
    """``"singleParticle,subtomogramAveraging"`` → canonical EMDB method names (case-insensitive)."""
    from cryovox.io.emdb import METHODS

    items = [t.strip() for t in (text.split(",") if isinstance(text, str) else text) if t.strip()]
    canon = {m.lower(): m for m in METHODS}
    out = []
    for t in items:
        if t.lower() not in canon:
            raise InputError(f"--methods {t}: expected some of {', '.join(METHODS)}")
        out.append(canon[t.lower()])
    return tuple(out)
