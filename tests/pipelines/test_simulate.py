"""cryovox simulate map / simulate particles, checked against independent oracles.

Oracles: the electron potential of isolated atoms written out from Peng's published
five-Gaussian form factors (International Tables C, Table 4.3.2.2; not gemmi's table), analytic
projections of Gaussian blobs whose positions follow from scipy's ZYZ rotation (RELION's matrix
is ``Rotation.from_euler("ZYZ", angles).as_matrix().T``), a NumPy CTF written from RELION's
formula, and NumPy variances for the SNR.
"""

from __future__ import annotations

import logging
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import pytest
import starfile
from scipy.spatial.transform import Rotation

from tests.conftest import ROOT

DEMO_MODEL = ROOT / "examples" / "data" / "1hvr.pdb.gz"

# Peng (1996) electron scattering factors, International Tables C Table 4.3.2.2: a_i (Å), b_i (Å²)
PENG = {
    "C": ([0.0893, 0.2563, 0.7570, 1.0487, 0.3575], [0.2465, 1.7100, 6.4094, 18.6113, 50.2523]),
    "O": ([0.0974, 0.2921, 0.6910, 0.6990, 0.2039], [0.2067, 1.3815, 4.6943, 12.7105, 32.4726]),
}
MASS = {"C": 12.011, "O": 15.999}


def drop_console_log() -> None:
    """Remove cryovox's console log handler: it keeps the stderr stream of the moment it was made,
    which pytest's capture closes between phases (cryovox.utils.job.setup_logging adds it once)."""
    log = logging.getLogger("cryovox")
    for h in list(log.handlers):
        if getattr(h, "_cryovox_console", False):
            log.removeHandler(h)


@pytest.fixture
def cli(cli):
    """The conftest ``cli`` runner, with a fresh console log handler for every call."""

    def run(*args):
        drop_console_log()
        return cli(*args)

    yield run
    drop_console_log()


def assert_one_line_error(res) -> None:
    """Exit code 2 and exactly one ``cryovox: error: ...`` line (no traceback)."""
    assert res.code == 2, res
    errors = [line for line in res.err.splitlines() if line.startswith("cryovox: error:")]
    assert len(errors) == 1 and "Traceback" not in res.err, res.err


def write_pdb(path: Path, atoms: list[tuple[str, float, float, float, float]]) -> Path:
    """A minimal PDB: atoms as (element, x, y, z, B)."""
    lines = [f"HETATM{i + 1:5d}  {el:<3s} LIG A   1    {x:8.3f}{y:8.3f}{z:8.3f}  1.00{b:6.2f}          {el:>2s}"
             for i, (el, x, y, z, b) in enumerate(atoms)]
    path.write_text("\n".join(lines) + "\nEND\n")
    return path


def blob_volume(box: int, centers_px, sigma_px: float = 1.5, amplitude: float = 1.0) -> np.ndarray:
    """Sum of 3D Gaussians ``[z, y, x]`` at offsets (x, y, z) in pixels from voxel ``box // 2``."""
    g = np.arange(box) - box // 2
    Z, Y, X = np.meshgrid(g, g, g, indexing="ij")
    vol = np.zeros((box,) * 3)
    for cx, cy, cz in centers_px:
        vol += amplitude * np.exp(-((X - cx) ** 2 + (Y - cy) ** 2 + (Z - cz) ** 2) / (2 * sigma_px**2))
    return vol.astype(np.float32)


def write_mrc(path: Path, data: np.ndarray, apix: float) -> Path:
    with mrcfile.new(path, overwrite=True) as m:
        m.set_data(np.asarray(data, dtype=np.float32))
        m.voxel_size = apix
    return path


def relion_matrices(star: pd.DataFrame) -> np.ndarray:
    """(N, 3, 3) RELION matrices from the STAR angles, via scipy (independent of cryovox)."""
    ang = star[["rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"]].to_numpy(float)
    return Rotation.from_euler("ZYZ", ang, degrees=True).as_matrix().transpose(0, 2, 1)


def read_stack(path: Path) -> np.ndarray:
    with mrcfile.open(path, permissive=True) as m:
        return np.array(m.data, dtype=np.float64), float(m.voxel_size.x)


def centroids(images: np.ndarray, window: int = 5) -> np.ndarray:
    """(N, 2) intensity centroid (x, y) in pixels of the window around each image's maximum."""
    out = []
    D = images.shape[-1]
    for img in images:
        iy, ix = np.unravel_index(np.argmax(img), img.shape)
        ys, xs = np.arange(iy - window, iy + window + 1), np.arange(ix - window, ix + window + 1)
        patch = img[np.ix_(ys % D, xs % D)]
        patch = np.clip(patch, 0, None)
        out.append([(patch.sum(0) * xs).sum() / patch.sum(), (patch.sum(1) * ys).sum() / patch.sum()])
    return np.array(out)


# ------------------------------------------------------------------------------------------ map
def test_map_of_two_atoms_equals_peng_potential(cli, tmp_path):
    atoms = [("C", 10.3, -5.7, 20.1, 100.0), ("O", 12.9, -4.1, 18.2, 100.0)]
    model = write_pdb(tmp_path / "two.pdb", atoms)
    apix, box = 1.0, 32
    out = tmp_path / "new" / "dir" / "two.mrc"          # folder created
    res = cli("simulate", "map", model, "--apix", apix, "--box", box, "-o", out)
    assert res.code == 0, res
    with mrcfile.open(out) as m:
        data = np.array(m.data, dtype=np.float64)
        assert m.data.dtype == np.float32
        assert float(m.voxel_size.x) == pytest.approx(apix)
        origin = np.array([m.header.origin.x, m.header.origin.y, m.header.origin.z], dtype=float)
    pos = np.array([a[1:4] for a in atoms])
    w = np.array([MASS[a[0]] for a in atoms])
    com = (pos * w[:, None]).sum(0) / w.sum()
    np.testing.assert_allclose(origin, com - (box // 2) * apix, atol=1e-3)   # centre of mass at voxel box//2
    g = np.arange(box) * apix
    Z, Y, X = np.meshgrid(g, g, g, indexing="ij")
    rho = np.zeros_like(data)
    for el, x, y, z, B in atoms:
        r2 = (X + origin[0] - x) ** 2 + (Y + origin[1] - y) ** 2 + (Z + origin[2] - z) ** 2
        for a, b in zip(*PENG[el]):
            rho += a * (4 * np.pi / (b + B)) ** 1.5 * np.exp(-4 * np.pi**2 * r2 / (b + B))
    assert np.linalg.norm(data - rho) / np.linalg.norm(rho) < 2e-3


def test_map_resolution_and_bfactor_filter_the_spectrum(tmp_path):
    from cryovox.pipelines.simulate import simulate_map

    model = write_pdb(tmp_path / "one.pdb", [("C", 0.0, 0.0, 0.0, 20.0)])
    base = simulate_map(model, apix=1.0, box=32).data.astype(np.float64)
    low = simulate_map(model, apix=1.0, box=32, resolution=4.0).data.astype(np.float64)
    blurred = simulate_map(model, apix=1.0, box=32, bfactor=30.0).data.astype(np.float64)
    F = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(base)))
    k = np.arange(32) - 16
    KZ, KY, KX = np.meshgrid(k, k, k, indexing="ij")
    s = np.sqrt(KX**2 + KY**2 + KZ**2) / 32.0                      # 1/Å at 1 Å/px
    # low-pass: untouched below 1/4 Å⁻¹, zero beyond the 2-pixel cosine edge (RELION's lowPassFilterMap)
    L = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(low)))
    inner, outer = s * 32 <= 8, s * 32 >= 10
    np.testing.assert_allclose(L[inner], F[inner], atol=1e-6 * np.abs(F).max())   # float32 maps
    assert np.abs(L[outer]).max() < 1e-6 * np.abs(F).max()
    # B-factor: multiplies the spectrum by exp(-B s²/4)
    Bf = np.fft.fftshift(np.fft.fftn(np.fft.ifftshift(blurred)))
    np.testing.assert_allclose(Bf, F * np.exp(-30.0 * s**2 / 4), atol=1e-6 * np.abs(F).max())


def test_map_refuses_overwrite_and_bad_models(cli, tmp_path):
    model = write_pdb(tmp_path / "one.pdb", [("C", 1.0, 2.0, 3.0, 30.0)])
    out = tmp_path / "m.mrc"
    assert cli("simulate", "map", model, "--apix", 1, "--box", 16, "-o", out).code == 0
    before = out.read_bytes()
    res = cli("simulate", "map", model, "--apix", 2, "--box", 16, "-o", out)
    assert_one_line_error(res)
    assert "--force" in res.err
    assert out.read_bytes() == before
    assert cli("simulate", "map", model, "--apix", 2, "--box", 16, "-o", out, "--force").code == 0
    with mrcfile.open(out) as m:
        assert float(m.voxel_size.x) == pytest.approx(2.0)
    # a model larger than the box, a missing model, an empty model: exit 2, nothing written
    wide = write_pdb(tmp_path / "wide.pdb", [("C", 0.0, 0.0, 0.0, 30.0), ("C", 40.0, 0.0, 0.0, 30.0)])
    empty = tmp_path / "empty.pdb"
    empty.write_text("END\n")
    for bad in (wide, tmp_path / "missing.pdb", empty):
        target = tmp_path / f"out_{bad.stem}" / "m.mrc"
        res = cli("simulate", "map", bad, "--apix", 1, "--box", 16, "-o", target)
        assert_one_line_error(res)
        assert not target.exists()


def test_demo_model_map_is_centred():
    from cryovox.pipelines.simulate import simulate_map

    sim = simulate_map(DEMO_MODEL, apix=2.0, box=48)
    d = sim.data.astype(np.float64)
    g = np.arange(48)
    Z, Y, X = np.meshgrid(g, g, g, indexing="ij")
    centroid = np.array([(d * X).sum(), (d * Y).sum(), (d * Z).sum()]) / d.sum()
    np.testing.assert_allclose(centroid, 24.0, atol=0.3)        # potential centroid ≈ centre of mass
    assert sim.n_atoms == 1890 and 20.0 < sim.mass_kda < 21.0


# ------------------------------------------------------------------------------------ particles
def test_noise_free_particles_follow_poses_and_exact_shifts(cli, tmp_path):
    """Blob at q in the map → image blob at centre + (R q)_xy − shift/apix, to 0.02 px."""
    box, apix = 32, 1.5
    q = np.array([5.0, -3.0, 2.0])
    mp = write_mrc(tmp_path / "blob.mrc", blob_volume(box, [q], sigma_px=1.2), apix)
    out = tmp_path / "sim"
    res = cli("simulate", "particles", mp, "-n", 24, "--snr", "inf", "--no-ctf", "--shift", 6, "--seed", 5,
              "-o", out)
    assert res.code == 0, res
    star = starfile.read(out / "particles.star", always_dict=True)
    parts, optics = star["particles"], star["optics"]
    assert float(optics["rlnImagePixelSize"][0]) == pytest.approx(apix)
    images, stack_apix = read_stack(out / "particles.mrcs")
    assert images.shape == (24, box, box) and stack_apix == pytest.approx(apix)
    R = relion_matrices(parts)
    shift_px = parts[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / apix
    assert np.abs(shift_px).max() > 4.0                      # shifts were really applied
    expected = box // 2 + (R @ q)[:, :2] - shift_px
    np.testing.assert_allclose(centroids(images), expected, atol=0.02)
    # analytic projection of the blob: a 2D Gaussian of amplitude σ√(2π) at the expected centre
    sigma = 1.2
    g = np.arange(box)
    Yi, Xi = np.meshgrid(g, g, indexing="ij")

    def analytic(centres):
        return sigma * np.sqrt(2 * np.pi) * np.exp(
            -((Xi[None] - centres[:, 0, None, None]) ** 2 + (Yi[None] - centres[:, 1, None, None]) ** 2)
            / (2 * sigma**2))

    err = np.linalg.norm(images - analytic(expected)) / np.linalg.norm(analytic(expected))
    assert err < 0.015          # trilinear slicing at padding 2: ~1.2 % for density 6 px off-centre
    res = cli("simulate", "particles", mp, "-n", 6, "--snr", "inf", "--no-ctf", "--shift", 6, "--seed", 5,
              "--pad", 4, "-o", tmp_path / "pad4")
    assert res.code == 0, res
    images4, _ = read_stack(tmp_path / "pad4" / "particles.mrcs")
    parts4 = starfile.read(tmp_path / "pad4" / "particles.star", always_dict=True)["particles"]
    expected4 = (box // 2 + (relion_matrices(parts4) @ q)[:, :2]
                 - parts4[["rlnOriginXAngst", "rlnOriginYAngst"]].to_numpy(float) / apix)
    err4 = np.linalg.norm(images4 - analytic(expected4)) / np.linalg.norm(analytic(expected4))
    assert err4 < 0.004         # padding 4: ~0.3 %


def relion_ctf_numpy(D, apix, dfu, dfv, dfang, kv, cs_mm, q0):
    """RELION's CTF::getCTF on the full centred grid (NumPy oracle)."""
    k = np.arange(D) - D // 2
    KY, KX = np.meshgrid(k, k, indexing="ij")
    sx, sy = KX / (D * apix), KY / (D * apix)
    u2 = sx**2 + sy**2
    v = kv * 1e3
    lam = 12.2643247 / np.sqrt(v * (1 + v * 0.978466e-6))
    alpha = np.arctan2(sy, sx) - np.deg2rad(dfang)
    deltaf = -(dfu + dfv) / 2 - (dfu - dfv) / 2 * np.cos(2 * alpha)
    gamma = np.pi * lam * deltaf * u2 + np.pi / 2 * cs_mm * 1e7 * lam**3 * u2**2 - np.arctan(q0 / np.sqrt(1 - q0**2))
    return -np.sin(gamma)


def test_ctf_applied_is_the_one_in_the_star(cli, tmp_path):
    box, apix = 32, 2.0
    mp = write_mrc(tmp_path / "blob.mrc", blob_volume(box, [(0, 0, 0)], sigma_px=1.0), apix)
    for name, extra in (("ctf", ["--defocus", 8000, 20000, "--astigmatism", 1500]), ("plain", ["--no-ctf"])):
        res = cli("simulate", "particles", mp, "-n", 4, "--snr", "inf", "--seed", 2, "-o", tmp_path / name, *extra)
        assert res.code == 0, res
    with_ctf, _ = read_stack(tmp_path / "ctf" / "particles.mrcs")
    plain, _ = read_stack(tmp_path / "plain" / "particles.mrcs")
    star = starfile.read(tmp_path / "ctf" / "particles.star", always_dict=True)
    parts, optics = star["particles"], star["optics"]
    assert (parts["rlnDefocusU"] - parts["rlnDefocusV"]).max() > 100      # astigmatic
    Fc = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(with_ctf, axes=(1, 2))), axes=(1, 2))
    Fp = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(plain, axes=(1, 2))), axes=(1, 2))
    k = np.arange(box) - box // 2
    KY, KX = np.meshgrid(k, k, indexing="ij")
    inside = (KX**2 + KY**2 < (box // 2 - 1) ** 2) & (np.abs(Fp[0]) > 1e-3 * np.abs(Fp[0]).max())
    for i, row in parts.iterrows():
        ctf = relion_ctf_numpy(box, apix, row.rlnDefocusU, row.rlnDefocusV, row.rlnDefocusAngle,
                               float(optics.rlnVoltage[0]), float(optics.rlnSphericalAberration[0]),
                               float(optics.rlnAmplitudeContrast[0]))
        np.testing.assert_allclose(Fc[i][inside], (ctf * Fp[i])[inside], atol=2e-4 * np.abs(Fp[i]).max())


def test_snr_is_signal_variance_over_noise_variance(cli, tmp_path):
    box, apix = 32, 2.0
    mp = write_mrc(tmp_path / "blob.mrc", blob_volume(box, [(3, 0, 0), (-3, 2, 1)], sigma_px=2.0), apix)
    for name, snr in (("clean", "inf"), ("noisy", "0.5")):
        res = cli("simulate", "particles", mp, "-n", 300, "--snr", snr, "--shift", 3, "--seed", 9,
                  "-o", tmp_path / name)
        assert res.code == 0, res
    clean, _ = read_stack(tmp_path / "clean" / "particles.mrcs")
    noisy, _ = read_stack(tmp_path / "noisy" / "particles.mrcs")
    noise = noisy - clean                               # same seed: same poses, CTF and shifts
    assert clean.var() / noise.var() == pytest.approx(0.5, rel=0.02)
    assert abs(noise.mean()) < 0.01 * noise.std()
    truth = np.load(tmp_path / "noisy" / "ground_truth.npz")
    assert float(truth["noise_sigma"]) == pytest.approx(noise.std(), rel=0.01)


def test_heterogeneous_states_weights_and_truth(cli, tmp_path):
    box, apix = 32, 2.0
    qa, qb = np.array([6.0, 0.0, 0.0]), np.array([0.0, -5.0, 3.0])
    a = write_mrc(tmp_path / "a.mrc", blob_volume(box, [qa], sigma_px=1.2), apix)
    b = write_mrc(tmp_path / "b.mrc", blob_volume(box, [qb], sigma_px=1.2), apix)
    out = tmp_path / "het"
    res = cli("simulate", "particles", a, b, "-n", 400, "--snr", "inf", "--no-ctf", "--weights", "3,1",
              "--seed", 4, "-o", out)
    assert res.code == 0, res
    states = np.load(out / "states.npy")
    table = pd.read_csv(out / "states.csv")
    star = starfile.read(out / "particles.star", always_dict=True)["particles"]
    np.testing.assert_array_equal(table["state"].to_numpy(), states)
    np.testing.assert_array_equal(star["rlnClassNumber"].to_numpy(), states + 1)
    assert set(table["map"]) == {str(a), str(b)}
    assert np.mean(states == 0) == pytest.approx(0.75, abs=0.07)
    assert sorted(set(star["rlnRandomSubset"])) == [1, 2] and abs(np.mean(star["rlnRandomSubset"] == 1) - 0.5) < 0.01
    images, _ = read_stack(out / "particles.mrcs")
    R = relion_matrices(star)
    q = np.where(states[:, None] == 0, qa, qb)
    expected = box // 2 + np.einsum("nij,nj->ni", R, q)[:, :2]
    np.testing.assert_allclose(centroids(images[:40]), expected[:40], atol=0.05)
    truth = np.load(out / "ground_truth.npz")
    np.testing.assert_allclose(truth["rotations"], R, atol=1e-8)


def test_particles_bad_input_exit_2_nothing_written(cli, tmp_path):
    box = 16
    a = write_mrc(tmp_path / "a.mrc", blob_volume(box, [(0, 0, 0)]), 2.0)
    b = write_mrc(tmp_path / "b.mrc", blob_volume(box, [(0, 0, 0)]), 2.5)
    flat = write_mrc(tmp_path / "flat.mrc", np.zeros((box, box, box + 2)), 2.0)
    cases = [
        [a, b],                                    # pixel sizes disagree
        [a, tmp_path / "missing.mrc"],             # missing file
        [flat],                                    # not cubic
        [a, "--weights", "1,2,3"],                 # weights do not match the maps
        [a, "--shift", "9"],                       # shifts beyond half the box
    ]
    for i, args in enumerate(cases):
        out = tmp_path / f"out{i}"
        res = cli("simulate", "particles", *args, "-n", 5, "--snr", 1, "-o", out)
        assert_one_line_error(res)
        assert not out.exists()


@pytest.mark.parametrize("box", [32, 33])
def test_simulated_map_is_centred_for_even_and_odd_boxes(box):
    """The density's centroid sits on voxel box // 2 (odd boxes were half a voxel off)."""
    from cryovox.pipelines.simulate import simulate_map

    sim = simulate_map(DEMO_MODEL, apix=2.0, box=box)
    d = np.clip(sim.data.astype(np.float64), 0, None)
    idx = np.indices(d.shape)
    centroid = np.array([(idx[i] * d).sum() / d.sum() for i in range(3)])
    np.testing.assert_allclose(centroid, box // 2, atol=0.1)


def test_center_option_puts_given_model_point_at_the_box_centre(tmp_path, cli):
    """--center moves the frame: the same model, centred 4 Å further along x, appears 2 voxels lower in x."""
    import mrcfile

    from cryovox.io.atomic import center_of_mass, read_model

    com = center_of_mass(read_model(DEMO_MODEL))
    a, b = tmp_path / "a.mrc", tmp_path / "b.mrc"
    assert cli("simulate", "map", DEMO_MODEL, "--apix", 2, "--box", 32, "-o", a).code == 0
    res = cli("simulate", "map", DEMO_MODEL, "--apix", 2, "--box", 32, "-o", b,
              "--center", com[0] + 4.0, com[1], com[2])
    assert res.code == 0, res
    with mrcfile.open(a) as fa, mrcfile.open(b) as fb:
        da, db = fa.data.astype(np.float64), fb.data.astype(np.float64)
        assert float(fb.header.origin.x) == pytest.approx(float(fa.header.origin.x) + 4.0, abs=1e-3)
    np.testing.assert_allclose(db[:, :, 6:-6], da[:, :, 8:-4], atol=1e-3 * np.abs(da).max())
