"""Fourier-slice projection and backprojection (central-slice theorem), the one Python API.

Storage
-------
Fourier volumes are centred half transforms, the layout of :func:`cryovox.core.fft.rfftn_c`:
complex ``(Dv, Dv, Dv // 2 + 1)`` indexed ``[z, y, x]``; element ``[iz, iy, ix]`` holds the
frequency ``(x, y, z) = (ix, iy - Dv // 2, iz - Dv // 2)`` in cycles per box. Images likewise
``(D, D // 2 + 1)``. Samples with ``x < 0`` are the complex conjugates of ``-p`` (Friedel).

Sampling (trilinear)
--------------------
Image pixel ``k = (kx, ky)`` with ``kx² + ky² <= radius²`` (``radius`` in image pixels, default
``D / 2``) samples the volume at ``p = pad · Rᵀ (kx, ky, 0)ᵀ``, ``R`` the pose matrix of
docs/conventions.md (RELION's A). If ``p.x < 0`` it takes ``conj(V(-p))``. The 8 neighbours
``floor(p) + {0,1}³`` are weighted trilinearly; neighbours outside the stored grid count as 0.
Pixels outside ``radius`` are 0. ``pad`` is the oversampling (RELION's padding factor): the
volume box is ``Dv = pad · D``; images are always ``D`` (no image crop is needed: the volume
transform is sampled at ``pad`` times the image frequency, as RELION's projector does).

Adjointness
-----------
``backproject`` is the exact adjoint of ``project`` (for ``coeffs = 1``) in the real inner
product of the stored half arrays, ``⟨a, b⟩ = Re Σ conj(a) · b`` over every stored element
(no Hermitian weights). This is also the inner product of torch's complex autograd, so the
gradient of ``project`` with respect to the bias is ``backproject`` of the output gradient.

Relation to RELION
------------------
Follows RELION: padding factor (default 2 in :func:`volume_to_fourier`), trilinear
interpolation with the Friedel flip at ``x < 0``, sinc² gridding correction in real space,
data (CTF·image) and weight (CTF²) accumulated separately, ``radius`` ``D / 2`` by default.
Differs: (1) the gridding correction is the exact one for trilinear interpolation, the separable
product ``sinc²(x/Dv) sinc²(y/Dv) sinc²(z/Dv)``, where RELION uses the radial ``sinc²(r/Dv)``;
(2) RELION inserts the image column ``kx = 0`` only for ``ky >= 0`` ("x = 0 plane inserted once")
and skips pixels whose weight is <= 0; cryovox's ``backproject`` is the exact adjoint of
``project`` and inserts every stored pixel, so the ``kx = 0`` line (whose ``ky < 0`` half repeats
the ``ky > 0`` half by Friedel symmetry) lands twice in both data and weight: the ratio
data / weight is unchanged, a Wiener constant added to the weight acts half as strongly there.
Callers that want RELION's counting zero that half-column (``images[..., :D//2, 0] = 0`` and
the same for ``weights``). (3) RELION's volumes carry a margin of voxels so that
``floor(p) + 1`` never leaves the array; cryovox treats such neighbours as zero. This only
touches samples within one voxel of the volume's Nyquist (``p.x >= Dv / 2``, or ``p.y``,
``p.z >= Dv / 2 - 1`` for even ``Dv``, whose grid has no ``+Dv / 2`` plane), i.e. the image's
last frequency shell at ``pad = 1`` and its Nyquist at ``pad = 2``.

Accuracy: trilinear interpolation is exact at grid points (rotations that permute axes: the
slice equals the FFT of the real-space projection to < 1e-6 in the tests) and an approximation
elsewhere: the sinc² correction removes its mean attenuation, but aliases of relative size
~ ``(r / Dv)²`` (``r`` = distance of the density from the centre) remain. Against exact
projections of Gaussian blobs within ``D / 5`` of the centre (boxes 32, 33, 64, random poses)
the relative error is ~2 % at ``pad = 2`` and ~0.8 % at ``pad = 3`` (tests/core/test_slicing.py).

Kernels
-------
With the compiled extension (``csrc/``, built by ``pip install --no-build-isolation -e .``)
the CPU ops are C++/OpenMP, deterministic: the scatters (basis/bias gradients, backprojection)
give each thread its own slab of z planes, so every voxel sums in ascending (image, pixel)
order for any thread count. The CUDA ops (where built) accumulate with atomics: reproducible
to rounding, not bitwise. Without the extension everything runs on the reference (one warning).
A single volume (``K <= 1``: one basis volume and/or the bias, and ``backproject``) takes a
specialised CPU path: geometry computed for blocks of pixels at once (vectorised), then the cell's
4 rows of 2 adjacent voxels read or updated directly. The backward computes only the gradients
asked for: with poses that do not require grad no rotation-gradient work is done at all.
The ops have meta (shape-only) kernels, so ``torch.compile(fullgraph=True)``, FakeTensorMode and
meta tensors trace them; the kernels are loaded when this module is imported.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cryovox.core import _ext
from cryovox.core._slicing_ref import backproject_ref, project_ref
from cryovox.core.fft import irfftn_c, rfftn_c

# Load the compiled ops (if built) now, not on the first call: a first call inside torch.compile
# would otherwise have dynamo trace the import. The ops carry meta kernels (csrc/slicing_cpu.cpp),
# so FakeTensorMode and torch.compile(fullgraph=True) trace project / backproject without data.
_ext.available("cpu")

__all__ = [
    "project",
    "project_volume",
    "backproject",
    "gridding_correction",
    "volume_to_fourier",
    "fourier_to_volume",
]


def _image_size(vol_size: int, pad: int) -> int:
    if pad < 1 or vol_size % pad:
        raise ValueError(f"volume box {vol_size} is not a multiple of pad={pad}")
    return vol_size // pad


def _check_rot(rot: Tensor, batch: int | None = None) -> None:
    if rot.ndim != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"rot must be (B, 3, 3), got {tuple(rot.shape)}")
    if batch is not None and rot.shape[0] != batch:
        raise ValueError(f"rot has {rot.shape[0]} poses for {batch} images")


def _use_kernel(tensors: list[Tensor | None]) -> bool:
    present = [t for t in tensors if t is not None]
    return _ext.ops(present[0].device) is not None


def project(basis: Tensor | None, coeffs: Tensor | None, bias: Tensor | None, rot: Tensor, *,
            radius: float | None = None, pad: int = 1) -> Tensor:
    """Central slices of ``Σ_k coeffs[b, k] · basis[k] + bias`` at each pose, without forming it.

    basis: ``(K, Dv, Dv, Dv//2+1)`` complex half volumes or ``None``; coeffs: ``(B, K)`` real
    (required with ``basis``); bias: ``(Dv, Dv, Dv//2+1)`` complex or ``None``; rot: ``(B, 3, 3)``
    pose matrices (converted to the volumes' real dtype). ``radius``: in image pixels (cycles per
    image box), default ``D / 2``; ``pad``: volume box / image box (see module docstring).
    Returns ``(B, D, D//2+1)`` complex half images, ``D = Dv // pad``. Differentiable in basis,
    coeffs, bias and rot (compiled kernels when built, else the pure-PyTorch reference).

    The compiled kernels read the basis voxel-major (the K values of a voxel together). A model
    that stores its basis as a ``(Dv, Dv, Dv//2+1, K)`` tensor and passes ``basis.permute(3, 0, 1, 2)``
    avoids a transpose of the whole basis on every call (and its gradient arrives in that layout).
    """
    if basis is None and bias is None:
        raise ValueError("project needs a basis, a bias or both")
    _check_rot(rot)
    ref = basis if basis is not None else bias
    if not ref.is_complex():
        raise ValueError("Fourier volumes must be complex (rfftn_c layout)")
    vol_size = ref.shape[-3]
    shape = (vol_size, vol_size, vol_size // 2 + 1)
    if basis is not None:
        if basis.ndim != 4 or tuple(basis.shape[1:]) != shape:
            raise ValueError(f"basis must be (K, {vol_size}, {vol_size}, {vol_size // 2 + 1}), got {tuple(basis.shape)}")
        if coeffs is None or coeffs.shape != (rot.shape[0], basis.shape[0]):
            raise ValueError(f"coeffs must be (B, K) = ({rot.shape[0]}, {basis.shape[0]})")
        if coeffs.is_complex():
            raise ValueError("coeffs must be real")
    if bias is not None:
        if tuple(bias.shape) != shape:
            raise ValueError(f"bias must be {shape}, got {tuple(bias.shape)}")
        if basis is not None and bias.dtype != basis.dtype:
            raise ValueError("basis and bias must have the same dtype")
    size = _image_size(vol_size, pad)
    r = float(size / 2 if radius is None else radius)
    rot = rot.to(ref.real.dtype)
    if _use_kernel([basis, bias]):
        return _ext.project(basis, coeffs, bias, rot, r, pad)
    return project_ref(basis, coeffs, bias, rot, r, pad)


def project_volume(vol_ft: Tensor, rot: Tensor, *, radius: float | None = None, pad: int = 1) -> Tensor:
    """Central slices of one Fourier volume ``(Dv, Dv, Dv//2+1)`` at poses ``(B, 3, 3)``.

    Returns ``(B, D, D//2+1)``; same as ``project(None, None, vol_ft, rot, ...)``.
    """
    return project(None, None, vol_ft, rot, radius=radius, pad=pad)


def backproject(images: Tensor, rot: Tensor, weights: Tensor | None = None, *,
                radius: float | None = None, pad: int = 1) -> tuple[Tensor, Tensor]:
    """Insert half images into a Fourier volume: the adjoint of :func:`project` (trilinear scatter).

    images: ``(B, D, D//2+1)`` complex (e.g. CTF · image); rot: ``(B, 3, 3)``; weights:
    ``(B, D, D//2+1)`` real (e.g. CTF²) or ``None`` for 1 per pixel. Returns ``(data, weight)``:
    ``(Dv, Dv, Dv//2+1)`` complex Σ of the scattered images and ``(Dv, Dv, Dv//2+1)`` real Σ of the
    weights scattered with the same trilinear weights (``Dv = pad · D``). Pixels outside ``radius``
    (default ``D / 2``) are ignored. A Wiener-style map is ``data / (weight + 1/SNR)``.
    """
    if images.ndim != 3 or images.shape[-1] != images.shape[-2] // 2 + 1 or not images.is_complex():
        raise ValueError(f"images must be complex (B, D, D//2+1), got {tuple(images.shape)} {images.dtype}")
    _check_rot(rot, images.shape[0])
    if weights is not None:
        if weights.shape != images.shape or weights.is_complex():
            raise ValueError(f"weights must be real {tuple(images.shape)}, got {tuple(weights.shape)}")
        weights = weights.to(images.real.dtype)
    if pad < 1:
        raise ValueError(f"pad must be >= 1, got {pad}")
    size = images.shape[-2]
    r = float(size / 2 if radius is None else radius)
    rot = rot.to(images.real.dtype)
    grad_needed = torch.is_grad_enabled() and any(
        t is not None and t.requires_grad for t in (images, rot, weights))
    if not grad_needed and _use_kernel([images]):
        return _ext.backproject(images, rot, weights, r, pad)
    return backproject_ref(images, rot, weights, r, pad)


def gridding_correction(size: int, pad: int = 2, ndim: int = 3, *, dtype=torch.float64,
                        device=None) -> Tensor:
    """Real-space attenuation of trilinear Fourier interpolation, ``(size,)*ndim``.

    ``Π_a sinc²(n_a / (pad · size))`` with ``n_a = i_a - size // 2`` (torch's normalised sinc):
    the Fourier transform of the trilinear kernel on a grid of ``pad · size``. Divide a volume
    by it before :func:`project` (done by :func:`volume_to_fourier`) and a backprojected
    reconstruction by it after (done by :func:`fourier_to_volume`).
    """
    n = torch.arange(size, dtype=dtype, device=device) - size // 2
    s = torch.sinc(n / (pad * size)) ** 2
    out = s
    for _ in range(ndim - 1):
        out = out[..., None] * s
    return out


def volume_to_fourier(vol: Tensor, pad: int = 2, gridding: bool = True) -> Tensor:
    """Real volumes ``(..., D, D, D)`` → half transforms ``(..., pD, pD, pD//2+1)`` for :func:`project`.

    Divides by :func:`gridding_correction` (when ``gridding``), zero-pads to ``pad · D`` keeping
    the origin voxel ``D // 2`` at ``pD // 2``, then :func:`rfftn_c`. Use with
    ``project(..., pad=pad)`` to get ``D``-pixel images.
    """
    D = vol.shape[-1]
    if vol.shape[-3:] != (D, D, D):
        raise ValueError(f"volume must be cubic, got {tuple(vol.shape)}")
    if gridding:
        vol = vol / gridding_correction(D, pad, 3, dtype=vol.dtype, device=vol.device)
    P = pad * D
    if pad != 1:
        o = P // 2 - D // 2
        big = vol.new_zeros(vol.shape[:-3] + (P, P, P))
        big[..., o:o + D, o:o + D, o:o + D] = vol
        vol = big
    return rfftn_c(vol, 3)


def fourier_to_volume(vol_ft: Tensor, pad: int = 2, gridding: bool = True) -> Tensor:
    """Half transforms ``(..., Dv, Dv, Dv//2+1)`` → real volumes ``(..., D, D, D)``, ``D = Dv // pad``.

    :func:`irfftn_c`, crop the central ``D`` (origin ``Dv // 2`` → ``D // 2``), then divide by
    :func:`gridding_correction` when ``gridding`` (RELION's correction after reconstructing from
    trilinear backprojection). Not the inverse of :func:`volume_to_fourier` unless both use
    ``gridding=False``.
    """
    P = vol_ft.shape[-3]
    D = _image_size(P, pad)
    if pad != 1 and P % 2 == 0:
        vol = _centre_of_irfftn_c(vol_ft, D)
    else:
        vol = irfftn_c(vol_ft, P, 3)
        if pad != 1:
            o = P // 2 - D // 2
            vol = vol[..., o:o + D, o:o + D, o:o + D]
    if gridding:
        vol = vol / gridding_correction(D, pad, 3, dtype=vol.dtype, device=vol.device)
    return vol


def _centre_of_irfftn_c(vol_ft: Tensor, D: int) -> Tensor:
    """The central ``D³`` of ``irfftn_c(vol_ft)`` for an even padded box ``P`` (``(..., P, P, P//2+1)``
    → ``(..., D, D, D)``) without shifting the whole ``P³`` arrays: the transform of the unshifted
    array differs from that of the ``ifftshift``-ed one by ``(−1)^(n_z + n_y)`` (a half-box shift in
    frequency), and the central crop of the ``fftshift``-ed result is the voxels
    ``(j − D//2) mod P``. Equal to the plain route to rounding; at pad 2 it avoids two full-size
    copies."""
    P = vol_ft.shape[-3]
    raw = torch.fft.irfftn(vol_ft, s=(P, P, P), dim=(-3, -2, -1))
    idx = (torch.arange(D, device=vol_ft.device) - D // 2) % P
    crop = raw.index_select(-3, idx).index_select(-2, idx).index_select(-1, idx)
    sign = 1.0 - 2.0 * (idx % 2).to(crop.dtype)
    return crop * (sign[:, None, None] * sign[None, :, None])
