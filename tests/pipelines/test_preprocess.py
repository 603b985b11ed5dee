"""cryovox preprocess: NumPy oracles for Fourier cropping and RELION-style background normalisation,
chunk-size independence, pixel size and shifts in the rewritten STAR, bare stacks with cryoDRGN pickles."""

from __future__ import annotations

import pickle

import mrcfile
import numpy as np
import pytest
import starfile

from tests.pipelines.test_simulate import (assert_one_line_error, blob_volume,  # noqa: F401
                                           cli, read_stack, write_mrc)


def numpy_fourier_crop(images: np.ndarray, d: int) -> np.ndarray:
    """Band-limited resampling on a d-pixel grid, evaluated as an explicit trigonometric sum.

    Keeps the frequencies |k| ≤ d/2 on each axis (both ±d/2 for even d: they coincide on the new
    grid), evaluated at the new pixel centres, origin pixel D//2 → d//2, scaled to keep values.
    """
    D = images.shape[-1]
    F = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(images, axes=(-2, -1))), axes=(-2, -1))
    k = np.arange(-(d // 2), d // 2 + 1)
    Fk = F[:, k[:, None] + D // 2, k[None, :] + D // 2]
    j = np.arange(d) - d // 2
    E = np.exp(2j * np.pi * np.outer(j, k) / d)                # new pixel j, frequency k
    return np.real(E @ Fk @ E.T) / D**2


def numpy_normalise(images: np.ndarray, radius: float) -> np.ndarray:
    D = images.shape[-1]
    g = np.arange(D) - D // 2
    Y, X = np.meshgrid(g, g, indexing="ij")
    bg = np.sqrt(X**2 + Y**2) > radius
    out = []
    for img in images:
        v = img[bg]
        out.append((img - v.mean()) / v.std())
    return np.array(out)


@pytest.fixture
def particles(cli, tmp_path):
    """40 noisy 32-px particles with CTF and shifts, 1.7 Å/px, written by simulate particles."""
    mp = write_mrc(tmp_path / "blob.mrc", blob_volume(32, [(3, 0, 1), (-2, 4, 0)], sigma_px=2.0), 1.7)
    res = cli("simulate", "particles", mp, "-n", 40, "--snr", 0.5, "--shift", 3, "--seed", 1, "-o", tmp_path / "sim")
    assert res.code == 0, res
    return tmp_path / "sim" / "particles.star"


def test_downsample_invert_normalise_against_numpy(cli, tmp_path, particles):
    out = tmp_path / "prep" / "nested"
    res = cli("preprocess", particles, "-o", out, "--downsample", 20, "--invert", "--normalize", "--chunk", 7)
    assert res.code == 0, res
    raw, _ = read_stack(particles.parent / "particles.mrcs")
    got, stack_apix = read_stack(out / "particles.mrcs")
    expected = numpy_normalise(-numpy_fourier_crop(raw, 20), round(0.375 * 20))
    np.testing.assert_allclose(got, expected, atol=2e-4)
    new_apix = 1.7 * 32 / 20
    assert stack_apix == pytest.approx(new_apix, rel=1e-5)
    old = starfile.read(particles, always_dict=True)
    new = starfile.read(out / "particles.star", always_dict=True)
    assert float(new["optics"]["rlnImagePixelSize"][0]) == pytest.approx(new_apix)
    assert int(new["optics"]["rlnImageSize"][0]) == 20
    for col in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
                "rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle", "rlnRandomSubset", "rlnClassNumber"):
        np.testing.assert_allclose(new["particles"][col].to_numpy(float), old["particles"][col].to_numpy(float),
                                   rtol=1e-9, err_msg=col)               # shifts in Å unchanged
    assert new["particles"]["rlnImageName"].iloc[3] == "000004@particles.mrcs"


def test_per_image_processing_does_not_depend_on_chunk(cli, tmp_path, particles):
    for chunk in (1, 13, 1000):
        res = cli("preprocess", particles, "-o", tmp_path / f"c{chunk}", "--downsample", 16, "--normalize",
                  "--chunk", chunk)
        assert res.code == 0, res
    ref, _ = read_stack(tmp_path / "c1000" / "particles.mrcs")
    for chunk in (1, 13):
        got, _ = read_stack(tmp_path / f"c{chunk}" / "particles.mrcs")
        np.testing.assert_allclose(got, ref, atol=1e-6)


def test_invert_only_is_exact_and_keeps_pixel_size(cli, tmp_path, particles):
    res = cli("preprocess", particles, "-o", tmp_path / "inv", "--invert")
    assert res.code == 0, res
    raw, apix_in = read_stack(particles.parent / "particles.mrcs")
    got, apix_out = read_stack(tmp_path / "inv" / "particles.mrcs")
    np.testing.assert_array_equal(got, -raw)
    assert apix_out == pytest.approx(apix_in) == pytest.approx(1.7)


def test_bare_stack_with_cryodrgn_pickles(cli, tmp_path):
    n, D, apix = 6, 24, 2.2
    rng = np.random.default_rng(3)
    stack = write_mrc(tmp_path / "bare.mrcs", rng.normal(size=(n, D, D)), apix)
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(n, random_state=1).as_matrix().astype(np.float32)
    trans = rng.uniform(-0.1, 0.1, size=(n, 2)).astype(np.float32)     # fraction of the box (cryoDRGN)
    ctf = np.zeros((n, 9), dtype=np.float32)
    ctf[:, 0], ctf[:, 1] = D, apix
    ctf[:, 2], ctf[:, 3], ctf[:, 4] = rng.uniform(1e4, 2e4, n), rng.uniform(1e4, 2e4, n), rng.uniform(0, 180, n)
    ctf[:, 5], ctf[:, 6], ctf[:, 7] = 300, 2.7, 0.07
    with open(tmp_path / "poses.pkl", "wb") as f:
        pickle.dump((rot, trans), f)
    with open(tmp_path / "ctf.pkl", "wb") as f:
        pickle.dump(ctf, f)
    out = tmp_path / "prep"
    res = cli("preprocess", stack, "--poses", tmp_path / "poses.pkl", "--ctf", tmp_path / "ctf.pkl",
              "--downsample", 12, "-o", out)
    assert res.code == 0, res
    star = starfile.read(out / "particles.star", always_dict=True)
    p, o = star["particles"], star["optics"]
    assert float(o["rlnImagePixelSize"][0]) == pytest.approx(apix * 2)
    np.testing.assert_allclose(p["rlnOriginXAngst"], trans[:, 0] * D * apix, rtol=1e-5)
    np.testing.assert_allclose(p["rlnOriginYAngst"], trans[:, 1] * D * apix, rtol=1e-5)
    np.testing.assert_allclose(p["rlnDefocusU"], ctf[:, 2], rtol=1e-6)
    np.testing.assert_allclose(float(o["rlnAmplitudeContrast"][0]), 0.07, rtol=1e-6)
    ang = p[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    back = Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(back, rot, atol=1e-5)
    with mrcfile.open(out / "particles.mrcs") as m:
        assert m.data.shape == (n, 12, 12)


def test_preprocess_bad_input_exit_2_nothing_written(cli, tmp_path, particles):
    star = starfile.read(particles, always_dict=True)
    past = star["particles"].copy()
    past["rlnImageName"] = [f"{i + 30:06d}@{particles.parent / 'particles.mrcs'}" for i in range(len(past))]
    starfile.write({"optics": star["optics"], "particles": past}, tmp_path / "past.star")
    cases = [
        [tmp_path / "missing.star"],
        [particles, "--downsample", 64],          # larger than the box
        [particles, "--downsample", 15],          # odd box
        [tmp_path / "past.star"],                 # image index past the stack's end
    ]
    for i, args in enumerate(cases):
        out = tmp_path / f"out{i}"
        res = cli("preprocess", *args, "-o", out)
        assert_one_line_error(res)
        assert not out.exists(), args
