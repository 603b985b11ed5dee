"""The canonical particle table on synthetic files: STAR round trip, RELION 3.0 units, path
resolution, lazy image loading, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial.transform import Rotation

from cryovox.errors import InputError
from cryovox.io.mrc import write_stack
from cryovox.io.particles import ParticleTable, read_particles, write_star


def _table(tmp_path, n=12, seed=0):
    rng = np.random.default_rng(seed)
    write_stack(tmp_path / "a.mrcs", rng.standard_normal((7, 8, 8)), 1.5)
    write_stack(tmp_path / "b.mrcs", rng.standard_normal((5, 8, 8)), 1.5)
    files = [str(tmp_path / "a.mrcs")] * 7 + [str(tmp_path / "b.mrcs")] * 5
    index = list(range(7)) + list(range(5))
    rot = Rotation.random(n, random_state=seed).as_matrix()
    rot[0] = Rotation.from_euler("ZYZ", [30, 0, 0], degrees=True).as_matrix().T  # tilt 0 (gimbal)
    rot[1] = Rotation.from_euler("ZYZ", [30, 180, 10], degrees=True).as_matrix().T  # tilt 180
    ctf = {
        "defocus_u": rng.uniform(8000, 20000, n), "defocus_v": rng.uniform(8000, 20000, n),
        "defocus_angle": rng.uniform(-180, 180, n), "voltage": np.where(np.arange(n) < 4, 200.0, 300.0),
        "cs": 2.7, "amplitude_contrast": 0.07, "phase_shift": rng.uniform(0, 90, n), "bfactor": rng.uniform(0, 50, n),
    }
    extra = {"rlnMicrographName": [f"mics/m{i % 3}.mrc" for i in range(n)], "rlnClassNumber": rng.integers(1, 4, n),
             "rlnCoordinateX": rng.uniform(0, 4000, n)}
    return ParticleTable.from_arrays(files, index, apix=1.5, box=8, rotations=rot,
                                     shifts=rng.uniform(-5, 5, (n, 2)), ctf=ctf,
                                     subset=rng.integers(1, 3, n), extra=extra)


def test_star_round_trip(tmp_path):
    t = _table(tmp_path)
    assert len(t.optics) == 2  # two voltages → two optics groups
    write_star(tmp_path / "p.star", t)
    u = read_particles(tmp_path / "p.star")
    assert len(u) == len(t) == 12
    np.testing.assert_allclose(u.rotations, t.rotations, atol=1e-8)
    np.testing.assert_allclose(u.shifts, t.shifts, atol=1e-9)
    for k, v in t.ctf.items():
        np.testing.assert_allclose(u.ctf[k], v, rtol=0, atol=1e-9, err_msg=k)  # 9 decimals written
    np.testing.assert_array_equal(u.image_file, t.image_file)
    np.testing.assert_array_equal(u.image_index, t.image_index)
    np.testing.assert_array_equal(u.subset, t.subset)
    np.testing.assert_array_equal(u.optics_group, t.optics_group)
    np.testing.assert_allclose(u.apix, 1.5)
    assert list(u.box) == [8] * 12
    assert u.passthrough == ["rlnMicrographName", "rlnClassNumber", "rlnCoordinateX"]
    np.testing.assert_array_equal(u.particles["rlnMicrographName"], t.particles["rlnMicrographName"])
    np.testing.assert_array_equal(u.particles["rlnClassNumber"], t.particles["rlnClassNumber"])
    np.testing.assert_allclose(u.particles["rlnCoordinateX"], t.particles["rlnCoordinateX"], rtol=1e-11)  # 12 digits
    pd.testing.assert_frame_equal(u.optics, t.optics, check_dtype=False)
    # what RELION reads: rlnImageName 1-based, relative to the STAR's folder
    text = (tmp_path / "p.star").read_text()
    assert "data_optics" in text and "data_particles" in text and "# version 30001" in text
    assert "000001@a.mrcs" in text and "000005@b.mrcs" in text and "000008@" not in text
    assert t.rotations[0] == pytest.approx(Rotation.from_euler("ZYZ", [30, 0, 0], degrees=True).as_matrix().T)


def test_rotations_are_relion_matrices(tmp_path):
    t = _table(tmp_path)
    e = t.euler
    ref = Rotation.from_euler("ZYZ", e, degrees=True).as_matrix().transpose(0, 2, 1)
    np.testing.assert_allclose(t.rotations, ref, atol=1e-12)


def test_load_images_reads_the_right_images(tmp_path):
    t = _table(tmp_path)
    rows = np.array([11, 0, 7, 3, 3])
    imgs = t.load_images(rows)
    from cryovox.io.mrc import open_stack

    a, b = open_stack(tmp_path / "a.mrcs")[:], open_stack(tmp_path / "b.mrcs")[:]
    np.testing.assert_array_equal(imgs, np.stack([b[4], a[0], b[0], a[3], a[3]]))
    np.testing.assert_array_equal(t.load_images()[7:], b)
    sub = t.take(np.array([8, 9]))
    assert len(sub) == 2 and list(sub.image_index) == [1, 2]
    np.testing.assert_array_equal(sub.load_images(), b[1:3])
    np.testing.assert_allclose(sub.rotations, t.rotations[8:10])
    mask = np.zeros(12, bool)
    mask[[2, 5]] = True
    assert list(t.take(mask).image_index) == [2, 5]
    t.close()


def test_with_images_rescales_pixel_size(tmp_path):
    t = _table(tmp_path)
    d = t.with_images(tmp_path / "down.mrcs", np.arange(12), box=4)
    np.testing.assert_allclose(d.apix, 3.0)
    assert set(d.box) == {4}
    np.testing.assert_array_equal(d.shifts, t.shifts)  # Å: unchanged
    np.testing.assert_allclose(d.shifts_px, t.shifts / 3.0)
    assert set(d.image_file) == {str(tmp_path / "down.mrcs")}


def _write(path, text):
    path.write_text(text)
    return path


RELION30 = """
data_images
loop_
_rlnImageName #1
_rlnAngleRot #2
_rlnAngleTilt #3
_rlnAnglePsi #4
_rlnOriginX #5
_rlnOriginY #6
_rlnDefocusU #7
_rlnDefocusV #8
_rlnDefocusAngle #9
_rlnVoltage #10
_rlnSphericalAberration #11
_rlnDetectorPixelSize #12
_rlnMagnification #13
_rlnMicrographName #14
1@stacks/s.mrcs 10.0 20.0 30.0 2.0 -1.0 10000 11000 45 300 2.7 5.0 25000 m1.mrc
3@stacks/s.mrcs 11.0 21.0 31.0 0.5 0.25 12000 12500 -10 300 2.7 5.0 25000 m2.mrc
"""


def test_relion30_units_and_datadir(tmp_path):
    (tmp_path / "data").mkdir()
    write_stack(tmp_path / "data" / "s.mrcs", np.arange(3 * 16, dtype=np.float32).reshape(3, 4, 4), 1.0)
    star = _write(tmp_path / "p.star", RELION30)
    t = read_particles(star, datadir=tmp_path / "data")  # stacks/s.mrcs not there: basename in datadir
    assert len(t) == 2
    np.testing.assert_allclose(t.apix, 2.0)  # 5 µm · 1e4 / 25000
    np.testing.assert_allclose(t.shifts, [[4.0, -2.0], [1.0, 0.5]])  # px → Å
    assert list(t.image_index) == [0, 2] and list(t.box) == [4, 4]  # box from the stack's header
    assert t.image_file[0] == str(tmp_path / "data" / "s.mrcs")
    np.testing.assert_allclose(t.ctf["amplitude_contrast"], 0.1)  # RELION's default
    np.testing.assert_allclose(t.ctf["defocus_angle"], [45, -10])
    assert t.passthrough == ["rlnMicrographName"]
    np.testing.assert_array_equal(t.load_images([1])[0], np.arange(32, 48, dtype=np.float32).reshape(4, 4))
    write_star(tmp_path / "out.star", t)  # 3.0 in, 3.1 out
    u = read_particles(tmp_path / "out.star")
    np.testing.assert_allclose(u.shifts, t.shifts)
    np.testing.assert_allclose(u.apix, 2.0)
    assert "rlnOriginXAngst" in (tmp_path / "out.star").read_text()
    # --apix overrides and rescales px shifts
    np.testing.assert_allclose(read_particles(star, apix=1.0, box=4).shifts, [[2.0, -1.0], [0.5, 0.25]])


RELION31_OPTICS_LAST = """
data_particles
loop_
_rlnImageName
_rlnOpticsGroup
_rlnAngleRot
_rlnAngleTilt
_rlnAnglePsi
_rlnOriginXAngst
_rlnOriginYAngst
_rlnDefocusU
_rlnDefocusV
_rlnDefocusAngle
2@s.mrcs 2 1 2 3 0.5 0.6 10000 10100 5
1@s.mrcs 1 4 5 6 0.7 0.8 20000 20100 6

data_optics
loop_
_rlnOpticsGroup
_rlnOpticsGroupName
_rlnImagePixelSize
_rlnImageSize
_rlnVoltage
_rlnSphericalAberration
_rlnAmplitudeContrast
1 g1 1.1 4 300 2.7 0.1
2 g2 1.3 4 200 0.01 0.07
"""


def test_relion31_optics_after_particles(tmp_path):
    t = read_particles(_write(tmp_path / "p.star", RELION31_OPTICS_LAST))
    np.testing.assert_allclose(t.apix, [1.3, 1.1])
    np.testing.assert_allclose(t.ctf["cs"], [0.01, 2.7])
    np.testing.assert_allclose(t.ctf["voltage"], [200, 300])
    np.testing.assert_allclose(t.ctf["amplitude_contrast"], [0.07, 0.1])
    assert list(t.optics["name"]) == ["g1", "g2"]
    assert list(t.image_index) == [1, 0] and list(t.subset) == [0, 0]
    np.testing.assert_allclose(t.shifts_px, [[0.5 / 1.3, 0.6 / 1.3], [0.7 / 1.1, 0.8 / 1.1]])


# ----------------------------------------------------------------------------- bad input
def test_bad_star_inputs(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_particles(tmp_path / "missing.star")
    with pytest.raises(InputError, match="empty STAR"):
        read_particles(_write(tmp_path / "empty.star", ""))
    with pytest.raises(InputError, match="empty STAR"):
        read_particles(_write(tmp_path / "empty2.star", "data_particles\nloop_\n_rlnImageName #1\n"))
    with pytest.raises(InputError) as e:
        read_particles(_write(tmp_path / "noname.star", "data_\nloop_\n_rlnAngleRot\n_rlnDefocusU\n1 2\n"))
    assert str(e.value) == f"{tmp_path / 'noname.star'}: missing column rlnImageName"
    with pytest.raises(InputError, match="missing column rlnAngleTilt"):
        read_particles(_write(tmp_path / "t.star", "data_\nloop_\n_rlnImageName\n_rlnAngleRot\n_rlnAnglePsi\n"
                                                   "1@a.mrcs 1 2\n"), apix=1.0, box=8)
    with pytest.raises(InputError, match="missing column rlnVoltage"):
        read_particles(_write(tmp_path / "v.star", "data_\nloop_\n_rlnImageName\n_rlnDefocusU\n_rlnDefocusV\n"
                                                   "_rlnImagePixelSize\n1@a.mrcs 1 2 1.0\n"), box=8)
    with pytest.raises(InputError, match="optics group"):
        read_particles(_write(tmp_path / "g.star", RELION31_OPTICS_LAST.replace("2 g2 1.3", "3 g2 1.3")))
    with pytest.raises(InputError, match="not index@file"):
        read_particles(_write(tmp_path / "i.star", "data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n"
                                                   "0@a.mrcs 1.0\n"), box=8)
    with pytest.raises(InputError, match="unknown particle file type"):
        read_particles(_write(tmp_path / "x.txt", "hello"))


def test_image_index_past_stack_end(tmp_path):
    write_stack(tmp_path / "s.mrcs", np.zeros((3, 4, 4)), 1.0)
    star = _write(tmp_path / "p.star", "data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n"
                                       "000003@s.mrcs 1.0\n000004@s.mrcs 1.0\n")
    t = read_particles(star)
    assert t.load_images([0]).shape == (1, 4, 4)
    with pytest.raises(InputError) as e:
        t.load_images()
    msg = str(e.value)
    assert "\n" not in msg and msg == f"{tmp_path / 's.mrcs'}: image 4 (1-based) is past the stack's end (3 images)"
    with pytest.raises(InputError, match="past the stack's end"):
        t.check_images()


def test_missing_stack_is_named(tmp_path):
    t = read_particles(_write(tmp_path / "p.star", "data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n"
                                                   "1@gone.mrcs 1.0\n"), box=4)
    with pytest.raises(InputError, match="gone.mrcs: no such file"):
        t.load_images()


def test_bare_stack_with_cryodrgn_pickles(tmp_path):
    from cryovox.io.pickles import write_cryodrgn_ctf, write_cryodrgn_poses

    n, d = 6, 8
    write_stack(tmp_path / "s.mrcs", np.random.default_rng(0).standard_normal((n, d, d)), 1.0)
    rot = Rotation.random(n, random_state=1).as_matrix()
    shifts_px = np.random.default_rng(2).uniform(-2, 2, (n, 2))
    write_cryodrgn_poses(tmp_path / "poses.pkl", rot, shifts_px, box=d)
    ctf = {"box": d, "apix": 2.2, "defocus_u": np.linspace(1e4, 2e4, n), "defocus_v": np.linspace(1e4, 2e4, n) + 50,
           "defocus_angle": 12.0, "voltage": 300.0, "cs": 2.7, "amplitude_contrast": 0.1, "phase_shift": 0.0}
    write_cryodrgn_ctf(tmp_path / "ctf.pkl", ctf)
    t = read_particles(tmp_path / "s.mrcs", poses=tmp_path / "poses.pkl", ctf=tmp_path / "ctf.pkl")
    assert len(t) == n and set(t.box) == {d}
    np.testing.assert_allclose(t.apix, 2.2, rtol=1e-6)  # from the CTF pickle (float32)
    np.testing.assert_allclose(t.rotations, rot, atol=1e-6)
    np.testing.assert_allclose(t.shifts, shifts_px * 2.2, atol=1e-5)
    np.testing.assert_allclose(t.ctf["defocus_u"], ctf["defocus_u"], rtol=1e-6)
    five = _write(tmp_path / "p.star", "data_\nloop_\n_rlnImageName\n_rlnImagePixelSize\n"
                  + "".join(f"{i + 1}@s.mrcs 1.0\n" for i in range(5)))
    with pytest.raises(InputError, match="6 poses for 5 particles"):
        read_particles(five, poses=tmp_path / "poses.pkl")
