"""Explore a trained latent space (``cryovox analyze``), as cryoDRGN's ``analyze`` does.

For epoch ``N`` of a train-hetero directory, writes into ``OUTDIR/analyze.N/``:

* ``z_pca.png`` (PC1 vs PC2 of the latent means, coloured by k-means class), ``z_umap.png``
  (UMAP with umap-learn; with fewer than :data:`UMAP_MIN` particles UMAP is not meaningful and the
  PCA coordinates are used instead, said in the log), ``umap.npy``, ``pca.npy`` and
  ``pca_explained_variance.txt``;
* ``kmeans{K}/``: k-means (scikit-learn, ``K = ksample``, ``seed``) of ``z``; each centre is
  replaced by the particle whose ``z`` lies closest to it (so every decoded map is a state some
  particle has, cryoDRGN's choice), decoded to ``vol_{i:03d}.mrc`` at the particles' pixel
  size; ``labels.pkl`` (class per particle), ``centers.txt`` (their ``z``),
  ``centers_ind.txt`` (their particle rows) and ``particles_class{i:02d}.star`` (RELION 3.1, the
  input particles of class ``i``, for taking subsets back to RELION);
* ``pc1/``, ``pc2/``: ``pc_steps`` maps along each principal component through the mean of
  ``z``, from its 5th to its 95th percentile (``z_values.txt`` lists the points).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cryovox.errors import InputError

log = logging.getLogger("cryovox")

UMAP_MIN = 20


@dataclass
class AnalyzeResult:
    outdir: Path
    epoch: int
    n: int
    ksample: int
    explained: np.ndarray
    umap_used: bool
    files: dict[str, object] = field(default_factory=dict)
    seconds: float = 0.0

    def summary(self) -> str:
        ev = ", ".join(f"{100 * v:.0f}%" for v in self.explained[:2])
        return (f"analysed epoch {self.epoch}: {self.n} particles, PCA ({ev} of the variance in PC1, PC2), "
                f"{'UMAP' if self.umap_used else 'no UMAP (too few particles)'}, {self.ksample} k-means "
                f"maps and STAR files, PC traversals → {self.outdir}")


def _scatter_png(path: Path, xy: np.ndarray, labels: np.ndarray | None, xlabel: str, ylabel: str,
                 title: str) -> Path:
    from cryovox.utils.files import write_atomic

    def plot(tmp: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 5), dpi=120)
        size = max(2.0, min(12.0, 20000.0 / max(1, len(xy))))
        if labels is None:
            ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.5, lw=0, color="C0")
        else:
            from matplotlib.colors import BoundaryNorm

            k = int(labels.max()) + 1
            cmap = plt.get_cmap("tab20" if k > 10 else "tab10", k)
            norm = BoundaryNorm(np.arange(k + 1) - 0.5, k)
            sc = ax.scatter(xy[:, 0], xy[:, 1], s=size, alpha=0.6, lw=0, c=labels, cmap=cmap, norm=norm)
            cb = fig.colorbar(sc, ax=ax, label="k-means class", fraction=0.046, pad=0.04)
            cb.set_ticks(np.arange(k) if k <= 20 else np.linspace(0, k - 1, 11).round())
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=9)
        fig.tight_layout()
        fig.savefig(tmp, format="png")
        plt.close(fig)

    return write_atomic(path, plot)


def _embed_2d(z: np.ndarray, pca2: np.ndarray, seed: int) -> tuple[np.ndarray, bool]:
    """UMAP of ``z`` (2D), or the PCA coordinates when there are too few particles or ``zdim == 1``."""
    n, zdim = z.shape
    if n < UMAP_MIN or zdim < 2:
        log.info("UMAP skipped (%d particles, zdim %d): the PCA coordinates stand in for it", n, zdim)
        return pca2, False
    import warnings

    import umap

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reducer = umap.UMAP(n_components=2, n_neighbors=min(15, n - 1), random_state=seed)
        return reducer.fit_transform(z).astype(np.float32), True


def pc_traversal(z: np.ndarray, pca, component: int, steps: int) -> np.ndarray:
    """``steps`` latent points along principal axis ``component`` (0-based) through the mean of ``z``,
    from the 5th to the 95th percentile of the particles' coordinates on that axis."""
    coords = pca.transform(z)[:, component]
    lo, hi = np.percentile(coords, [5, 95])
    t = np.linspace(lo, hi, steps)
    return (pca.mean_[None] + t[:, None] * pca.components_[component][None]).astype(np.float32)


def analyze(outdir: Path | str, dest: Path | None = None, *, epoch: int | None = None, ksample: int = 20,
            pc_steps: int = 10, seed: int = 0, device="cpu") -> AnalyzeResult:
    """Analyse epoch ``epoch`` (default: the last) of a train-hetero directory; see the module docstring.

    dest: output folder (default ``outdir/analyze.N``, made by the caller or here).
    """
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA

    from cryovox.io.particles import read_particles, write_star
    from cryovox.io.pickles import write_pickle
    from cryovox.pipelines.eval_vol import load_run, write_volumes
    from cryovox.utils.files import write_atomic, write_text_atomic

    if ksample < 1:
        raise InputError(f"--ksample {ksample}: at least one k-means class is needed")
    if pc_steps < 2:
        raise InputError(f"--pc-steps {pc_steps}: at least 2 points per traversal are needed")
    t0 = time.monotonic()
    run = load_run(outdir, epoch, device)
    z, model = run.z, run.model
    n, zdim = z.shape
    if n < 2:
        raise InputError(f"{run.path}: {n} particle(s); analysis needs at least 2")
    train = run.state.get("train", {})
    table = None
    if train.get("particles"):
        src = Path(train["particles"])
        if not src.exists():
            raise InputError(f"{src}: the training particles are gone; per-class STAR files need them")
        table = read_particles(src, datadir=train.get("datadir"), poses=train.get("poses"), ctf=train.get("ctf"))
        if len(table) != n:
            raise InputError(f"{src}: {len(table)} particles, but z.{run.epoch}.pkl has {n}")
    dest = Path(dest) if dest is not None else Path(outdir) / f"analyze.{run.epoch}"
    dest.mkdir(parents=True, exist_ok=True)
    files: dict[str, object] = {}

    # PCA and UMAP
    ncomp = min(zdim, n)
    pca = PCA(n_components=ncomp, random_state=seed).fit(z)
    pcs = pca.transform(z).astype(np.float32)
    pca2 = pcs[:, :2] if ncomp >= 2 else np.concatenate([pcs[:, :1], np.zeros((n, 1), np.float32)], 1)
    write_atomic(dest / "pca.npy", lambda p: np.save(p, pcs))
    write_text_atomic(dest / "pca_explained_variance.txt",
                      "\n".join(f"PC{i + 1} {v:.6g}" for i, v in enumerate(pca.explained_variance_ratio_)) + "\n")
    emb, used_umap = _embed_2d(z, pca2, seed)
    write_atomic(dest / "umap.npy", lambda p: np.save(p, emb))

    # k-means on z, centres moved onto the nearest particle
    k = min(ksample, n)
    if k < ksample:
        log.info("--ksample %d: only %d particles, using %d classes", ksample, n, k)
    km = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(z)
    labels = km.labels_.astype(np.int64)
    d2 = ((z[None, :, :] - km.cluster_centers_[:, None, :].astype(np.float32)) ** 2).sum(-1) if n * k < 5e7 else None
    if d2 is None:
        centers_ind = np.array([int(np.argmin(((z - c[None]) ** 2).sum(-1))) for c in km.cluster_centers_])
    else:
        centers_ind = np.argmin(d2, axis=1)
    centers = z[centers_ind]
    kdir = dest / f"kmeans{k}"
    kdir.mkdir(exist_ok=True)
    write_pickle(kdir / "labels.pkl", labels)
    write_text_atomic(kdir / "centers.txt", "\n".join(" ".join(f"{v:.6g}" for v in row) for row in centers) + "\n")
    write_text_atomic(kdir / "centers_ind.txt", "\n".join(str(int(i)) for i in centers_ind) + "\n")
    files["kmeans_maps"] = write_volumes(model, centers, [kdir / f"vol_{i:03d}.mrc" for i in range(k)], device=device)
    if table is not None:
        files["kmeans_star"] = [write_star(kdir / f"particles_class{i:02d}.star", table.take(labels == i))
                                for i in range(k)]
        table.close()

    title = f"epoch {run.epoch}, {n} particles"
    files["pca_png"] = _scatter_png(dest / "z_pca.png", pca2, labels, "PC1", "PC2" if ncomp >= 2 else "(zdim 1)",
                                    f"latent PCA ({title})")
    files["umap_png"] = _scatter_png(dest / "z_umap.png", emb, labels, "UMAP1" if used_umap else "PC1",
                                     "UMAP2" if used_umap else "PC2", f"latent {'UMAP' if used_umap else 'PCA'} "
                                     f"({title})")

    # principal-component traversals
    for c in range(min(2, ncomp)):
        pdir = dest / f"pc{c + 1}"
        pdir.mkdir(exist_ok=True)
        pts = pc_traversal(z, pca, c, pc_steps)
        write_text_atomic(pdir / "z_values.txt", "\n".join(" ".join(f"{v:.6g}" for v in row) for row in pts) + "\n")
        files[f"pc{c + 1}_maps"] = write_volumes(model, pts, [pdir / f"vol_{i:03d}.mrc" for i in range(pc_steps)],
                                                 device=device)
    return AnalyzeResult(outdir=dest, epoch=run.epoch, n=n, ksample=k, explained=pca.explained_variance_ratio_,
                         umap_used=used_umap, files=files, seconds=time.monotonic() - t0)
