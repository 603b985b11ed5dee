"""ParticleDataset: centring by the known shift, window, DataLoader workers, DistributedSampler, bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from cryovox.core.fft import irfftn_c
from cryovox.data.particles import ParticleDataset, collate, soft_window
from cryovox.errors import InputError
from cryovox.io.mrc import write_stack
from cryovox.io.particles import ParticleTable, read_particles, write_star

BOX, APIX = 32, 2.0


def _blob_image(cx: float, cy: float, sigma: float = 2.0) -> np.ndarray:
    k = np.arange(BOX)
    return np.exp(-((k[None, :] - cx) ** 2 + (k[:, None] - cy) ** 2) / (2 * sigma ** 2))


def _table(tmp_path, shifts_px: np.ndarray, *, poses: bool = True, box: int = BOX) -> ParticleTable:
    """Blobs whose centres sit at ``D//2 - shift`` (RELION's origin convention); STAR written and read back."""
    imgs = np.stack([_blob_image(BOX // 2 - sx, BOX // 2 - sy) for sx, sy in shifts_px]).astype(np.float32)
    write_stack(tmp_path / "p.mrcs", imgs, APIX)
    n = len(imgs)
    rot = np.repeat(np.eye(3)[None], n, 0) if poses else None
    t = ParticleTable.from_arrays(str(tmp_path / "p.mrcs"), np.arange(n), apix=APIX, box=box, rotations=rot,
                                  shifts=shifts_px * APIX if poses else None,
                                  ctf={"defocus_u": 1e4, "defocus_v": 1e4, "voltage": 300.0, "cs": 2.7})
    write_star(tmp_path / "p.star", t)
    return read_particles(tmp_path / "p.star")


def test_images_are_centred_by_their_shift(tmp_path):
    shifts = np.array([[0.0, 0.0], [3.0, -2.0], [-1.25, 2.5]])
    ds = ParticleDataset(_table(tmp_path, shifts))
    batch = ds.__getitems__([0, 1, 2])
    centred = irfftn_c(batch["image"], BOX, 2).numpy()
    want = _blob_image(BOX // 2, BOX // 2)
    for img in centred:
        assert np.abs(img - want).max() < 1e-4
    np.testing.assert_allclose(batch["shift"].numpy(), shifts, atol=1e-6)
    assert batch["ctf"].shape == (3, BOX, BOX // 2 + 1)


def test_soft_window_profile():
    w = soft_window(BOX, 0.5).double().numpy()
    r_in, r_out = 0.5 * BOX / 2, BOX / 2
    k = np.arange(BOX) - BOX // 2
    r = np.sqrt(k[None, :] ** 2 + k[:, None] ** 2)
    want = np.where(r <= r_in, 1.0, np.where(r >= r_out, 0.0, 0.5 + 0.5 * np.cos(np.pi * (r - r_in) / (r_out - r_in))))
    np.testing.assert_allclose(w, want, atol=1e-6)


def test_workers_and_distributed_sampler_cover_every_particle_once(tmp_path):
    from torch.utils.data import DataLoader
    from torch.utils.data.distributed import DistributedSampler

    rng = np.random.default_rng(0)
    shifts = rng.uniform(-2, 2, (10, 2))
    ds = ParticleDataset(_table(tmp_path, shifts))
    clone = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives
    seen = {}
    for rank in (0, 1):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=3)
        loader = DataLoader(clone, batch_size=3, sampler=sampler, num_workers=2, collate_fn=collate)
        for batch in loader:
            for i, img in zip(batch["index"].tolist(), batch["image"]):
                seen.setdefault(i, img)
    assert sorted(seen) == list(range(10))
    direct = ds.__getitems__(list(range(10)))["image"]
    for i, img in seen.items():
        assert torch.equal(img, direct[i])


def test_table_without_poses_is_refused(tmp_path):
    with pytest.raises(InputError, match="no particle orientations"):
        ParticleDataset(_table(tmp_path, np.zeros((2, 2)), poses=False))


def test_stack_box_differing_from_optics_is_refused(tmp_path):
    with pytest.raises(InputError, match=f"images are {BOX} px but the optics table"):
        ParticleDataset(_table(tmp_path, np.zeros((2, 2)), box=BOX + 8))
