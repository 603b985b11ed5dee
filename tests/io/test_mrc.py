"""MRC maps and stacks: round trips, header fields read off raw bytes, lazy reading, bad input."""

from __future__ import annotations

import os
import resource
import struct

import mrcfile
import numpy as np
import pytest
import torch

from cryovox.errors import InputError
from cryovox.io.mrc import MapData, StackWriter, open_stack, read_map, write_map, write_stack


def _raw_header(path):
    """(nx, ny, nz, mode, cella xyz, mx my mz, nxstart.., origin xyz) straight from the bytes."""
    b = open(path, "rb").read(1024)
    nx, ny, nz, mode, nxs, nys, nzs, mx, my, mz = struct.unpack("<10i", b[:40])
    cella = struct.unpack("<3f", b[40:52])
    origin = struct.unpack("<3f", b[196:208])
    return dict(n=(nx, ny, nz), mode=mode, nstart=(nxs, nys, nzs), m=(mx, my, mz), cella=cella, origin=origin)


@pytest.mark.parametrize("name", ["v.mrc", "v.map", "v.map.gz"])
def test_map_round_trip_keeps_apix_origin_nstart(tmp_path, name):
    rng = np.random.default_rng(0)
    vol = rng.standard_normal((10, 10, 10)).astype(np.float32)
    path = tmp_path / name
    write_map(path, vol, 1.37, origin=(12.5, -3.0, 7.25), nstart=(-5, 4, 100))
    m = read_map(path)
    assert isinstance(m, MapData)
    np.testing.assert_array_equal(m.data, vol)
    assert m.apix == pytest.approx(1.37, abs=1e-6)
    assert m.origin == pytest.approx((12.5, -3.0, 7.25))
    assert m.nstart == (-5, 4, 100)
    if not name.endswith(".gz"):
        h = _raw_header(path)  # independent of mrcfile: read the bytes
        assert h["n"] == (10, 10, 10) and h["mode"] == 2
        assert h["cella"][0] / h["m"][0] == pytest.approx(1.37, abs=1e-6)
        assert h["origin"] == pytest.approx((12.5, -3.0, 7.25))
        assert h["nstart"] == (-5, 4, 100)
        assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_write_map_accepts_tensor_and_refuses_nan(tmp_path):
    vol = torch.arange(27, dtype=torch.float64).reshape(3, 3, 3)
    write_map(tmp_path / "t.mrc", vol, 2.0)
    np.testing.assert_array_equal(read_map(tmp_path / "t.mrc").data, vol.numpy().astype(np.float32))
    bad = np.zeros((4, 4, 4), np.float32)
    bad[1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        write_map(tmp_path / "bad.mrc", bad, 1.0)
    assert not (tmp_path / "bad.mrc").exists()


def test_read_real_relion_style_header_fields(tmp_path):
    # a stack with ispg=0 and no MAP id, as some RELION versions write: strict mrcfile refuses it
    data = np.arange(2 * 6 * 6, dtype=np.float32).reshape(2, 6, 6)
    path = tmp_path / "relion.mrcs"
    with mrcfile.new(path) as m:
        m.set_data(data)
        m.voxel_size = 1.5
        m.header.ispg = 0
    raw = bytearray(path.read_bytes())
    raw[208:212] = b"\0\0\0\0"  # wipe the MAP id
    raw[212:216] = b"\0\0\0\0"  # and the machine stamp
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError):
        mrcfile.open(path, permissive=False).close()
    st = open_stack(path)
    assert (len(st), st.box, st.apix) == (2, 6, 1.5)
    np.testing.assert_array_equal(st[1], data[1:2])


def test_axis_order_from_mapc_mapr_maps(tmp_path):
    vol = np.random.default_rng(1).standard_normal((4, 5, 6)).astype(np.float32)  # file axes (s, r, c)
    path = tmp_path / "perm.mrc"
    with mrcfile.new(path) as m:
        m.set_data(vol)
        m.voxel_size = 1.0
        m.header.mapc, m.header.mapr, m.header.maps = 3, 2, 1  # columns are z, sections are x
    m = read_map(path, cubic=False)
    # file element [s, r, c] = V(x=s, y=r, z=c); read_map returns [z, y, x]
    np.testing.assert_array_equal(m.data, vol.transpose(2, 1, 0))


def test_integer_modes_read_as_float(tmp_path):
    vol = (np.arange(8 ** 3) % 200 - 100).astype(np.int16).reshape(8, 8, 8)
    with mrcfile.new(tmp_path / "i.mrc") as m:
        m.set_data(vol)
        m.voxel_size = 3.0
    out = read_map(tmp_path / "i.mrc")
    assert out.data.dtype == np.float32
    np.testing.assert_array_equal(out.data, vol.astype(np.float32))


# ----------------------------------------------------------------------------- bad input
def _one_line(err: pytest.ExceptionInfo) -> str:
    msg = str(err.value)
    assert "\n" not in msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "nope.mrc")
    assert "nope.mrc: no such file" in _one_line(e)
    with pytest.raises(InputError):
        open_stack(tmp_path / "nope.mrcs")


def test_truncated_map_and_stack(tmp_path):
    path = tmp_path / "t.mrc"
    write_map(path, np.ones((8, 8, 8), np.float32), 1.0)
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) - 100])
    with pytest.raises(InputError) as e:
        read_map(path)
    assert "truncated" in _one_line(e) and str(path) in str(e.value)
    with pytest.raises(InputError, match="truncated"):
        open_stack(path)
    path.write_bytes(raw[:500])  # not even a header
    with pytest.raises(InputError, match="not a readable MRC"):
        read_map(path)


@pytest.mark.filterwarnings("ignore:Data array contains NaN")
def test_nan_map(tmp_path):
    vol = np.zeros((6, 6, 6), np.float32)
    vol[0, 0, 0] = np.inf
    vol[1, 1, 1] = np.nan
    with mrcfile.new(tmp_path / "nan.mrc") as m:
        m.set_data(vol)
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "nan.mrc")
    assert "2 NaN/Inf" in _one_line(e)


def test_non_cubic_map(tmp_path):
    write_stack(tmp_path / "nc.mrc", np.zeros((5, 6, 6), np.float32), 1.0)  # 6×6×5
    with pytest.raises(InputError) as e:
        read_map(tmp_path / "nc.mrc")
    assert "6×6×5; a cubic map is needed" in _one_line(e)
    assert read_map(tmp_path / "nc.mrc", cubic=False).data.shape == (5, 6, 6)


def test_anisotropic_voxels(tmp_path):
    with mrcfile.new(tmp_path / "a.mrc") as m:
        m.set_data(np.zeros((4, 4, 4), np.float32))
        m.voxel_size = (1.0, 1.0, 1.2)
    with pytest.raises(InputError, match="anisotropic"):
        read_map(tmp_path / "a.mrc")


def test_complex_mode_refused(tmp_path):
    with mrcfile.new(tmp_path / "c.mrc") as m:
        m.set_data(np.zeros((4, 4, 4), np.complex64))
    with pytest.raises(InputError, match="mode 4"):
        read_map(tmp_path / "c.mrc")


# ----------------------------------------------------------------------------- stacks
def test_stack_indexing_matches_mrcfile(tmp_path):
    rng = np.random.default_rng(2)
    imgs = rng.standard_normal((9, 12, 12)).astype(np.float32)
    write_stack(tmp_path / "s.mrcs", imgs, 2.5)
    with mrcfile.open(tmp_path / "s.mrcs") as m:  # strict mode: our writer makes valid files
        ref = m.data.copy()
        assert m.voxel_size.x == pytest.approx(2.5)
    np.testing.assert_array_equal(ref, imgs)
    with open_stack(tmp_path / "s.mrcs") as st:
        assert (len(st), st.box, st.apix, st.shape) == (9, 12, 2.5, (9, 12, 12))
        np.testing.assert_array_equal(st[3], imgs[3:4])
        np.testing.assert_array_equal(st[-1], imgs[8:9])
        np.testing.assert_array_equal(st[2:7:2], imgs[2:7:2])
        idx = np.array([8, 0, 3, 3])
        np.testing.assert_array_equal(st[idx], imgs[idx])
        np.testing.assert_array_equal(st[np.array([4, 5, 6])], imgs[4:7])
        assert st[idx].dtype == np.float32
        with pytest.raises(InputError) as e:
            st[np.array([1, 9])]
        assert "index 9 is past the stack's end (9 images)" in _one_line(e)
        with pytest.raises(InputError):
            st[9]


def test_single_image_is_a_stack_of_one(tmp_path):
    img = np.arange(16, dtype=np.float32).reshape(4, 4)
    with mrcfile.new(tmp_path / "one.mrc") as m:
        m.set_data(img)
    st = open_stack(tmp_path / "one.mrc")
    assert len(st) == 1
    np.testing.assert_array_equal(st[0], img[None])


def test_gzipped_stack_is_loaded(tmp_path):
    imgs = np.random.default_rng(3).standard_normal((3, 8, 8)).astype(np.float32)
    with mrcfile.new(tmp_path / "s.mrcs.gz", compression="gzip") as m:
        m.set_data(imgs)
        m.set_image_stack()
    st = open_stack(tmp_path / "s.mrcs.gz")
    np.testing.assert_array_equal(st[np.array([2, 0])], imgs[[2, 0]])


def test_huge_stack_streams(tmp_path):
    # an 8 GiB stack (sparse file: takes no disk space) opens lazily: reading a few images
    # must not pull the stack into memory (peak resident set checked, not wall time)
    n, d = 32768, 256
    path = tmp_path / "huge.mrcs"
    with StackWriter(path, d, 1.0) as w:
        w.write(np.zeros((1, d, d), np.float32))
    raw = bytearray(path.read_bytes()[:1024])
    raw[8:12] = struct.pack("<i", n)  # nz
    with open(path, "wb") as f:
        f.write(raw)
        f.truncate(1024 + n * d * d * 4)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # peak resident set, KiB
    st = open_stack(path)
    last = st[n - 1]
    mid = st[np.array([10, 20000, 30000])]
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 256 * 1024  # nowhere near 8 GiB read
    assert len(st) == n and last.shape == (1, d, d) and mid.shape == (3, d, d)
    assert not last.any()


def test_stack_writer_chunks_and_header_stats(tmp_path):
    rng = np.random.default_rng(4)
    chunks = [rng.standard_normal((k, 10, 10)).astype(np.float32) for k in (3, 1, 5)]
    path = tmp_path / "out" / "w.mrcs"
    with StackWriter(path, 10, 0.9) as w:
        for c in chunks:
            w.write(torch.from_numpy(c) if c.shape[0] == 1 else c)
        w.write(chunks[0][0])  # a single 2D image
        assert not path.exists()  # only renamed on success
    allimgs = np.concatenate(chunks + [chunks[0][:1]])
    with mrcfile.open(path) as m:
        np.testing.assert_array_equal(m.data, allimgs)
        assert m.header.dmean == pytest.approx(allimgs.mean(), abs=1e-5)
        assert m.header.rms == pytest.approx(allimgs.std(), rel=1e-5)
        assert m.header.dmin == allimgs.min() and m.header.dmax == allimgs.max()
        assert m.voxel_size.x == pytest.approx(0.9) and m.is_image_stack()
    assert mrcfile.validate(str(path), print_file=open(os.devnull, "w"))


def test_stack_writer_leaves_nothing_on_error(tmp_path):
    with pytest.raises(RuntimeError):
        with StackWriter(tmp_path / "x.mrcs", 4, 1.0) as w:
            w.write(np.zeros((2, 4, 4), np.float32))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError):
        with StackWriter(tmp_path / "y.mrcs", 4, 1.0) as w:
            w.write(np.zeros((2, 5, 5), np.float32))
    assert list(tmp_path.iterdir()) == []
