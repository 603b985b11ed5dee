"""Torch datasets over a corpus store (``cryovox curate`` output), for train-swan and train-flow.

:class:`VolumeDataset` reads samples lazily from the memory-mapped ``volumes.npy`` (nothing
is loaded up front; each DataLoader worker opens its own map) and applies optional
on-the-fly augmentation:

- ``rotate``: a uniformly random rotation (Haar measure on SO(3)) about the box centre,
  cubic B-spline interpolation (:func:`cryovox.core.transform.affine_resample`);
- ``crop``: a random ``crop³`` patch (start uniform over the positions inside the box); with
  ``rotate`` the patch is sampled straight from the rotated volume (one interpolation, only
  the patch's voxels), and equals cropping the fully rotated volume at that start;
- ``flip``: mirror each axis with probability ½ about the centre voxel. A flip changes the
  hand of the density (an odd number gives a molecule that cannot exist), so it is off by
  default.

Randomness is deterministic and independent of DataLoader workers, sampler order and
process: the augmentation of store row ``r`` at epoch ``e`` comes from a generator seeded
with ``hash(seed, e, r)``. Call :meth:`VolumeDataset.set_epoch` each epoch (as with
``DistributedSampler.set_epoch``) to draw new augmentations; DataLoader workers pick the new
epoch up when they are started for the epoch (the default, ``persistent_workers=False``).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from cryovox.io.corpus import Corpus


def _item_seed(seed: int, epoch: int, row: int) -> int:
    digest = hashlib.sha256(f"volumes:{seed}:{epoch}:{row}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def rotated_patch(vol: Tensor, R: Tensor | None, start: tuple[int, int, int], size: int, order: int = 3) -> Tensor:
    """The ``size³`` patch starting at voxel ``start`` (z, y, x) of ``vol`` ``(D, D, D)`` turned by ``R``
    ``(3, 3)`` about the box centre (None: no turn, a plain crop). With a rotation only the patch's
    voxels are interpolated (:func:`cryovox.core.transform.affine_resample`, ``order`` 3: cubic
    B-spline, 1: trilinear); the result equals rotating the whole volume, then cropping."""
    from cryovox.core.transform import affine_resample

    z, y, x = (int(v) for v in start)
    if R is None:
        return vol[z:z + size, y:y + size, x:x + size]
    D = vol.shape[-1]
    # offset (x, y, z) of the patch centre from the box centre
    o = torch.tensor([x + size // 2 - D // 2, y + size // 2 - D // 2, z + size // 2 - D // 2], dtype=torch.float64)
    Rt = R.to(torch.float64).T
    return affine_resample(vol, Rt.to(vol.dtype), shift=(Rt @ o).to(vol.dtype), out_size=size, order=order)


class VolumeDataset(Dataset):
    """Samples of a corpus store as float32 tensors ``(1, d, d, d)`` (channel first).

    corpus: the store folder or an open :class:`~cryovox.io.corpus.Corpus`; split: "train",
    "val", "test", several of them, or None for all; rotate / crop / flip: augmentation (see
    module docstring), crop in voxels (≤ box); order: interpolation order for rotations
    (3 cubic B-spline, 1 trilinear); seed: base seed of the augmentation; transform: an
    optional callable applied last (e.g. a model's own normalisation); return_index: also
    return the store row (``dataset.metadata`` is indexed by it) as ``(tensor, row)``.
    """

    def __init__(self, corpus: str | Path | Corpus, split: str | Sequence[str] | None = "train", *,
                 rotate: bool = False, crop: int | None = None, flip: bool = False, order: int = 3,
                 seed: int = 0, transform: Callable[[Tensor], Tensor] | None = None, return_index: bool = False):
        self.corpus = corpus if isinstance(corpus, Corpus) else Corpus(corpus)
        self.rows = self.corpus.indices(split)
        self.split = split
        box = self.corpus.box
        if crop is not None and not (1 <= crop <= box):
            raise ValueError(f"crop {crop} must lie in 1…{box} (the corpus box)")
        self.rotate, self.crop, self.flip, self.order = rotate, crop, flip, order
        self.seed, self.epoch = int(seed), 0
        self.transform, self.return_index = transform, return_index

    # ------------------------------------------------------------------ bookkeeping
    def __len__(self) -> int:
        return len(self.rows)

    def set_epoch(self, epoch: int) -> None:
        """Draw a new set of augmentations (deterministic per epoch)."""
        self.epoch = int(epoch)

    @property
    def box(self) -> int:
        """Edge of the returned volumes (the crop size when cropping)."""
        return self.crop or self.corpus.box

    @property
    def apix(self) -> float:
        return self.corpus.apix

    @property
    def metadata(self):
        """The corpus metadata rows of this dataset, in dataset order (``row`` = store index)."""
        return self.corpus.metadata.iloc[self.rows]

    # ----------------------------------------------------------------- augmentation
    def augmentation(self, i: int) -> tuple[Tensor | None, tuple[int, int, int] | None, tuple[int, ...]]:
        """The augmentation of item ``i`` at the current epoch: (rotation (3, 3) float64 or
        None, crop start (z, y, x) or None, flipped axes)."""
        from cryovox.core.rotations import random_rotations
        from cryovox.core.transform import random_flip_axes

        row = int(self.rows[i])
        gen = torch.Generator().manual_seed(_item_seed(self.seed, self.epoch, row))
        R = random_rotations(1, generator=gen)[0] if self.rotate else None
        start = None
        if self.crop is not None:
            hi = self.corpus.box - self.crop + 1
            start = tuple(int(v) for v in torch.randint(0, hi, (3,), generator=gen))
        axes = random_flip_axes(gen) if self.flip else ()
        return R, start, axes  # type: ignore[return-value]

    def __getitem__(self, i: int):
        from cryovox.core.transform import flip

        row = int(self.rows[i])
        vol = torch.from_numpy(np.array(self.corpus.volumes[row], dtype=np.float32))
        R, start, axes = self.augmentation(i)
        if R is not None or start is not None:
            vol = rotated_patch(vol, R, start or (0, 0, 0), self.crop or vol.shape[-1], order=self.order)
        if axes:
            vol = flip(vol, axes)
        out = vol.contiguous()[None]
        if self.transform is not None:
            out = self.transform(out)
        return (out, row) if self.return_index else out

    def __repr__(self) -> str:
        aug = [n for n, on in (("rotate", self.rotate), (f"crop {self.crop}", self.crop), ("flip", self.flip)) if on]
        return (f"VolumeDataset({str(self.corpus.path)!r}, split={self.split!r}, n={len(self)}, box={self.box}"
                + (f", {', '.join(aug)}" if aug else "") + ")")
