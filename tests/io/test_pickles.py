"""Restricted unpickler and cryoDRGN pose/CTF pickle layouts."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest

from cryovox.errors import InputError
from cryovox.io.pickles import (read_cryodrgn_ctf, read_cryodrgn_poses, safe_load_pickle, write_cryodrgn_ctf,
                                write_cryodrgn_poses, write_pickle)


class _Evil:
    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


class _EvalEvil:
    def __reduce__(self):
        return (eval, ("__import__('pathlib').Path('/tmp/cryovox_eval_marker').touch()",))


def test_malicious_pickle_is_refused_and_not_run(tmp_path):
    marker = tmp_path / "pwned"
    for proto in (2, 4, 5):
        path = tmp_path / f"evil{proto}.pkl"
        path.write_bytes(pickle.dumps((np.eye(3)[None], _Evil(f"touch {marker}")), protocol=proto))
        with pytest.raises(InputError) as e:
            safe_load_pickle(path)
        assert "pickle contains" in str(e.value) and "system" in str(e.value) and "refused" in str(e.value)
        assert not marker.exists()
        with pytest.raises(InputError):
            read_cryodrgn_poses(path, 64)
    path = tmp_path / "eval.pkl"
    path.write_bytes(pickle.dumps(_EvalEvil()))
    with pytest.raises(InputError, match="builtins.eval, refused"):
        safe_load_pickle(path)
    assert not os.path.exists("/tmp/cryovox_eval_marker")


def test_plain_containers_and_arrays_load(tmp_path):
    obj = {"z": np.arange(6, dtype=np.float32).reshape(3, 2), "names": ["a", "b"], "k": (1, 2.5, None),
           "s": np.float64(3.5), "i": np.int64(7)}
    write_pickle(tmp_path / "w.pkl", obj)
    for proto in (2, 3, 5, None):
        path = tmp_path / "w.pkl" if proto is None else tmp_path / f"o{proto}.pkl"
        if proto is not None:
            path.write_bytes(pickle.dumps(obj, protocol=proto))
        back = safe_load_pickle(path)
        np.testing.assert_array_equal(back["z"], obj["z"])
        assert back["names"] == ["a", "b"] and back["k"] == (1, 2.5, None)
        assert back["s"] == 3.5 and back["i"] == 7


def test_not_a_pickle(tmp_path):
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="not a readable pickle"):
        safe_load_pickle(tmp_path / "x.pkl")
    with pytest.raises(InputError, match="no such file"):
        safe_load_pickle(tmp_path / "none.pkl")


def test_pose_pickle_round_trip_and_units(tmp_path):
    from scipy.spatial.transform import Rotation

    rot = Rotation.random(5, random_state=0).as_matrix()
    shifts_px = np.array([[1.0, -2.0], [0.5, 0.25], [0, 0], [3, 3], [-1, 1]])
    write_cryodrgn_poses(tmp_path / "p.pkl", rot, shifts_px, box=64)
    raw = safe_load_pickle(tmp_path / "p.pkl")
    np.testing.assert_allclose(raw[1], shifts_px / 64, rtol=1e-6)  # fraction of the box, same sign
    r, s = read_cryodrgn_poses(tmp_path / "p.pkl", box=64)
    np.testing.assert_allclose(r, rot, atol=1e-6)
    np.testing.assert_allclose(s, shifts_px, atol=1e-5)
    write_cryodrgn_poses(tmp_path / "r.pkl", rot)
    r, s = read_cryodrgn_poses(tmp_path / "r.pkl")
    assert s is None and r.shape == (5, 3, 3)
    with pytest.raises(InputError, match="box size is needed"):
        read_cryodrgn_poses(tmp_path / "p.pkl")
    write_pickle(tmp_path / "bad.pkl", np.ones((5, 3, 3)))
    with pytest.raises(InputError, match="not proper rotation"):
        read_cryodrgn_poses(tmp_path / "bad.pkl")


def test_ctf_pickle_round_trip(tmp_path):
    ctf = {"box": 128, "apix": 1.1, "defocus_u": np.array([1e4, 2e4]), "defocus_v": np.array([1.1e4, 2.1e4]),
           "defocus_angle": np.array([10.0, -20.0]), "voltage": 300, "cs": 2.7, "amplitude_contrast": 0.1,
           "phase_shift": 0}
    write_cryodrgn_ctf(tmp_path / "c.pkl", ctf)
    arr = safe_load_pickle(tmp_path / "c.pkl")
    assert arr.shape == (2, 9) and arr.dtype == np.float32
    np.testing.assert_allclose(arr[1], [128, 1.1, 2e4, 2.1e4, -20, 300, 2.7, 0.1, 0], rtol=1e-6)
    back = read_cryodrgn_ctf(tmp_path / "c.pkl")
    np.testing.assert_allclose(back["defocus_v"], [1.1e4, 2.1e4])
    write_pickle(tmp_path / "w.pkl", np.ones((3, 8)))
    with pytest.raises(InputError, match=r"\(N, 9\) is needed"):
        read_cryodrgn_ctf(tmp_path / "w.pkl")
