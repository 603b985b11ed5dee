"""Small synthetic test maps shared by several test files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np


def gaussian_blobs(D: int, seed: int = 0, n: int = 4, sigma: float = 2.0) -> np.ndarray:
    """``n`` Gaussian blobs (width ``sigma`` px, amplitudes 0.5–1.5) within ``D/5`` px of the centre
    voxel of a ``(D, D, D)`` float64 map: smooth (negligible power at Nyquist) and off-centre."""
    g = np.random.default_rng(seed)
    zz, yy, xx = np.mgrid[:D, :D, :D] - D // 2
    v = np.zeros((D, D, D))
    for _ in range(n):
        c = g.uniform(-D / 5, D / 5, 3)
        v += g.uniform(0.5, 1.5) * np.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2 + (zz - c[2]) ** 2) / (2 * sigma ** 2))
    return v


def blob_corpus(path: Path, n: int = 12, D: int = 16, apix: float = 4.0) -> tuple[np.ndarray, list[str]]:
    """A minimal finished corpus store (the format of cryovox.io.corpus) at ``path``: ``n`` curate-like
    zero-mean, unit-variance blob maps (``n − 4`` train, 2 val, 2 test). Returns the maps and splits."""
    path = Path(path)
    path.mkdir()
    vols = np.stack([gaussian_blobs(D, seed=i, n=5, sigma=1.6) for i in range(n)])
    vols = (vols - vols.mean((1, 2, 3), keepdims=True)) / vols.std((1, 2, 3), keepdims=True)
    np.save(path / "volumes.npy", vols.astype(np.float32))
    splits = ["train"] * (n - 4) + ["val"] * 2 + ["test"] * 2
    with open(path / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["index", "entry_id", "rotation", "split"])
        for i, s in enumerate(splits):
            w.writerow([i, f"EMD-{i}", 0, s])
    (path / "rejected.csv").write_text("entry_id,category,reason,header,map\n")
    (path / "corpus.json").write_text(json.dumps({"format": "cryovox-corpus", "version": 1, "apix": apix, "box": D,
                                                  "n_samples": n}))
    return vols.astype(np.float32), splits
