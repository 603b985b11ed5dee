"""``cryovox embed``: latent vectors of maps under a trained Cryo-SWAN model, a UMAP of them, and
each map's nearest neighbours in latent space (the paper's "hubs").

Latent vector of a map: its latent grids (every level; by default the encoder's continuous
latents before quantisation, ``latent="quantised"`` for the codebook approximations) pooled into a
rotation-invariant descriptor — per channel the mean, the standard deviation and the mean over
each spherical shell of the grid about its centre voxel (radii rounded to whole voxels, shells
0 … S/2) — and averaged over ``rotations`` orientations of the map (the identity and
``rotations − 1`` fixed random rotations, cubic B-spline resampling). A convolutional encoder is
only roughly equivariant to rotations, so the pooled vector of one orientation still depends on
it; averaging over orientations (group averaging) removes most of that dependence, so rotated
copies of a map get nearly the same vector. Columns are z-scored over the maps embedded
together; distances are Euclidean in that space. The continuous latents are the default because
snapping to the codebook adds a quantisation error that differs between orientations of one map:
on the 32³ benchmark corpus (RESULTS.md) the same-entry hit rate was 0.90 with the encoder latents
and 0.70 with the quantised ones, same model and maps.

Outputs:

- ``latents.npz``: ``vectors`` ``(N, F)`` (z-scored descriptors), ``raw`` (before z-scoring),
  ``names``, ``entry_ids`` (corpus entries, or file names), ``coords`` ``(N, 2)`` (projection);
- ``hubs.csv``: per map its ``k`` nearest other maps with distances, and its *k-occurrence*
  (how many maps list it among their k nearest: large values mark hubs);
- ``umap.png``: the 2D projection coloured by entry (UMAP; ``projection="pca"`` is the fast
  fallback for small sets or quick looks);
- ``embed.json``: counts and, when maps share entries (a corpus with rotations), the
  nearest-neighbour hit rate: the fraction of maps whose nearest neighbour is a copy of the
  same entry (maps whose entry has a single sample are left out).
"""

from __future__ import annotations

import csv
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from cryovox.errors import InputError
from cryovox.utils.files import write_atomic, write_text_atomic
from cryovox.utils.progress import Progress

log = logging.getLogger("cryovox")


def pooled_descriptor(grid: Tensor) -> Tensor:
    """Rotation-invariant pooling of latent grids ``(B, C, S, S, S)`` → ``(B, C·(2 + S//2 + 1))``.

    Per channel: mean, standard deviation, then the mean over each shell of rounded radius
    ``0 … S//2`` about voxel ``S // 2`` (voxels farther out join the last shell).
    """
    b, c, s = grid.shape[0], grid.shape[1], grid.shape[-1]
    k = torch.arange(s, device=grid.device, dtype=torch.float32) - s // 2
    r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    shell = r.round().long().clamp(max=s // 2).flatten()
    n_shell = s // 2 + 1
    flat = grid.float().flatten(2)  # (B, C, S³)
    sums = torch.zeros(b, c, n_shell, device=grid.device).index_add_(2, shell, flat)
    counts = torch.bincount(shell, minlength=n_shell).float()
    shells = sums / counts
    return torch.cat([flat.mean(-1, keepdim=True), flat.std(-1, keepdim=True), shells], -1).flatten(1)


def embedding_rotations(n: int, seed: int = 0) -> Tensor:
    """The orientations averaged over: identity then ``n − 1`` uniformly random rotations
    (fixed by ``seed``), ``(max(n, 1), 3, 3)`` float32."""
    from cryovox.core.rotations import random_rotations

    eye = torch.eye(3, dtype=torch.float64)[None]
    if n <= 1:
        return eye.float()
    rnd = random_rotations(n - 1, generator=torch.Generator().manual_seed(seed))
    return torch.cat([eye, rnd.to(torch.float64)]).float()


LATENTS = ("encoder", "quantised")


@torch.no_grad()
def descriptors(model, maps: Tensor, device, batch_size: int = 16, rotations: int = 24, seed: int = 0,
                progress: bool = True, latent: str = "encoder") -> Tensor:
    """Pooled descriptors ``(N, F)`` of normalised maps ``(N, D, D, D)``: every level's latent grid
    (``latent``: ``"encoder"`` outputs or ``"quantised"``) pooled on its own grid
    (:func:`pooled_descriptor`), concatenated, and averaged over the orientations of
    :func:`embedding_rotations`."""
    from cryovox.core.transform import rotate

    Rs = embedding_rotations(rotations, seed)
    out = []
    with Progress("embed", total=maps.shape[0], enabled=progress) as bar:
        for s in range(0, maps.shape[0], batch_size):
            x = maps[s:s + batch_size].float()
            acc = None
            for k, R in enumerate(Rs):
                xr = x if k == 0 else rotate(x, R.expand(x.shape[0], 3, 3), order=3)
                lat = model.latents(xr.to(device), quantised=latent == "quantised")
                d = torch.cat([pooled_descriptor(g) for g in lat], 1).cpu().double()
                acc = d if acc is None else acc + d
            out.append((acc / len(Rs)).float())
            bar.advance(x.shape[0])
    return torch.cat(out)


def nearest_neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact k nearest *other* rows (Euclidean): ``(indices (N, k), distances (N, k))``, nearest first."""
    from sklearn.neighbors import NearestNeighbors

    n = vectors.shape[0]
    k = min(k, n - 1)
    nn = NearestNeighbors(n_neighbors=k + 1).fit(vectors)
    dist, idx = nn.kneighbors(vectors)
    out_i = np.empty((n, k), dtype=np.int64)
    out_d = np.empty((n, k), dtype=np.float64)
    for i in range(n):  # drop the point itself (it may not be first when duplicates tie)
        keep = [j for j in range(k + 1) if idx[i, j] != i][:k]
        out_i[i], out_d[i] = idx[i, keep], dist[i, keep]
    return out_i, out_d


def hit_rate(neighbours: np.ndarray, labels: Sequence[str]) -> float | None:
    """Fraction of maps whose nearest neighbour has the same label, over maps whose label
    occurs more than once; None when no label repeats."""
    labels = np.asarray(labels)
    uniq, counts = np.unique(labels, return_counts=True)
    multi = set(uniq[counts > 1])
    rows = [i for i in range(len(labels)) if labels[i] in multi]
    if not rows:
        return None
    return float(np.mean([labels[neighbours[i, 0]] == labels[i] for i in rows]))


def project_2d(vectors: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """2D coordinates ``(N, 2)`` by UMAP (n_neighbors = min(15, N − 1)) or PCA."""
    n = vectors.shape[0]
    if n < 3:
        return np.zeros((n, 2))
    if method == "umap" and n >= 5:
        import warnings

        import umap

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return np.asarray(umap.UMAP(n_neighbors=min(15, n - 1), random_state=seed,
                                        init="random" if n < 20 else "spectral").fit_transform(vectors))
    if method not in ("umap", "pca"):
        raise InputError(f"--projection {method}: expected umap or pca")
    from sklearn.decomposition import PCA

    return PCA(n_components=2, random_state=seed).fit_transform(vectors)


@dataclass
class EmbedResult:
    outdir: Path
    n_maps: int
    dims: int
    hit_rate: float | None
    projection: str

    def summary(self) -> str:
        hr = f"; nearest-neighbour same-entry hit rate {self.hit_rate:.3f}" if self.hit_rate is not None else ""
        return f"embed: {self.n_maps} maps → {self.dims}-d latent vectors ({self.projection} map, hubs.csv){hr}"


def _load_inputs(inputs: Sequence[Path], box: int, apix: float, split: str | None):
    """Normalised maps ``(N, box³)``, names and entry labels from a corpus folder or MRC files."""
    from cryovox.io.corpus import open_corpus

    inputs = [Path(p) for p in inputs]
    if not inputs:
        raise InputError("embed: no input given (a corpus folder or one or more maps)")
    if len(inputs) == 1 and inputs[0].is_dir():
        store = open_corpus(inputs[0])
        if store.box != box or abs(store.apix - apix) > 5e-3 * apix:
            raise InputError(f"{store.path}: corpus of {store.box}³ maps at {store.apix} Å; the model takes "
                             f"{box}³ at {apix} Å")
        rows = store.indices(split)
        if len(rows) == 0:
            raise InputError(f"{store.path}: no samples in split {split}")
        meta = store.metadata
        data = torch.from_numpy(np.asarray(store.volumes[rows], dtype=np.float32))
        ids = [str(meta["entry_id"].iloc[r]) for r in rows]
        rot = [str(meta["rotation"].iloc[r]) for r in rows]
        names = [f"{e}#{r}" for e, r in zip(ids, rot)]
        return data, names, ids
    from cryovox.io.mrc import read_map
    from cryovox.pipelines.train_swan import fit_map

    maps, names = [], []
    for p in inputs:
        if p.is_dir():
            raise InputError(f"{p}: a folder is only accepted alone, as a corpus")
        md = read_map(p)
        maps.append(fit_map(md.data, md.apix, box, apix, source=str(p)).data)
        names.append(p.name)
    return torch.stack(maps), names, names


def _write_plot(path: Path, coords: np.ndarray, labels: Sequence[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    uniq = list(dict.fromkeys(labels))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    if len(uniq) <= 20 and len(uniq) < len(labels):
        cmap = plt.get_cmap("tab20")
        for k, u in enumerate(uniq):
            sel = [i for i, l in enumerate(labels) if l == u]
            ax.scatter(coords[sel, 0], coords[sel, 1], s=14, color=cmap(k % 20), label=u)
        ax.legend(fontsize=6, markerscale=0.8, frameon=False, loc="best")
    else:
        codes = {u: i for i, u in enumerate(uniq)}
        ax.scatter(coords[:, 0], coords[:, 1], s=10, c=[codes[l] for l in labels], cmap="tab20")
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120))
    finally:
        plt.close(fig)


def run(model: Path, inputs: Sequence[Path], outdir: Path, *, neighbors: int = 5, device: str = "auto",
        split: str | None = None, projection: str = "umap", rotations: int = 24, batch_size: int = 16,
        seed: int = 0, progress: bool = True, latent: str = "encoder") -> EmbedResult:
    """Embed maps with a ``model.pt`` from train-swan; outputs in ``outdir`` (module docstring).

    inputs: one corpus folder (all samples, or those of ``split``) or MRC maps (resampled to
    the model's pixel size, cropped/padded to its box, normalised); neighbors: k of the hubs
    table; projection: ``umap`` or ``pca``; rotations: orientations averaged per map (1 = none);
    latent: ``encoder`` (continuous latents, the default) or ``quantised`` (module docstring).
    """
    from cryovox.pipelines.train_swan import load_model
    from cryovox.utils.runtime import resolve_device

    if neighbors < 1:
        raise InputError(f"--neighbors {neighbors}: must be ≥ 1")
    if rotations < 1:
        raise InputError(f"--rotations {rotations}: must be ≥ 1")
    if projection not in ("umap", "pca"):
        raise InputError(f"--projection {projection}: expected umap or pca")
    if latent not in LATENTS:
        raise InputError(f"--latent {latent}: expected encoder or quantised")
    dev = resolve_device(device)
    ae, state = load_model(model, dev)
    maps, names, labels = _load_inputs(inputs, int(state["box"]), float(state["apix"]), split)
    if maps.shape[0] < 2:
        raise InputError("embed: at least two maps are needed to find neighbours")
    raw = descriptors(ae, maps, dev, batch_size=batch_size, rotations=rotations, seed=seed,
                      progress=progress, latent=latent).numpy().astype(np.float64)
    mu, sd = raw.mean(0), raw.std(0)
    vec = (raw - mu) / np.where(sd > 1e-12, sd, 1.0)
    k = min(neighbors, len(names) - 1)
    nbr, dist = nearest_neighbours(vec, k)
    occurrence = np.bincount(nbr.flatten(), minlength=len(names))
    coords = project_2d(vec, projection, seed)
    hr = hit_rate(nbr, labels)

    outdir = Path(outdir)
    write_atomic(outdir / "latents.npz", lambda p: np.savez(p, vectors=vec.astype(np.float32),
                                                             raw=raw.astype(np.float32), names=np.array(names),
                                                             entry_ids=np.array(labels), coords=coords))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    head = ["index", "name", "entry_id", "k_occurrence"]
    for j in range(k):
        head += [f"neighbor_{j + 1}", f"distance_{j + 1}"]
    w.writerow(head)
    for i in range(len(names)):
        row = [i, names[i], labels[i], int(occurrence[i])]
        for j in range(k):
            row += [names[nbr[i, j]], f"{dist[i, j]:.6g}"]
        w.writerow(row)
    write_text_atomic(outdir / "hubs.csv", buf.getvalue())
    _write_plot(outdir / "umap.png", coords, labels, f"{projection.upper()} of {len(names)} latent vectors")
    top = np.argsort(-occurrence)[:5]
    info = {"n_maps": len(names), "dims": int(vec.shape[1]), "neighbors": k, "projection": projection,
            "rotations_averaged": max(1, rotations), "latent": latent,
            "nn_hit_rate": hr, "top_hubs": [{"name": names[i], "k_occurrence": int(occurrence[i])} for i in top]}
    write_text_atomic(outdir / "embed.json", json.dumps(info, indent=1) + "\n")
    return EmbedResult(outdir, len(names), int(vec.shape[1]), hr, projection)
