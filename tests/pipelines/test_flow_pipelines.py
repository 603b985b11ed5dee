"""train-flow, denoise, inpaint-wedge, abinitio, generate: tiny end-to-end runs and their invariants."""

import csv
import json

import numpy as np
import pytest
import torch

from cryovox.core.degrade import add_noise, apply_fourier_mask, project_maps, radial_power_grid, wedge_mask
from cryovox.core.fft import fftn_c
from cryovox.core.fsc import fsc, fsc_auc
from cryovox.core.rotations import euler_to_matrix, geodesic_distance
from cryovox.io.mrc import read_map, write_map, write_stack
from tests.synthetic import blob_corpus as make_corpus, gaussian_blobs

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def blob_map(D, seed, n=5, sigma=1.6):
    return gaussian_blobs(D, seed=seed, n=n, sigma=sigma).astype(np.float32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny U-Net prior trained for 2 epochs (shared by the sampling tests)."""
    from cryovox.pipelines import train_flow

    root = tmp_path_factory.mktemp("flow")
    vols, splits = make_corpus(root / "corpus")
    res = train_flow.run(root / "corpus", root / "prior", arch="unet", preset="tiny", epochs=2, batch_size=4,
                         lr=2e-3, warmup=1, device="cpu", seed=3)
    return root, vols, splits, res


def test_train_flow_outputs_and_dataset_normalisation(trained):
    root, vols, splits, res = trained
    rows = list(csv.DictReader(open(root / "prior" / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2] and int(rows[-1]["step"]) == 4
    assert all(np.isfinite(float(r["train_loss"])) and np.isfinite(float(r["val_loss"])) for r in rows)
    from cryovox.pipelines.flow_sample import load_prior

    prior = load_prior(root / "prior" / "prior.pt")
    assert (prior.box, prior.apix, prior.arch) == (16, 4.0, "unet")
    # oracle for the stored dataset statistics: background = median outside 0.45 D, clip at the
    # 99.999th percentile, over the training maps, with numpy
    vals = []
    for v, s in zip(vols, splits):
        if s != "train":
            continue
        D = v.shape[0]
        k = np.arange(D) - D // 2
        r = np.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + k[None, None, :] ** 2)
        bg = np.median(v[r > 0.45 * D])
        q = np.quantile((v - bg).astype(np.float64), 0.99999)
        vals.append(np.clip((v - bg) / q, 0, 1))
    vals = np.stack(vals)
    assert prior.norm.mean == pytest.approx(vals.mean(), rel=1e-4)
    assert prior.norm.std == pytest.approx(vals.std(), rel=1e-4)


def test_train_flow_resume_is_exact(tmp_path):
    from cryovox.io.checkpoint import load_checkpoint
    from cryovox.pipelines import train_flow

    make_corpus(tmp_path / "c", n=8)
    kw = dict(arch="unet", preset="tiny", batch_size=4, lr=1e-3, warmup=1, device="cpu", seed=5)
    train_flow.run(tmp_path / "c", tmp_path / "a", epochs=2, **kw)
    train_flow.run(tmp_path / "c", tmp_path / "b", epochs=1, **kw)
    train_flow.run(tmp_path / "c", tmp_path / "b", epochs=2, resume=True, **kw)
    a = load_checkpoint(tmp_path / "a" / "prior.pt")["weights"]
    b = load_checkpoint(tmp_path / "b" / "prior.pt")["weights"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_cli_repeatable(trained, cli, tmp_path):
    root = trained[0]
    r1 = cli("generate", "--prior", root / "prior" / "prior.pt", "-n", 2, "--steps", 4, "-o", tmp_path / "g1",
             "--device", "cpu", "--seed", 7)
    assert r1.code == 0, r1
    r2 = cli("generate", "--prior", root / "prior" / "prior.pt", "-n", 2, "--steps", 4, "-o", tmp_path / "g2",
             "--device", "cpu", "--seed", 7)
    assert r2.code == 0, r2
    a, b = read_map(tmp_path / "g1" / "sample_001.mrc"), read_map(tmp_path / "g2" / "sample_001.mrc")
    assert a.apix == pytest.approx(4.0) and a.data.shape == (16, 16, 16)
    assert np.array_equal(a.data, b.data)
    s0 = read_map(tmp_path / "g1" / "sample_000.mrc").data
    std = read_map(tmp_path / "g1" / "samples_std.mrc").data
    assert np.allclose(std, np.std(np.stack([s0, a.data]), axis=0, ddof=1), atol=1e-5)


def _half_maps(tmp_path, D=16, seed=0, apix=4.0):
    truth = blob_map(D, 100 + seed)
    g = torch.Generator().manual_seed(seed)
    power = radial_power_grid(torch.linspace(0.05, 0.6, D // 2 + 1) * D ** 3, D, dtype=torch.float64)
    t = torch.from_numpy(truth).double()
    h1, h2 = add_noise(t, power, g), add_noise(t, power, g)
    origin = (10.0, -4.0, 2.0)
    write_map(tmp_path / "h1.mrc", h1, apix, origin=origin)
    write_map(tmp_path / "h2.mrc", h2, apix, origin=origin)
    return truth, h1, h2


def test_denoise_cli_outputs_noise_table_and_samples(trained, cli, tmp_path):
    root = trained[0]
    truth, h1, h2 = _half_maps(tmp_path)
    res = cli("denoise", "--half1", tmp_path / "h1.mrc", "--half2", tmp_path / "h2.mrc", "--prior",
              root / "prior" / "prior.pt", "-o", tmp_path / "out", "--steps", 8, "--samples", 2, "--device", "cpu",
              "--halves", "separate")
    assert res.code == 0, res
    out = read_map(tmp_path / "out" / "denoised.mrc")
    assert out.apix == pytest.approx(4.0) and out.origin == pytest.approx((10.0, -4.0, 2.0))
    std = read_map(tmp_path / "out" / "denoised_std.mrc").data
    assert std.shape == (16, 16, 16) and std.mean() > 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "noise.csv")))
    expected = fsc(h1, h2)
    assert np.allclose([float(r["fsc"]) for r in rows], expected.numpy(), atol=1e-5)
    # the posterior is pulled to the data: closer to the truth than an unconditional sample
    gen = cli("generate", "--prior", root / "prior" / "prior.pt", "--steps", 8, "-o", tmp_path / "free",
              "--device", "cpu")
    assert gen.code == 0
    t = torch.from_numpy(truth)
    free = torch.from_numpy(read_map(tmp_path / "free" / "sample_000.mrc").data)
    assert fsc_auc(fsc(torch.from_numpy(out.data), t)) > fsc_auc(fsc(free, t)) + 0.1


def test_denoise_wiener_projection_limits():
    """wiener mode: at t = 1 the Wiener filter of the data around the flow's estimate; at t → 0 the estimate."""
    from cryovox.pipelines.denoise import DenoiseTask

    D = 8
    g = torch.Generator().manual_seed(11)
    y = torch.randn(1, D, D, D, generator=g, dtype=torch.float64)
    x0 = torch.randn(1, 1, D, D, D, generator=g, dtype=torch.float64)
    noise = torch.linspace(1.0, 4.0, D // 2 + 1) * D ** 3
    signal = torch.linspace(6.0, 0.5, D // 2 + 1) * D ** 3
    task = DenoiseTask(y, noise, signal=signal, mode="wiener")
    lik, proj = task.terms([(0, (0, 0, 0))], D)
    assert lik is None
    N = radial_power_grid(noise, D, dtype=torch.float64)
    S = radial_power_grid(signal, D, dtype=torch.float64)
    X, Y = fftn_c(x0[0, 0]), fftn_c(y[0])
    from cryovox.core.fft import ifftn_c

    expected = ifftn_c((N * X + S * Y) / (N + S)).real
    assert torch.allclose(proj(x0.float(), 1.0)[0, 0].double(), expected, atol=1e-4)
    assert torch.allclose(proj(x0.float(), 1e-6)[0, 0].double(), x0[0, 0], atol=1e-4)


def test_denoise_input_errors(cli, tmp_path):
    write_map(tmp_path / "a.mrc", np.zeros((16, 16, 16), np.float32), 2.0)
    write_map(tmp_path / "b.mrc", np.zeros((12, 12, 12), np.float32), 2.0)
    r = cli("denoise", "--half1", tmp_path / "a.mrc", "--half2", tmp_path / "b.mrc", "--prior", tmp_path / "p.pt",
            "-o", tmp_path / "o")
    assert r.code == 2 and "differ in size" in r.err and not (tmp_path / "o").exists()
    r = cli("denoise", tmp_path / "a.mrc", "-o", tmp_path / "o2", "--method", "swan")
    assert r.code == 2 and "--model" in r.err
    r = cli("generate", "--prior", tmp_path / "p.pt", "--swan", tmp_path / "s.pt", "-o", tmp_path / "o3")
    assert r.code == 2 and "either --prior" in r.err


def test_inpaint_wedge_keeps_measured_part_and_std_is_larger_in_the_wedge(trained, cli, tmp_path):
    root = trained[0]
    D = 16
    truth = torch.from_numpy(blob_map(D, 200)).double()
    m = wedge_mask(D, (-60, 60), "y")
    observed = apply_fourier_mask(truth, m)
    write_map(tmp_path / "wedge.mrc", observed, 4.0)
    res = cli("inpaint-wedge", tmp_path / "wedge.mrc", "--prior", root / "prior" / "prior.pt", "-o", tmp_path / "o",
              "--steps", 6, "--samples", 3, "--save-samples", "--device", "cpu")
    assert res.code == 0, res
    samples = torch.stack([torch.from_numpy(read_map(tmp_path / "o" / f"inpainted_sample{i:03d}.mrc").data)
                           for i in range(3)]).double()
    F = fftn_c(samples)
    Fo = fftn_c(observed)
    scale = Fo.abs().max()
    assert ((F[:, m] - Fo[m]).abs().max() / scale) < 1e-4            # measured components are the data
    spread = (F - F.mean(0)).abs().pow(2).mean(0)
    assert spread[~m].mean() > 100 * spread[m].mean()                # uncertainty lives in the wedge


def test_sliding_windows_blend_exactly(trained):
    """A fully observed map (projection onto the data in every window) comes back exactly after blending."""
    from cryovox.pipelines.flow_sample import blend_weights, load_prior, sample_posterior, window_starts

    assert window_starts(40, 16, 4) == [0, 12, 24]
    w = blend_weights(16, 4, True, True)
    assert w[4:12].eq(1).all() and (w[:4] > 0).all() and torch.allclose(w[12:], w[:4].flip(0))
    # complementary ramps of neighbouring windows sum to 1 over the overlap
    assert torch.allclose(blend_weights(16, 4, False, True)[12:] + blend_weights(16, 4, True, False)[:4],
                          torch.ones(4, dtype=torch.float64))
    prior = load_prior(trained[0] / "prior" / "prior.pt")
    prior.box = 8                                                      # force 8³ windows on a 20³ map
    obs = torch.randn(20, 20, 20, generator=torch.Generator().manual_seed(9), dtype=torch.float64)

    class Full:
        def terms(self, jobs, size):
            y = torch.stack([obs[z:z + size, yy:yy + size, x:x + size] for _, (z, yy, x) in jobs]).float()[:, None]
            return None, lambda x0, t: y

    out = sample_posterior(prior, 20, Full(), samples=1, steps=3, batch_size=5, overlap=3)
    assert torch.allclose(out[0].double(), obs, atol=1e-5)


def test_search_poses_recovers_known_poses(tmp_path):
    from cryovox.core.fft import rfftn_c
    from cryovox.pipelines.abinitio import search_poses

    D = 24
    vol = torch.from_numpy(blob_map(D, 300, n=6, sigma=1.8)).double()
    rot = euler_to_matrix(torch.tensor([10.0, 200.0, 75.0]), torch.tensor([40.0, 100.0, 150.0]),
                          torch.tensor([300.0, 20.0, 120.0]))
    shifts = torch.tensor([[1.0, -2.0], [0.0, 2.0], [-1.0, 1.0]], dtype=torch.float64)
    images = project_maps(vol, rot, shifts)
    R, s, score = search_poses(vol, rfftn_c(images, 2), angular_step=20.0, refine_levels=2, max_shift=3)
    assert (geodesic_distance(R, rot) < 8.0).all()
    assert torch.allclose(s, shifts, atol=1.01)
    assert (score > 0.95).all()


def test_abinitio_cli_runs_and_writes_poses(trained, cli, tmp_path):
    root = trained[0]
    vol = torch.from_numpy(blob_map(16, 400)).double()
    rot = euler_to_matrix(torch.tensor([0.0, 90.0, 45.0, 200.0]), torch.tensor([0.0, 90.0, 60.0, 120.0]),
                          torch.tensor([0.0, 0.0, 30.0, 80.0]))
    write_stack(tmp_path / "avg.mrcs", project_maps(vol, rot), 4.0)
    res = cli("abinitio", tmp_path / "avg.mrcs", "--prior", root / "prior" / "prior.pt", "-o", tmp_path / "o",
              "--steps", 4, "--search-every", 2, "--angular-step", 30, "--device", "cpu", "--stop-gradient")
    assert res.code == 0, res
    out = read_map(tmp_path / "o" / "abinitio.mrc")
    assert out.data.shape == (16, 16, 16) and out.apix == pytest.approx(4.0)
    rows = list(csv.DictReader(open(tmp_path / "o" / "poses.csv")))
    assert len(rows) == 4 and all(-1.0 <= float(r["ncc"]) <= 1.0 for r in rows)
