"""analyze and eval-vol on a small trained model, checked against NumPy/scikit-learn recomputations."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cryovox.cli import main
from cryovox.io.checkpoint import load_checkpoint, save_checkpoint
from cryovox.io.mrc import read_map
from cryovox.io.particles import read_particles
from cryovox.models import model_from_checkpoint
from tests.models.hetero_data import make_two_state_set

N, EPOCHS = 120, 2


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("analyze")
    data = make_two_state_set(root / "data", box=16, n=N, snr=0.5, apix=4.0)
    out = root / "run"
    assert main(["train-hetero", str(data["star"]), "-o", str(out), "-n", str(EPOCHS), "--zdim", "2",
                 "--batch-size", "24", "--basis", "2", "--device", "cpu"]) == 0
    return out, data


def _model_and_z(run, epoch=EPOCHS):
    state = load_checkpoint(run / f"weights.{epoch}.pt")
    z = pickle.load(open(run / f"z.{epoch}.pkl", "rb"))
    return model_from_checkpoint(state).eval(), z


def _decode(model, z) -> np.ndarray:
    with torch.no_grad():
        return model.decode_volume(torch.as_tensor(np.asarray(z, np.float32)).reshape(1, -1))[0].numpy()


@pytest.fixture(scope="module")
def analysed(trained):
    run, data = trained
    assert main(["analyze", str(run), "--ksample", "3", "--pc-steps", "3"]) == 0
    return run / f"analyze.{EPOCHS}"


def test_pca_and_umap(analysed, trained):
    run, _ = trained
    _, z = _model_and_z(run)
    pcs = np.load(analysed / "pca.npy")
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc.astype(np.float64), full_matrices=False)
    np.testing.assert_allclose(np.abs(pcs), np.abs(zc @ vt.T), atol=1e-4)  # PCs up to sign
    emb = np.load(analysed / "umap.npy")
    assert emb.shape == (N, 2) and np.isfinite(emb).all()
    assert not np.allclose(np.abs(emb), np.abs(pcs[:, :2]), atol=1e-3)  # a UMAP, not the PCA fallback
    for png in ("z_pca.png", "z_umap.png"):
        assert (analysed / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kmeans_maps_and_star_files(analysed, trained):
    run, data = trained
    model, z = _model_and_z(run)
    labels = pickle.load(open(analysed / "kmeans3" / "labels.pkl", "rb"))
    ind = np.loadtxt(analysed / "kmeans3" / "centers_ind.txt", dtype=int)
    assert sorted(np.unique(labels)) == [0, 1, 2]
    table = read_particles(data["star"])
    for i in range(3):
        centre = z[labels == i].mean(0)
        assert ind[i] == np.argmin(((z - centre) ** 2).sum(1))  # the particle nearest the class mean
        sub = read_particles(analysed / "kmeans3" / f"particles_class{i:02d}.star")
        np.testing.assert_array_equal(sub.image_index, table.image_index[labels == i])
        np.testing.assert_allclose(sub.euler, table.euler[labels == i], atol=1e-6)
        m = read_map(analysed / "kmeans3" / f"vol_{i:03d}.mrc")
        assert m.apix == pytest.approx(4.0) and m.data.shape == (16, 16, 16)
        np.testing.assert_allclose(m.data, _decode(model, z[ind[i]]), atol=1e-6)


def test_pc_traversal_follows_the_first_principal_axis(analysed, trained):
    run, _ = trained
    _, z = _model_and_z(run)
    pts = np.loadtxt(analysed / "pc1" / "z_values.txt")
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc.astype(np.float64), full_matrices=False)
    coords = zc @ vt[0]
    t = (pts - z.mean(0)) @ vt[0]
    np.testing.assert_allclose(np.sort(t), np.percentile(coords, [5, 50, 95]) if False else
                               np.sort(np.linspace(*np.percentile(coords, [5, 95]), 3)), atol=1e-4)
    np.testing.assert_allclose(pts - z.mean(0), np.outer(t, vt[0]), atol=1e-4)
    assert len(list((analysed / "pc2").glob("vol_*.mrc"))) == 3


def test_analyze_few_particles_falls_back_to_pca(tmp_path, cli):
    data = make_two_state_set(tmp_path / "data", box=12, n=12, snr=1.0)
    run = tmp_path / "run"
    assert main(["train-hetero", str(data["star"]), "-o", str(run), "-n", "1", "--zdim", "2", "--basis", "2",
                 "--batch-size", "6", "--device", "cpu"]) == 0
    res = cli("analyze", run, "--ksample", "20", "--pc-steps", "2")
    assert res.code == 0, res
    out = run / "analyze.1"
    np.testing.assert_array_equal(np.load(out / "umap.npy"), np.load(out / "pca.npy")[:, :2])
    assert "UMAP skipped" in (out / "run.log").read_text()
    assert len(list((out / "kmeans12").glob("vol_*.mrc"))) == 12  # --ksample capped at the particle count


def test_eval_vol_points_flip_lowpass_and_traversal(trained, tmp_path, cli):
    run, _ = trained
    model, z = _model_and_z(run)
    point = [0.3, -0.7]
    assert cli("eval-vol", run, "-z", "0.3,-0.7", "-o", tmp_path / "a.mrc").code == 0
    a = read_map(tmp_path / "a.mrc")
    assert a.apix == pytest.approx(4.0)
    np.testing.assert_allclose(a.data, _decode(model, point), atol=1e-6)
    assert cli("eval-vol", run, "-z", "0.3 -0.7", "--flip", "-o", tmp_path / "f.mrc").code == 0
    np.testing.assert_allclose(read_map(tmp_path / "f.mrc").data, a.data[::-1], atol=1e-6)
    # low-pass at 16 Å on a 16-px, 4 Å/px box: cut-off radius 4 Fourier pixels, cosine edge to 6
    assert cli("eval-vol", run, "-z", "0.3,-0.7", "--lowpass", "16", "-o", tmp_path / "l.mrc").code == 0
    low = read_map(tmp_path / "l.mrc").data
    F, G = (np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(v))) for v in (a.data, low))
    k = np.arange(16) - 8
    r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
    np.testing.assert_allclose(G[r <= 4], F[r <= 4], atol=1e-4 * np.abs(F).max())
    assert np.abs(G[r >= 6]).max() < 1e-4 * np.abs(F).max()
    # traversal between particles 3 and 10
    assert cli("eval-vol", run, "--traversal", "3", "10", "4", "-o", tmp_path / "trav").code == 0
    pts = np.loadtxt(tmp_path / "trav" / "z_values.txt")
    np.testing.assert_allclose(pts[0], z[3], atol=1e-5)
    np.testing.assert_allclose(pts[-1], z[10], atol=1e-5)
    np.testing.assert_allclose(read_map(tmp_path / "trav" / "vol_003.mrc").data, _decode(model, z[10]), atol=1e-6)
    # a z file with two points
    np.savetxt(tmp_path / "z.txt", np.array([point, [1.0, 1.0]]))
    assert cli("eval-vol", run, "--zfile", tmp_path / "z.txt", "-o", tmp_path / "zf").code == 0
    np.testing.assert_allclose(read_map(tmp_path / "zf" / "vol_001.mrc").data, _decode(model, [1.0, 1.0]),
                               atol=1e-6)


def test_eval_vol_and_analyze_bad_input(trained, tmp_path, cli):
    run, _ = trained
    res = cli("eval-vol", run, "-z", "0.3,0.1,0.2", "-o", tmp_path / "x.mrc")
    assert res.code == 2 and "latent dimension is 2" in res.err and res.err.strip().count("\n") == 0
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other / "weights.0.pt", {"model": {}, "config": {}}, kind="flow")
    res = cli("analyze", other)
    assert res.code == 2 and "checkpoint of a flow model" in res.err and res.err.strip().count("\n") == 0
    res = cli("eval-vol", other, "-z", "0,0", "-o", tmp_path / "y.mrc")
    assert res.code == 2 and "checkpoint of a flow model" in res.err
    assert not (tmp_path / "y.mrc").exists()
