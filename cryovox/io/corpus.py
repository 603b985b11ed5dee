"""The corpus store written by ``cryovox curate`` and read by the volume datasets.

Layout of a finished store (a folder)::

    volumes.npy     float32 (N, box, box, box), memory-mappable .npy (numpy format 1.0/2.0)
    metadata.csv    one row per sample: index (row in volumes.npy), entry_id, rotation, split, …
    rejected.csv    one row per dropped entry: entry_id, category, reason, header, map
    corpus.json     format, version, apix, box, counts, split sizes and the options used;
                    written last, so its presence marks a complete store

While a run is in progress each finished entry is a *shard* under ``.work/``: ``kept/<key>.npy``
(the entry's samples) then ``kept/<key>.json`` (its metadata rows; written last, so a shard
counts as done only when both are complete), or ``rejected/<key>.json``. Workers write
shards independently (atomic renames, no shared file), so a killed run leaves only whole
shards; ``--resume`` skips the entries that have one. The final assembly writes the store
in entry order from the shards (and, when resuming after a finished run, from the previous
store), each file to a temporary name then renamed, so the result is byte-identical to an
uninterrupted run whatever the worker count or the order the entries finished in.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from cryovox.errors import InputError
from cryovox.utils.files import write_atomic, write_text_atomic

FORMAT = "cryovox-corpus"
VERSION = 1
WORK = ".work"
SPLITS = ("train", "val", "test")

#: metadata.csv columns, in order (``index`` and ``split`` are set at assembly).
METADATA_COLUMNS = (
    "index", "entry_id", "rotation", "rot", "tilt", "psi", "split", "method", "resolution", "mw_kda",
    "mw_source", "contour", "source_apix", "source_box", "apix", "box", "below_nyquist", "n_half_maps",
    "source_map",
)
REJECTED_COLUMNS = ("entry_id", "category", "reason", "header", "map")


def shard_key(entry_id: str) -> str:
    """File-system-safe, collision-free name for an entry's shard files."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", entry_id)[:80]
    digest = hashlib.sha256(entry_id.encode()).hexdigest()[:8]
    return f"{safe}.{digest}"


def _cell(value: Any) -> str:
    """One CSV cell: floats as their shortest exact repr, None as empty, bools as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _csv_text(columns: Sequence[str], rows: Iterable[dict]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for row in rows:
        w.writerow([_cell(row.get(c)) for c in columns])
    return buf.getvalue()


def _read_csv_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


# ------------------------------------------------------------------------------------ shards
class WorkDir:
    """The ``.work`` folder of a run in progress (see module docstring)."""

    def __init__(self, outdir: Path):
        self.outdir = Path(outdir)
        self.dir = self.outdir / WORK
        self.kept = self.dir / "kept"
        self.rejected = self.dir / "rejected"

    def create(self, options: dict, resume: bool) -> None:
        """Make the folders; check (resume) or record the options that shape the outputs.

        InputError when resuming a run made with different options.
        """
        state = self.dir / "state.json"
        if resume and state.exists():
            old = json.loads(state.read_text())
            check_same_options(old.get("options", {}), options, state)
        elif not resume and self.dir.exists():
            shutil.rmtree(self.dir)
        self.kept.mkdir(parents=True, exist_ok=True)
        self.rejected.mkdir(parents=True, exist_ok=True)
        if not state.exists():
            write_text_atomic(state, json.dumps({"options": options}, indent=1, sort_keys=True))

    def done(self) -> set[str]:
        """Entry ids with a complete shard (kept or rejected)."""
        ids = set()
        for folder in (self.kept, self.rejected):
            if folder.is_dir():
                for p in folder.glob("*.json"):
                    try:
                        ids.add(json.loads(p.read_text())["entry_id"])
                    except (ValueError, KeyError, OSError):
                        continue  # unreadable: the entry is processed again
        return ids

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def write_kept(workdir: Path, entry_id: str, volumes: np.ndarray, rows: list[dict]) -> None:
    """Store one entry's samples ``(n, box, box, box)`` float32 and their metadata rows."""
    wd = WorkDir(workdir) if not isinstance(workdir, WorkDir) else workdir
    key = shard_key(entry_id)
    vols = np.ascontiguousarray(volumes, dtype=np.float32)
    write_atomic(wd.kept / f"{key}.npy", lambda p: np.save(p, vols))
    write_text_atomic(wd.kept / f"{key}.json", json.dumps({"entry_id": entry_id, "rows": rows}))


def write_rejected(workdir: Path, entry_id: str, category: str, reason: str,
                   header: str = "", map_path: str = "") -> None:
    """Record that one entry was dropped, with a category and a one-line reason."""
    wd = WorkDir(workdir) if not isinstance(workdir, WorkDir) else workdir
    row = {"entry_id": entry_id, "category": category, "reason": reason, "header": header, "map": map_path}
    write_text_atomic(wd.rejected / f"{shard_key(entry_id)}.json", json.dumps(row))


def check_same_options(old: dict, new: dict, where: Path) -> None:
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        shown = "; ".join(f"{k}: {old.get(k)!r} then, {new.get(k)!r} now" for k in diff[:4])
        raise InputError(f"{where}: --resume with different options ({shown}); "
                         "rerun with the same options, or with --force to start again")


# ---------------------------------------------------------------------------------- splits
def assign_splits(entry_ids: Sequence[str], fractions: Sequence[float], seed: int) -> dict[str, str]:
    """Assign whole entries to train/val/test, deterministically from ``seed``.

    Entries are ordered by a hash of ``(seed, id)`` (independent of discovery order) and the
    first ``n_train`` go to train, the next ``n_val`` to val, the rest to test. Counts follow
    ``fractions`` by largest remainders; every split with a non-zero fraction gets at least
    one entry when there are enough entries.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"split fractions must be three non-negative numbers, got {fractions}")
    total = float(sum(fractions))
    fr = [f / total for f in fractions]
    n = len(entry_ids)
    raw = [f * n for f in fr]
    counts = [int(np.floor(r)) for r in raw]
    for i in sorted(range(3), key=lambda i: (-(raw[i] - counts[i]), i))[: n - sum(counts)]:
        counts[i] += 1
    nonzero = [i for i in range(3) if fr[i] > 0]
    if n >= len(nonzero):
        for i in nonzero:
            if counts[i] == 0:
                j = max(range(3), key=lambda k: counts[k])
                counts[j] -= 1
                counts[i] += 1
    order = sorted(entry_ids, key=lambda e: hashlib.sha256(f"split:{seed}:{e}".encode()).hexdigest())
    out: dict[str, str] = {}
    start = 0
    for name, c in zip(SPLITS, counts):
        for e in order[start:start + c]:
            out[e] = name
        start += c
    return out


# -------------------------------------------------------------------------------- assembly
@dataclass
class AssemblyResult:
    n_samples: int
    n_entries: int
    n_rejected: int
    splits: dict[str, int]


def assemble(outdir: Path, order: Sequence[str], options: dict, split_fractions: Sequence[float], seed: int,
             apix: float, box: int, previous: "Corpus | None" = None) -> AssemblyResult:
    """Write volumes.npy, metadata.csv, rejected.csv and corpus.json from the shards.

    ``order``: every entry id of the source in output order. Entries come from their shard,
    or from ``previous`` (the finished store being resumed). Entries with neither are
    missing: a RuntimeError (the caller processes every entry first).
    """
    outdir = Path(outdir)
    wd = WorkDir(outdir)
    kept: list[tuple[str, Any]] = []   # (entry_id, source)
    rejected_rows: list[dict] = []
    prev_rows: dict[str, list[dict]] = {}
    prev_rejected: dict[str, dict] = {}
    if previous is not None:
        for row in previous.metadata_rows():
            prev_rows.setdefault(row["entry_id"], []).append(row)
        for row in _read_csv_rows(previous.path / "rejected.csv") if (previous.path / "rejected.csv").exists() else []:
            prev_rejected[row["entry_id"]] = row
    missing = []
    for eid in order:
        key = shard_key(eid)
        if (wd.kept / f"{key}.json").exists():
            kept.append((eid, ("shard", key)))
        elif (wd.rejected / f"{key}.json").exists():
            rejected_rows.append(json.loads((wd.rejected / f"{key}.json").read_text()))
        elif eid in prev_rows:
            kept.append((eid, ("previous", prev_rows[eid])))
        elif eid in prev_rejected:
            rejected_rows.append(prev_rejected[eid])
        else:
            missing.append(eid)
    if missing:
        raise RuntimeError(f"assemble: {len(missing)} entries have no result yet (e.g. {missing[0]})")

    # rows and sample counts
    entries_rows: list[tuple[str, list[dict], Any]] = []
    for eid, (kind, src) in kept:
        if kind == "shard":
            rows = json.loads((wd.kept / f"{src}.json").read_text())["rows"]
        else:
            rows = [dict(r) for r in src]
        entries_rows.append((eid, rows, (kind, src)))
    n_total = sum(len(r) for _, r, _ in entries_rows)
    splits = assign_splits([e for e, _, _ in entries_rows], split_fractions, seed)

    from numpy.lib.format import open_memmap

    meta_rows: list[dict] = []

    def write_volumes(tmp: Path) -> None:
        arr = open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n_total, box, box, box))
        i = 0
        for eid, rows, (kind, src) in entries_rows:
            if kind == "shard":
                vols = np.load(wd.kept / f"{src}.npy", mmap_mode="r")
            else:
                vols = previous.volumes[[int(r["index"]) for r in src]]  # type: ignore[union-attr]
            if vols.shape[1:] != (box, box, box) or len(vols) != len(rows):
                raise RuntimeError(f"assemble: shard of {eid} has shape {vols.shape}, {len(rows)} rows")
            arr[i:i + len(rows)] = vols
            for k, row in enumerate(rows):
                row = dict(row)
                row["index"] = i + k
                row["split"] = splits[eid]
                meta_rows.append(row)
            i += len(rows)
        arr.flush()
        del arr

    write_atomic(outdir / "volumes.npy", write_volumes)
    write_text_atomic(outdir / "metadata.csv", _csv_text(METADATA_COLUMNS, meta_rows))
    write_text_atomic(outdir / "rejected.csv", _csv_text(REJECTED_COLUMNS, rejected_rows))
    split_sizes = {s: sum(1 for v in splits.values() if v == s) for s in SPLITS}
    info = {
        "format": FORMAT, "version": VERSION, "apix": apix, "box": box, "n_samples": n_total,
        "n_entries": len(entries_rows), "n_rejected": len(rejected_rows), "split_entries": split_sizes,
        "options": options,
    }
    write_text_atomic(outdir / "corpus.json", json.dumps(info, indent=1, sort_keys=True) + "\n")
    return AssemblyResult(n_total, len(entries_rows), len(rejected_rows), split_sizes)


# ---------------------------------------------------------------------------------- reader
class Corpus:
    """A finished corpus store, opened lazily.

    ``corpus.volumes`` is a read-only memory map ``(N, box, box, box)`` float32 (opened on
    first use, and again after pickling, so a Corpus can go to DataLoader workers);
    ``corpus.metadata`` a pandas DataFrame (one row per sample, in store order);
    ``corpus.indices("train")`` the sample rows of a split.
    """

    def __init__(self, path: Path | str):
        path = Path(path)
        if path.is_file() and path.name in ("corpus.json", "volumes.npy", "metadata.csv"):
            path = path.parent
        self.path = path
        info_path = path / "corpus.json"
        if not info_path.is_file():
            raise InputError(f"{path}: not a finished cryovox corpus (no corpus.json); make one with cryovox curate")
        try:
            self.info = json.loads(info_path.read_text())
        except ValueError as err:
            raise InputError(f"{info_path}: unreadable ({err})") from None
        if self.info.get("format") != FORMAT:
            raise InputError(f"{info_path}: not a cryovox corpus (format {self.info.get('format')!r})")
        self.apix = float(self.info["apix"])
        self.box = int(self.info["box"])
        self._volumes: np.ndarray | None = None
        self._metadata = None

    @property
    def volumes(self) -> np.ndarray:
        if self._volumes is None:
            p = self.path / "volumes.npy"
            try:
                vols = np.load(p, mmap_mode="r")
            except (OSError, ValueError) as err:
                raise InputError(f"{p}: unreadable ({err})") from None
            if vols.ndim != 4 or vols.shape[1:] != (self.box,) * 3 or vols.dtype != np.float32:
                raise InputError(f"{p}: shape {vols.shape} {vols.dtype}; expected (N, {self.box}, {self.box}, "
                                 f"{self.box}) float32")
            self._volumes = vols
        return self._volumes

    @property
    def metadata(self):
        if self._metadata is None:
            import pandas as pd

            self._metadata = pd.read_csv(self.path / "metadata.csv", keep_default_na=False, na_values=[""])
        return self._metadata

    def metadata_rows(self) -> list[dict[str, str]]:
        """metadata.csv rows as strings (exactly as written)."""
        return _read_csv_rows(self.path / "metadata.csv")

    def rejected(self):
        import pandas as pd

        return pd.read_csv(self.path / "rejected.csv", keep_default_na=False)

    def indices(self, split: str | Sequence[str] | None = None) -> np.ndarray:
        """Sample rows of one split (or several, or all with None), ascending."""
        if split is None:
            return np.arange(len(self))
        names = [split] if isinstance(split, str) else list(split)
        bad = [s for s in names if s not in SPLITS]
        if bad:
            raise InputError(f"split {bad[0]!r}: expected one of {', '.join(SPLITS)}")
        return np.flatnonzero(self.metadata["split"].isin(names).to_numpy())

    def __len__(self) -> int:
        return int(self.info["n_samples"])

    def __getitem__(self, i: int) -> np.ndarray:
        """Sample ``i`` as a float32 ``(box, box, box)`` array (a copy)."""
        return np.array(self.volumes[i], dtype=np.float32)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_volumes"] = None  # re-opened in the receiving process
        return state

    def __repr__(self) -> str:
        return f"Corpus({str(self.path)!r}, n={len(self)}, box={self.box}, apix={self.apix})"


def open_corpus(path: Path | str) -> Corpus:
    """Open a finished store (the folder, or its corpus.json)."""
    return Corpus(path)


def file_sha256(path: Path | str, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes (for checksums of stores)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
