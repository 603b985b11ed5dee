"""VolumeDataset over a corpus store: lazy reads, splits, seeded augmentation, DataLoader
workers and DistributedSampler.

The store is written here with cryovox.io.corpus (shards + assemble) from arrays the test
knows, so every item can be checked against the array that went in.
"""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, DistributedSampler

from cryovox.core.transform import flip, rotate
from cryovox.data import VolumeDataset
from cryovox.io.corpus import Corpus, WorkDir, assemble, write_kept

BOX = 16
ENTRIES = [f"EMD-{1000 + i}" for i in range(10)]
PER_ENTRY = 2


def smooth_volume(seed: int) -> np.ndarray:
    """A band-limited random blob volume, zero near the border (so rotations lose nothing)."""
    rng = np.random.default_rng(seed)
    k = np.fft.fftfreq(BOX)
    kz, ky, kx = np.meshgrid(k, k, k, indexing="ij")
    F = np.zeros((BOX,) * 3, complex)
    for x, y, z in rng.uniform(-3.5, 3.5, (12, 3)):
        F += np.exp(-2j * np.pi * (kx * (x + BOX // 2) + ky * (y + BOX // 2) + kz * (z + BOX // 2)))
    F *= np.exp(-2 * np.pi**2 * 1.2**2 * (kx**2 + ky**2 + kz**2))
    return np.fft.ifftn(F).real.astype(np.float32)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    out = tmp_path_factory.mktemp("store")
    wd = WorkDir(out)
    wd.create({"test": True}, resume=False)
    truth = {}
    for e, eid in enumerate(ENTRIES):
        vols = np.stack([smooth_volume(100 * e + k) for k in range(PER_ENTRY)])
        rows = [{"entry_id": eid, "rotation": k, "apix": 4.0, "box": BOX} for k in range(PER_ENTRY)]
        write_kept(out, eid, vols, rows)
        truth[eid] = vols
    assemble(out, ENTRIES, {"test": True}, (0.6, 0.2, 0.2), seed=0, apix=4.0, box=BOX)
    return out, truth


def _truth_of(store, row: int) -> np.ndarray:
    out, truth = store
    md = Corpus(out).metadata
    return truth[md["entry_id"].iloc[row]][int(md["rotation"].iloc[row])]


def test_plain_items_are_the_stored_volumes_by_split(store):
    out, _ = store
    corpus = Corpus(out)
    sizes = {s: len(VolumeDataset(out, s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 6 * PER_ENTRY, "val": 2 * PER_ENTRY, "test": 2 * PER_ENTRY}
    assert len(VolumeDataset(out, None)) == len(corpus) == len(ENTRIES) * PER_ENTRY
    ds = VolumeDataset(out, ["val", "test"], return_index=True)
    seen = set()
    for i in range(len(ds)):
        x, row = ds[i]
        assert x.shape == (1, BOX, BOX, BOX) and x.dtype == torch.float32
        assert np.array_equal(x[0].numpy(), _truth_of(store, row))
        assert corpus.metadata["split"].iloc[row] in ("val", "test")
        seen.add(corpus.metadata["entry_id"].iloc[row])
    assert len(seen) == 4  # whole entries: both samples of each
    assert list(ds.metadata.index) == list(ds.rows)


def test_lazy_memmap_and_pickling(store):
    out, _ = store
    ds = VolumeDataset(out, "train")
    assert ds.corpus._volumes is None  # nothing opened yet
    _ = ds[0]
    assert isinstance(ds.corpus._volumes, np.memmap)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone.corpus._volumes is None and len(pickle.dumps(ds)) < 20_000
    assert torch.equal(clone[3], ds[3])


def test_rotation_and_crop_are_seeded_and_match_two_step_oracle(store):
    out, _ = store
    ds = VolumeDataset(out, "train", rotate=True, crop=10, flip=True, seed=7)
    again = VolumeDataset(out, "train", rotate=True, crop=10, flip=True, seed=7)
    other_seed = VolumeDataset(out, "train", rotate=True, crop=10, flip=True, seed=8)
    for i in range(len(ds)):
        x = ds[i]
        assert x.shape == (1, 10, 10, 10)
        assert torch.equal(x, again[i])
        # oracle: rotate the whole volume, crop at the start, flip
        R, start, axes = ds.augmentation(i)
        full = rotate(torch.from_numpy(_truth_of(store, int(ds.rows[i]))), R.float())
        z, y, xx = start
        ref = flip(full[z:z + 10, y:y + 10, xx:xx + 10], axes)
        assert torch.allclose(x[0], ref, atol=1e-5)
    assert not torch.equal(ds[0], other_seed[0])
    before = ds[0].clone()
    ds.set_epoch(1)
    assert not torch.equal(ds[0], before)
    ds.set_epoch(0)
    assert torch.equal(ds[0], before)
    # rotations are uniform: the rotated z axis has mean ~0 and E[cos²] = 1/3 over many items
    zs = []
    for e in range(40):
        ds.set_epoch(e)
        zs += [ds.augmentation(i)[0][:, 2] for i in range(len(ds))]
    zs = torch.stack(zs)
    assert zs.mean(0).abs().max() < 0.1 and abs(float((zs[:, 2] ** 2).mean()) - 1 / 3) < 0.05


def test_crop_without_rotation_is_a_sub_block(store):
    out, _ = store
    ds = VolumeDataset(out, "test", crop=5, seed=1)
    starts = set()
    for i in range(len(ds)):
        _, start, _ = ds.augmentation(i)
        z, y, x = start
        vol = _truth_of(store, int(ds.rows[i]))
        assert np.array_equal(ds[i][0].numpy(), vol[z:z + 5, y:y + 5, x:x + 5])
        starts.add(start)
    assert len(starts) > 1
    with pytest.raises(ValueError):
        VolumeDataset(out, "test", crop=BOX + 1)


def test_dataloader_workers_and_distributed_sampler(store):
    out, _ = store
    ds = VolumeDataset(out, None, rotate=True, seed=3, order=1)
    ds.set_epoch(2)
    serial = torch.cat(list(DataLoader(ds, batch_size=4, num_workers=0)))
    parallel = torch.cat(list(DataLoader(ds, batch_size=4, num_workers=2)))
    assert serial.shape == (len(ds), 1, BOX, BOX, BOX)
    assert torch.equal(serial, parallel)  # augmentation does not depend on the worker
    # two ranks see disjoint halves that cover the dataset, and the same item is the same tensor
    seen = []
    for rank in range(2):
        sampler = DistributedSampler(ds, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(2)
        idx = list(sampler)
        for j in idx[:2]:
            assert torch.equal(ds[j], serial[j])
        seen += idx
    assert sorted(seen) == list(range(len(ds)))
