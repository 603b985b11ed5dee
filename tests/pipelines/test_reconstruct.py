"""cryovox reconstruct: simulated data rebuilt from the STAR alone, exact shifts, real cryoDRGN data, bad input.

Oracles: a plain NumPy FSC over rounded shells, integer image shifts done with ``np.roll``, and
the reference map shipped with cryoDRGN's test data.
"""

from __future__ import annotations

import shutil

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile

from tests.conftest import SHARED, needs_shared_data
from tests.pipelines.test_simulate import (DEMO_MODEL, assert_one_line_error, blob_volume,  # noqa: F401
                                           cli, read_stack, write_mrc)


def numpy_fsc(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """FSC over shells of rounded radius 0 … D//2 (full FFT; independent oracle)."""
    D = a.shape[0]
    A, B = np.fft.fftshift(np.fft.fftn(a)), np.fft.fftshift(np.fft.fftn(b))
    k = np.arange(D) - D // 2
    KZ, KY, KX = np.meshgrid(k, k, k, indexing="ij")
    shell = np.rint(np.sqrt(KX**2 + KY**2 + KZ**2)).astype(int)
    out = []
    for i in range(D // 2 + 1):
        m = shell == i
        out.append(np.real(np.sum(A[m] * np.conj(B[m]))) / np.sqrt(np.sum(np.abs(A[m]) ** 2) * np.sum(np.abs(B[m]) ** 2)))
    return np.array(out)


def crossing(curve: np.ndarray, t: float, D: int, apix: float) -> float:
    """Resolution (Å) of the first crossing below ``t`` after DC, linearly interpolated."""
    for i in range(1, len(curve)):
        if curve[i] < t:
            s = i - 1 + (curve[i - 1] - t) / (curve[i - 1] - curve[i])
            return D * apix / s
    return D * apix / (len(curve) - 1)


def read_mrc(path):
    with mrcfile.open(path) as m:
        return np.array(m.data, dtype=np.float64), float(m.voxel_size.x)


@pytest.mark.slow
def test_simulated_particles_rebuilt_from_star_alone(cli, tmp_path):
    """(b) at test size: 1HVR map, 3000 particles at SNR 0.1 with CTF and shifts → FSC 0.5 vs truth < 3 px."""
    box, apix = 48, 2.0
    truth_path = tmp_path / "truth.mrc"
    assert cli("simulate", "map", DEMO_MODEL, "--apix", apix, "--box", box, "-o", truth_path).code == 0
    res = cli("simulate", "particles", truth_path, "-n", 3000, "--snr", 0.1, "--shift", 4, "--astigmatism", 400,
              "--seed", 11, "-o", tmp_path / "sim")
    assert res.code == 0, res
    # only the STAR and its stack travel: reconstruct from a copy elsewhere, into a missing folder
    data = tmp_path / "elsewhere"
    data.mkdir()
    shutil.copy(tmp_path / "sim" / "particles.star", data)
    shutil.copy(tmp_path / "sim" / "particles.mrcs", data)
    out = tmp_path / "deep" / "rec"
    res = cli("reconstruct", data / "particles.star", "-o", out)
    assert res.code == 0, res
    truth, _ = read_mrc(truth_path)
    full, full_apix = read_mrc(out / "map.mrc")
    h1, h1_apix = read_mrc(out / "half1.mrc")
    h2, h2_apix = read_mrc(out / "half2.mrc")
    assert full_apix == h1_apix == h2_apix == pytest.approx(apix)       # pixel size kept
    res_truth = crossing(numpy_fsc(full, truth), 0.5, box, apix)
    assert res_truth < 3 * apix, res_truth                               # measured ≈ 4.1 Å
    # the written FSC is the half maps' FSC (NumPy oracle) and the summary quotes its crossing
    csv = pd.read_csv(out / "fsc.csv")
    np.testing.assert_allclose(csv["fsc_unmasked"].to_numpy(), numpy_fsc(h1, h2), atol=1e-4)
    np.testing.assert_allclose(csv["resolution_A"].to_numpy()[1:], box * apix / np.arange(1, box // 2 + 1), rtol=1e-6)
    gold = crossing(csv["fsc_unmasked"].to_numpy(), 0.143, box, apix)
    assert f"0.143 at {gold:.2f} Å" in res.err
    import matplotlib.image

    png = matplotlib.image.imread(out / "fsc.png")
    assert png.ndim == 3 and png.shape[0] > 100 and png.shape[1] > 100
    relion = starfile.read(out / "fsc.star")
    np.testing.assert_allclose(relion["rlnFourierShellCorrelationUnmaskedMaps"], csv["fsc_unmasked"], atol=1e-6)


def test_shifts_are_exact_in_reconstruction(cli, tmp_path):
    """Images rolled by integer pixels (np.roll) with matching rlnOriginX/YAngst rebuild the same map."""
    box, apix, n = 32, 2.0, 600
    vol = blob_volume(box, [(4, 0, 0), (-3, 3, 2), (0, -4, -3)], sigma_px=1.5)
    mp = write_mrc(tmp_path / "blobs.mrc", vol, apix)
    res = cli("simulate", "particles", mp, "-n", n, "--snr", "inf", "--no-ctf", "--seed", 3, "-o", tmp_path / "sim")
    assert res.code == 0, res
    images, _ = read_stack(tmp_path / "sim" / "particles.mrcs")
    star = starfile.read(tmp_path / "sim" / "particles.star", always_dict=True)
    rng = np.random.default_rng(0)
    shifts = rng.integers(-7, 8, size=(n, 2))                          # (x, y) in pixels
    rolled = np.stack([np.roll(img, (-sy, -sx), axis=(0, 1)) for img, (sx, sy) in zip(images, shifts)])
    shifted = tmp_path / "shifted"
    shifted.mkdir()
    write_mrc(shifted / "particles.mrcs", rolled, apix)
    parts = star["particles"].copy()
    parts["rlnOriginXAngst"] = shifts[:, 0] * apix
    parts["rlnOriginYAngst"] = shifts[:, 1] * apix
    starfile.write({"optics": star["optics"], "particles": parts}, shifted / "particles.star")
    assert cli("reconstruct", tmp_path / "sim" / "particles.star", "-o", tmp_path / "rec0").code == 0
    assert cli("reconstruct", shifted / "particles.star", "-o", tmp_path / "rec1").code == 0
    m0, _ = read_mrc(tmp_path / "rec0" / "map.mrc")
    m1, _ = read_mrc(tmp_path / "rec1" / "map.mrc")
    assert np.linalg.norm(m1 - m0) / np.linalg.norm(m0) < 1e-4
    assert np.corrcoef(m0.ravel(), vol.ravel())[0, 1] > 0.99
    # a (D+1)/D error would move each 7-px shift by 0.2 px: far outside the tolerance above


def test_reconstruct_with_the_kernels_equals_the_reference(tmp_path, monkeypatch):
    """The compiled backprojection changes the reconstruction by no more than 1e-5 (relative) against
    the pure-PyTorch reference, CTF, shifts and noise included."""
    from cryovox.core import _ext
    from cryovox.pipelines.reconstruct import reconstruct
    from cryovox.pipelines.simulate import simulate_particles

    if not _ext.available("cpu"):
        pytest.skip("compiled kernels are not built")
    box, apix = 24, 3.0
    vol = blob_volume(box, [(3, 0, 0), (-2, 3, 1), (0, -3, -2)], sigma_px=1.5)
    mp = write_mrc(tmp_path / "blobs.mrc", vol, apix)
    sim = simulate_particles([mp], tmp_path / "sim", n=200, snr=1.0, shift=2.0, seed=5)
    kernel = reconstruct(sim.files["star"], batch_size=64)
    monkeypatch.setattr(_ext, "ops", lambda device: None)              # every call takes the reference
    ref = reconstruct(sim.files["star"], batch_size=64)
    for a, b in ((kernel.half1, ref.half1), (kernel.half2, ref.half2), (kernel.full, ref.full)):
        assert np.linalg.norm(a - b) / np.linalg.norm(b) < 1e-5
    np.testing.assert_allclose(kernel.fsc, ref.fsc, atol=1e-5)


@needs_shared_data
def test_cryodrgn_hand_data_with_pose_pickle(cli, tmp_path):
    """hand.mrcs (100 projections, no CTF) with cryoDRGN's hand_rot.pkl against hand-vol.mrc."""
    d = SHARED / "cryodrgn"
    out = tmp_path / "hand"
    res = cli("reconstruct", d / "hand.mrcs", "--poses", d / "hand_rot.pkl", "-o", out)
    assert res.code == 0, res
    rec, rec_apix = read_mrc(out / "map.mrc")
    ref, _ = read_mrc(d / "hand-vol.mrc")
    corr = np.corrcoef(rec.ravel(), ref.ravel())[0, 1]
    assert corr > 0.98, corr                                           # measured 0.9953 (cryoDRGN backproject_voxel: 0.9903)
    assert rec_apix == pytest.approx(1.0)                              # the stack's pixel size
    out2 = tmp_path / "hand_apix"
    assert cli("reconstruct", d / "hand.mrcs", "--poses", d / "hand_rot.pkl", "--apix", 6.0,
               "--max-particles", 40, "-o", out2).code == 0
    _, apix2 = read_mrc(out2 / "map.mrc")
    assert apix2 == pytest.approx(6.0)


def test_reconstruct_bad_input_exit_2_nothing_written(cli, tmp_path):
    box, apix = 16, 2.0
    mp = write_mrc(tmp_path / "blob.mrc", blob_volume(box, [(0, 0, 0)]), apix)
    assert cli("simulate", "particles", mp, "-n", 10, "--snr", 1, "-o", tmp_path / "sim").code == 0
    star = starfile.read(tmp_path / "sim" / "particles.star", always_dict=True)
    stack = tmp_path / "sim" / "particles.mrcs"

    def write(name, particles, optics=star["optics"]):
        path = tmp_path / name
        starfile.write({"optics": optics, "particles": particles}, path)
        return path

    no_angles = write("no_angles.star", star["particles"].drop(columns=["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]))
    no_names = write("no_names.star", star["particles"].drop(columns=["rlnImageName"]))
    past_end = star["particles"].copy()
    past_end["rlnImageName"] = [f"{i + 5:06d}@{stack}" for i in range(len(past_end))]   # 11..15 of 10
    past_end = write("past_end.star", past_end)
    empty = tmp_path / "empty.star"
    empty.write_text("\n# version 30001\n\ndata_particles\n\nloop_\n_rlnImageName #1\n")
    for bad in (tmp_path / "missing.star", no_angles, no_names, past_end, empty):
        out = tmp_path / f"rec_{bad.stem}"
        res = cli("reconstruct", bad, "-o", out)
        assert_one_line_error(res)
        assert not out.exists(), bad
