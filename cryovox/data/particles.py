"""Particle images as a torch Dataset: lazy loading, windowing, Fourier transform, centring.

:class:`ParticleDataset` wraps a :class:`cryovox.io.particles.ParticleTable` with poses. An item
(or a batch, through ``__getitems__``, which the DataLoader uses to read and transform a whole
batch at once) is a dict:

============ ========================== ===================================================
key          shape / dtype              meaning
============ ========================== ===================================================
``index``    ``(B,)`` int64             row of the particle in the table
``image``    ``(B, D, D//2+1)`` complex  centred half transform (:func:`~cryovox.core.fft.rfftn_c`)
                                        of the windowed image, translated by ``+shift`` so the
                                        particle centre sits at ``D // 2`` (docs/conventions.md)
``ctf``      ``(B, D, D//2+1)`` real     the particle's CTF in the same layout (ones without CTF)
``rot``      ``(B, 3, 3)``              pose matrix ``R`` (RELION's A, volume → image)
``shift``    ``(B, 2)``                 the shift ``(x, y)`` in pixels that was applied
============ ========================== ===================================================

Windowing: before the transform each image is multiplied by a soft circular mask, 1 inside
``window · D / 2`` and falling as a cosine to 0 at ``D / 2`` (cryoDRGN windows the same way),
which removes the box corners' noise and the edge discontinuity of periodic transforms.

Images are read from their stacks only when asked for (memory-mapped MRC), so a set larger
than memory streams; ``preload=True`` reads them all once. The dataset pickles without its open
files, so DataLoader workers (fork or spawn) and DistributedSampler work unchanged.
Use :func:`collate` as the DataLoader's ``collate_fn``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from cryovox.core.ctf import compute_ctf
from cryovox.core.fft import phase_ramp_2d, rfftn_c
from cryovox.core.masks import spherical_mask
from cryovox.errors import InputError
from cryovox.io.mrc import open_stack
from cryovox.io.particles import ParticleTable


def soft_window(size: int, inner: float = 0.85, dtype=torch.float32) -> Tensor:
    """``(D, D)`` circular window: 1 for ``r <= inner · D/2``, a raised cosine down to 0 at ``r = D/2``
    (:func:`cryovox.core.masks.spherical_mask` in 2D); ``inner >= 1``: no window (all ones)."""
    if inner >= 1:
        return torch.ones(size, size, dtype=dtype)
    return spherical_mask(size, inner * size / 2, (1 - inner) * size / 2, ndim=2, dtype=dtype)


def _fresh(table: ParticleTable) -> ParticleTable:
    """The same table without open stack handles (safe to pickle into worker processes)."""
    return ParticleTable(table.particles, table.optics, source=table.source)


class ParticleDataset(torch.utils.data.Dataset):
    """Particles with known poses for training (see the module docstring).

    table: particles (need poses; CTF optional); window: inner radius of the soft window as a
    fraction of ``D / 2`` (``>= 1``: none); preload: read every image into memory first.
    Raises InputError for a table without poses, with several pixel sizes or boxes, or whose
    stacks hold images of another box than the optics table says.
    """

    def __init__(self, table: ParticleTable, *, window: float = 0.85, preload: bool = False):
        src = table.source or "particles"
        if len(table) == 0:
            raise InputError(f"{src}: no particles")
        if not table.has_poses:
            raise InputError(f"{src}: no particle orientations (rlnAngleRot/rlnAngleTilt/rlnAnglePsi); "
                             "give poses with --poses P.pkl")
        boxes = np.unique(table.box)
        apixes = np.unique(np.round(table.apix, 6))
        if len(boxes) != 1 or len(apixes) != 1:
            raise InputError(f"{src}: particles have {len(boxes)} box sizes and {len(apixes)} pixel sizes; "
                             "one of each is needed")
        box = int(boxes[0])
        table.check_images()
        table.close()
        for f in dict.fromkeys(table.image_file):
            with open_stack(f) as st:
                stack_box = st.box
            if box <= 0:
                box = stack_box
            if stack_box != box:
                raise InputError(f"{f}: images are {stack_box} px but the optics table of {src} says {box} px")
        self.table = _fresh(table)
        self.box = box
        self.apix = float(apixes[0])
        self.window_inner = float(window)
        self.rot = torch.from_numpy(table.rotations.astype(np.float32))
        shifts = table.shifts_px
        self.shift = torch.from_numpy((np.zeros((len(table), 2)) if shifts is None else shifts).astype(np.float32))
        ctf = table.ctf
        self.ctf_params = None if ctf is None else {k: torch.from_numpy(v.astype(np.float64)) for k, v in ctf.items()}
        self.window = soft_window(box, window)
        self._images: np.ndarray | None = self.table.load_images() if preload else None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def has_ctf(self) -> bool:
        return self.ctf_params is not None

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["table"] = _fresh(self.table)
        return state

    def images(self, indices: Sequence[int]) -> Tensor:
        """Raw images ``(B, D, D)`` float32 of the given rows."""
        idx = np.asarray(indices, dtype=np.int64)
        if self._images is not None:
            return torch.from_numpy(self._images[idx])
        return torch.from_numpy(self.table.load_images(idx))

    def ctf(self, indices: Tensor) -> Tensor:
        """CTF ``(B, D, D//2+1)`` float32 of the given rows (ones without CTF)."""
        if self.ctf_params is None:
            return torch.ones(len(indices), self.box, self.box // 2 + 1)
        p = {k: v[indices] for k, v in self.ctf_params.items()}
        return compute_ctf(self.box, self.apix, half=True, dtype=torch.float32, **p)

    def __getitems__(self, indices: Sequence[int]) -> dict[str, Tensor]:
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        x = self.images(idx.numpy()) * self.window
        shift = self.shift[idx]
        f = rfftn_c(x, 2) * phase_ramp_2d(shift, self.box, half=True)
        return {"index": idx, "image": f, "ctf": self.ctf(idx), "rot": self.rot[idx], "shift": shift}

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[0] for k, v in self.__getitems__([int(i)]).items()}


def collate(items) -> dict[str, Tensor]:
    """DataLoader ``collate_fn``: a batch dict from ``__getitems__`` passes through; a list of items is stacked."""
    if isinstance(items, dict):
        return items
    return {k: torch.stack([it[k] for it in items]) for k in items[0]}


def iterate_batches(dataset: ParticleDataset, indices: Sequence[int], batch_size: int):
    """Batches of ``dataset`` over ``indices`` in order, in this process (no DataLoader)."""
    indices = list(indices)
    for start in range(0, len(indices), batch_size):
        yield dataset.__getitems__(indices[start:start + batch_size])
