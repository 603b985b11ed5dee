"""Every real RELION / cryoSPARC / cryoDRGN file in ../shared/data/cryodrgn parses, with values
read off the files by hand, and our readers reproduce cryoDRGN's own pickles of them."""

from __future__ import annotations

import mrcfile
import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from tests.conftest import SHARED, needs_shared_data

from cryovox.io.mrc import open_stack, read_map
from cryovox.io.particles import read_particles, write_star
from cryovox.io.pickles import read_cryodrgn_ctf, read_cryodrgn_poses, safe_load_pickle

pytestmark = [needs_shared_data, pytest.mark.filterwarnings("ignore::RuntimeWarning:mrcfile")]
D = SHARED / "cryodrgn"


def _relion_matrix(rot, tilt, psi):
    return Rotation.from_euler("ZYZ", [rot, tilt, psi], degrees=True).as_matrix().T


def test_relion30_pfcrt():
    t = read_particles(D / "FinalRefinement-OriginalParticles-PfCRT.star")
    assert len(t) == 5 and len(t.optics) == 1
    np.testing.assert_allclose(t.apix, 1.035)  # rlnDetectorPixelSize 1.035 µm, rlnMagnification 10000
    # first row: psi 98.225690 rot 16.093530 tilt 86.352776, origin (-0.14063, -0.04688) px
    np.testing.assert_allclose(t.euler[0], [16.093530, 86.352776, 98.225690])
    np.testing.assert_allclose(t.rotations[0], _relion_matrix(16.093530, 86.352776, 98.225690), atol=1e-12)
    np.testing.assert_allclose(t.shifts[0], [-0.14063 * 1.035, -0.04688 * 1.035])
    np.testing.assert_allclose(t.shifts[3], [0.140625 * 1.035, 0.015625 * 1.035])
    c = t.ctf
    assert (c["defocus_u"][2], c["defocus_v"][2], c["defocus_angle"][2]) == (15184.0, 16345.9, 10.870927)
    assert set(c["voltage"]) == {300.0} and set(c["cs"]) == {0.001} and set(c["amplitude_contrast"]) == {0.1}
    assert list(t.subset) == [2, 1, 2, 2, 2]
    assert list(t.image_index) == [0, 1, 2, 3, 4]
    assert t.image_file[0] == str(D / "Extract/job012/FinalRefinement-OriginalParticles-PfCRT.mrcs")
    assert t.particles["rlnImageOriginalName"][4] == "000006@J407/imported/subtracted.mrcs"
    assert list(t.box) == [0] * 5  # no stack, no box in a 3.0 STAR
    assert list(read_particles(D / "FinalRefinement-OriginalParticles-PfCRT.star", box=300).box) == [300] * 5


@pytest.mark.parametrize("name", ["relion31.star", "relion31.v2.star"])  # optics first / last
def test_relion31(name):
    t = read_particles(D / name)
    assert len(t) == 5
    np.testing.assert_allclose(t.apix, 2.806)
    assert list(t.box) == [256] * 5
    np.testing.assert_allclose(t.euler[1], [-100.20986, 80.488900, 123.774740])
    np.testing.assert_allclose(t.shifts[1], [-0.25248, 0.403454])  # rlnOriginXAngst/YAngst
    np.testing.assert_allclose(t.ctf["defocus_u"][4], 12725.541100)
    np.testing.assert_allclose(t.ctf["defocus_angle"][4], -160.39)
    np.testing.assert_allclose(t.ctf["cs"], 0.01)
    assert t.optics["rlnMicrographOriginalPixelSize"][0] == 1.403
    imgs = t.load_images([4, 0])
    with mrcfile.open(D / "relion31.mrcs", permissive=True) as m:
        np.testing.assert_array_equal(imgs, m.data[[4, 0]])


def test_relion31_six_optics_groups():
    t = read_particles(D / "relion31.6opticsgroups.star")
    assert len(t) == 139 and len(t.optics) == 6
    assert sorted(t.optics["apix"].unique()) == [1.24, 1.25]
    assert sorted(t.optics["cs"].unique()) == [2.6, 2.7]
    assert list(t.optics["name"]) == [f"opticsGroup{i}" for i in (5, 3, 2, 1, 4, 6)]
    # row 0: group 6 (1.25 Å, Cs 2.7); row 50: group 2 (1.24 Å); row 132: group 4 (Cs 2.6)
    assert (t.optics_group[0], t.apix[0], t.ctf["cs"][0]) == (6, 1.25, 2.7)
    assert (t.optics_group[50], t.apix[50]) == (2, 1.24)
    np.testing.assert_allclose(t.euler[50], [93.060250, 147.046502, -76.47542])
    np.testing.assert_allclose(t.shifts[50], [1.440179, -6.90701])
    np.testing.assert_allclose(t.ctf["defocus_v"][50], 11605.209604)
    assert t.image_index[50] == 154 and t.image_file[50].endswith("Polish/job802/Micrographs/test_0018_shiny.mrcs")
    assert (t.optics_group[132], t.ctf["cs"][132]) == (4, 2.6)
    assert t.particles["rlnGroupNumber"][132] == 2239
    assert t.optics["rlnOddZernike"][0].startswith("[1.70554063513,")


def test_relion5():
    t = read_particles(D / "relion5.star")
    assert len(t) == 17
    np.testing.assert_allclose(t.apix, 0.89)
    assert list(t.box) == [448] * 17
    np.testing.assert_allclose(t.ctf["voltage"], 100.0)
    np.testing.assert_allclose(t.ctf["cs"], 1.6)
    np.testing.assert_allclose(t.euler[0], [111.508618, 36.742536, 141.158035])
    np.testing.assert_allclose(t.shifts[0], [-3.12578, -1.41031])
    np.testing.assert_allclose(t.ctf["defocus_u"][0], 11949.061330)
    assert (t.image_index[1], t.image_file[1]) == (1, str(D / "toy_images_b.mrcs"))
    assert list(t.subset[:4]) == [1, 2, 2, 1]


def test_cryosparc_refinement():
    cs = D / "cryosparc_P12_J24_001_particles.cs"
    t = read_particles(cs)
    assert len(t) == 2019
    np.testing.assert_allclose(t.apix, 2.95)
    assert set(t.box) == {180}
    # first record: pose (2.3386633, -0.25595567, -1.2236784), shift (11.334375, -1.828125) px, split 1
    pose = np.array([2.3386633, -0.25595567, -1.2236784])
    np.testing.assert_allclose(t.rotations[0], Rotation.from_rotvec(pose).as_matrix().T, atol=1e-6)
    np.testing.assert_allclose(t.euler[0], Rotation.from_rotvec(pose).as_euler("ZYZ", degrees=True), atol=1e-5)
    np.testing.assert_allclose(t.shifts[0], np.array([11.334375, -1.828125]) * 2.95, rtol=1e-6)
    assert t.subset[0] == 2 and t.image_index[0] == 0
    c = t.ctf
    np.testing.assert_allclose([c["defocus_u"][0], c["defocus_v"][0]], [45591.37, 45309.793], rtol=1e-6)
    np.testing.assert_allclose(c["defocus_angle"][0], np.degrees(-1.3636448), rtol=1e-6)
    assert (c["voltage"][0], c["cs"][0], c["amplitude_contrast"][0]) == (200.0, 2.0, 0.07)
    # last record: idx 124, shift (-3.628125, 8.296875), split 1, df1 22815.318
    assert t.image_index[-1] == 124 and t.subset[-1] == 2
    np.testing.assert_allclose(t.shifts[-1], np.array([-3.628125, 8.296875]) * 2.95, rtol=1e-6)
    np.testing.assert_allclose(c["defocus_u"][-1], 22815.318, rtol=1e-6)
    assert t.image_file[-1] == str(D / "J19/extract/20150917_05265_DNA-TET-25k-DE20_raw.region_000.sum-all_003-072_particles.mrc")


def test_cryosparc_exported_without_alignments():
    t = read_particles(D / "cryosparc_J2_particles_exported.cs")
    assert len(t) == 22 and not t.has_poses and t.rotations is None and t.shifts is None
    np.testing.assert_allclose(t.apix, 1.345)
    assert set(t.box) == {300}
    assert t.image_file[0] == str(D / "J1/imported/000090334788266266069_18jam15b_0345_ali_DW.mrcs")  # '>' dropped
    assert t.image_index[-1] == 21
    np.testing.assert_allclose(t.ctf["defocus_u"][0], 16412.178, rtol=1e-6)
    np.testing.assert_allclose(t.ctf["defocus_angle"][0], np.degrees(0.86163914), rtol=1e-6)
    assert set(t.subset) == {0}


# ------------------------------------------------------------------ against cryoDRGN's pickles
def test_star_poses_equal_cryodrgn_parse():
    t = read_particles(D / "FinalRefinement-OriginalParticles-PfCRT.star", box=300)
    rot, trans = t.cryodrgn_poses()
    ref_rot, ref_trans = safe_load_pickle(D / "pose.star.pkl")
    np.testing.assert_allclose(rot, ref_rot, atol=1e-5)
    np.testing.assert_allclose(trans, ref_trans, atol=1e-7)
    r2, shifts_px = read_cryodrgn_poses(D / "pose.star.pkl", box=300)
    np.testing.assert_allclose(r2, t.rotations, atol=1e-12)
    np.testing.assert_allclose(shifts_px * 1.035, t.shifts, atol=1e-6)


def test_star_ctf_equals_cryodrgn_parse():
    t = read_particles(D / "FinalRefinement-OriginalParticles-PfCRT.star", box=300)
    ref = safe_load_pickle(D / "ctf1.pkl")
    np.testing.assert_allclose(t.cryodrgn_ctf(), ref, rtol=1e-6)


def test_cs_poses_and_ctf_equal_cryodrgn_parse():
    t = read_particles(D / "cryosparc_P12_J24_001_particles.cs")
    rot, trans = t.cryodrgn_poses()
    ref_rot, ref_trans = safe_load_pickle(D / "pose.cs.pkl")
    np.testing.assert_allclose(rot, ref_rot, atol=1e-5)
    np.testing.assert_allclose(trans, ref_trans, atol=1e-7)
    np.testing.assert_allclose(t.cryodrgn_ctf(), safe_load_pickle(D / "ctf2.pkl"), rtol=1e-6, atol=1e-4)


def test_cs_to_star_keeps_poses(tmp_path):
    t = read_particles(D / "cryosparc_P12_J24_001_particles.cs")
    write_star(tmp_path / "p.star", t)
    u = read_particles(tmp_path / "p.star")
    np.testing.assert_allclose(u.rotations, t.rotations, atol=1e-8)
    np.testing.assert_allclose(u.shifts, t.shifts, atol=1e-8)
    np.testing.assert_allclose(u.ctf["defocus_angle"], t.ctf["defocus_angle"], atol=1e-8)
    np.testing.assert_array_equal(u.image_file, t.image_file)


# ------------------------------------------------------------------ hand dataset
def test_hand_stack_with_pose_pickles():
    t = read_particles(D / "hand.mrcs", poses=D / "hand_rot_trans.pkl")
    assert len(t) == 100 and set(t.box) == {64}
    rot, trans = safe_load_pickle(D / "hand_rot_trans.pkl")
    np.testing.assert_allclose(t.rotations, rot, atol=1e-6)
    np.testing.assert_allclose(t.shifts_px, trans * 64, atol=1e-5)
    # first pose read off the pickle: trans (0.00673077, 0.05480769) of a 64-px box
    np.testing.assert_allclose(t.shifts_px[0], [0.00673077 * 64, 0.05480769 * 64], atol=1e-5)
    imgs = t.load_images(np.arange(90, 100))
    with mrcfile.open(D / "hand.mrcs", permissive=True) as m:
        np.testing.assert_array_equal(imgs, m.data[90:100])
    r = read_particles(D / "hand.mrcs", poses=D / "hand_rot.pkl")
    np.testing.assert_allclose(r.rotations, safe_load_pickle(D / "hand_rot.pkl"), atol=1e-6)
    np.testing.assert_array_equal(r.shifts, 0.0)
    assert len(open_stack(D / "hand.5.mrcs")) == 5


def test_hand_map():
    m = read_map(D / "hand-vol.mrc")
    assert m.data.shape == (64, 64, 64) and m.apix == 6.0 and m.origin == (0.0, 0.0, 0.0)
    with mrcfile.open(D / "hand-vol.mrc") as ref:
        np.testing.assert_array_equal(m.data, ref.data)


def test_other_cryodrgn_pickles():
    rot, shifts = read_cryodrgn_poses(D / "toy_rot_trans.pkl", box=30)
    assert rot.shape == (1000, 3, 3) and shifts.shape == (1000, 2)
    np.testing.assert_allclose(shifts[0], np.array([0.11387942, -0.07255188]) * 30, atol=1e-6)
    c = read_cryodrgn_ctf(D / "test_ctf.pkl")
    assert len(c["defocus_u"]) == 1000 and set(c["phase_shift"]) == {90.0} and set(c["box"]) == {30.0}
