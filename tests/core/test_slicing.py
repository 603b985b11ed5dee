"""Fourier-slice projection/backprojection (cryovox.core.slicing) against independent oracles.

Oracle for the central-slice theorem: a sum of Gaussian blobs, whose projection along z of
V(Rᵀ r) is known analytically (a 2D Gaussian at (R c)_xy with mass √(2π) σ a); its sampled,
centred 2D FFT is compared with the slice of the sampled volume's 3D FFT.
"""

from __future__ import annotations

import math

import pytest
import torch

from cryovox.core._slicing_ref import project_ref
from cryovox.core.fft import irfftn_c, rfftn_c
from cryovox.core.rotations import euler_to_matrix, random_rotations
from cryovox.core.slicing import (
    backproject,
    fourier_to_volume,
    gridding_correction,
    project,
    project_volume,
    volume_to_fourier,
)

F64 = torch.float64


def blobs(box: int, seed: int, n: int = 6, rmax: float = 0.2, sigma=(1.5, 2.2)):
    g = torch.Generator().manual_seed(seed)
    centres = (torch.rand(n, 3, generator=g, dtype=F64) * 2 - 1) * rmax * box  # (x, y, z) px
    sig = sigma[0] + (sigma[1] - sigma[0]) * torch.rand(n, generator=g, dtype=F64)
    amp = 0.5 + torch.rand(n, generator=g, dtype=F64)
    return centres, sig, amp


def blob_volume(box, centres, sig, amp):
    """Σ_n a_n exp(-|r - c_n|² / 2σ_n²) sampled on the [z, y, x] grid (separable per blob)."""
    ax = torch.arange(box, dtype=F64) - box // 2
    g = torch.exp(-((ax[None, None, :] - centres[:, :, None]) ** 2) / (2 * sig[:, None, None] ** 2))  # (n, 3, D)
    return torch.einsum("n,nz,ny,nx->zyx", amp, g[:, 2], g[:, 1], g[:, 0])


def blob_projections(box, centres, sig, amp, rot):
    """∫ V(Rᵀ (x, y, z)) dz sampled on the image grid, (B, D, D)."""
    ax = torch.arange(box, dtype=F64) - box // 2
    y, x = torch.meshgrid(ax, ax, indexing="ij")
    c = torch.einsum("bij,nj->bni", rot, centres)  # rotated centres (B, n, 3)
    d2 = (x[None, ..., None] - c[:, None, None, :, 0]) ** 2 + (y[None, ..., None] - c[:, None, None, :, 1]) ** 2
    return (amp * math.sqrt(2 * math.pi) * sig * torch.exp(-d2 / (2 * sig**2))).sum(-1)


def disc(box: int) -> torch.Tensor:
    ky = torch.arange(box) - box // 2
    kx = torch.arange(box // 2 + 1)
    return (kx[None, :] ** 2 + ky[:, None] ** 2) <= (box / 2) ** 2


def rel_err(a, b, mask):
    return ((a - b) * mask).norm() / (b * mask).norm()


def grid_rotations() -> torch.Tensor:
    """Identity and signed permutation matrices (no two alike, none symmetric but the first)."""
    R = euler_to_matrix(torch.tensor([0.0, 90, 90, 0, 90]), torch.tensor([0.0, 0, 90, 90, 90]),
                        torch.tensor([0.0, 0, 0, 0, 90]))
    return R.round()


@pytest.mark.parametrize("box", [32, 33, 64])
@pytest.mark.parametrize("pad", [1, 2])
def test_central_slice_equals_fft_of_projection_on_grid_rotations(box, pad):
    # Rotations that map image frequencies onto grid points: interpolation is exact, so this
    # checks the conventions themselves (axes, transpose, signs, origin, Friedel) to 1e-4 and beyond.
    centres, sig, amp = blobs(box, seed=box)
    rot = grid_rotations()
    slices = project_volume(volume_to_fourier(blob_volume(box, centres, sig, amp), pad, gridding=False),
                            rot, pad=pad)
    direct = rfftn_c(blob_projections(box, centres, sig, amp, rot), 2)
    m = disc(box)
    for b in range(rot.shape[0]):
        assert rel_err(slices[b], direct[b], m) < 1e-6, b
    # a transposed rotation (the classic convention slip) is far off
    wrong = project_volume(volume_to_fourier(blob_volume(box, centres, sig, amp), pad, gridding=False),
                           rot.transpose(1, 2), pad=pad)
    assert rel_err(wrong[1], direct[1], m) > 0.1


@pytest.mark.parametrize("box", [32, 33, 64])
def test_central_slice_equals_fft_of_projection_general_rotations(box):
    # Off-grid rotations: trilinear interpolation at pad 2 is accurate to ~2 % here (aliases
    # of relative size (r / 2D)² remain after the sinc² correction); the error falls as pad⁻²
    # (pad 3: (2/3)² = 0.44 of the pad-2 error).
    centres, sig, amp = blobs(box, seed=box + 1)
    rot = random_rotations(4, torch.Generator().manual_seed(box))
    vol = blob_volume(box, centres, sig, amp)
    direct = rfftn_c(blob_projections(box, centres, sig, amp, rot), 2)
    m = disc(box)
    err = {}
    for pad, grid in [(2, False), (2, True), (3, True)]:
        err[pad, grid] = rel_err(project_volume(volume_to_fourier(vol, pad, grid), rot, pad=pad), direct, m)
    assert err[2, True] < 2.5e-2
    assert err[2, True] < 0.8 * err[2, False]          # the gridding correction helps
    assert err[3, True] < err[2, True] / 1.8           # second-order convergence in pad


def test_volume_fourier_round_trip_and_gridding():
    vol = torch.randn(9, 9, 9, dtype=F64, generator=torch.Generator().manual_seed(0))
    ft = volume_to_fourier(vol, pad=2, gridding=False)
    assert ft.shape == (18, 18, 10)
    # the DC term is the sum; the padded transform at even frequencies is the unpadded one
    assert torch.allclose(ft[9, 9, 0].real, vol.sum())
    assert torch.allclose(ft[1::2, 1::2, ::2], rfftn_c(vol, 3), atol=1e-10)
    assert torch.allclose(fourier_to_volume(ft, pad=2, gridding=False), vol, atol=1e-12)
    g = gridding_correction(9, 2, 3)
    n = torch.arange(9, dtype=F64) - 4
    s = (torch.sin(math.pi * n / 18) / (math.pi * n / 18)).nan_to_num(1.0) ** 2
    assert torch.allclose(g, s[:, None, None] * s[None, :, None] * s[None, None, :])
    assert torch.allclose(fourier_to_volume(volume_to_fourier(vol, 2, gridding=True), 2, gridding=False) * g, vol)


@pytest.mark.parametrize("D, pad", [(8, 2), (9, 2), (10, 3), (7, 3), (6, 4)])
def test_fourier_to_volume_equals_the_shift_and_crop_route(D, pad):
    """Even padded boxes skip the full-size shifts (a sign pattern and an index crop instead); the
    result must equal cropping the centre of irfftn_c, for odd and even D and batched input."""
    g = torch.Generator().manual_seed(D * 10 + pad)
    P = pad * D
    ft = torch.randn(2, P, P, P // 2 + 1, dtype=torch.complex128, generator=g)
    o = P // 2 - D // 2
    plain = irfftn_c(ft, P, 3)[..., o:o + D, o:o + D, o:o + D]
    out = fourier_to_volume(ft, pad=pad, gridding=False)
    assert out.shape == (2, D, D, D)
    assert torch.allclose(out, plain, rtol=0, atol=1e-12 * float(plain.abs().max()))


def half_inner(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """⟨a, b⟩ = Re Σ conj(a) b over the stored half arrays: the product backproject is adjoint in."""
    return (a.conj() * b).real.sum()


@pytest.mark.parametrize("box,pad", [(16, 1), (17, 1), (12, 2), (9, 2)])
def test_backproject_is_adjoint_of_project(box, pad):
    g = torch.Generator().manual_seed(box)
    P = box * pad
    K, B = 3, 5
    basis = torch.randn(K, P, P, P // 2 + 1, dtype=torch.complex128, generator=g)
    bias = torch.randn(P, P, P // 2 + 1, dtype=torch.complex128, generator=g)
    coeffs = torch.randn(B, K, dtype=F64, generator=g)
    rot = random_rotations(B, g)
    imgs = torch.randn(B, box, box // 2 + 1, dtype=torch.complex128, generator=g)
    wts = torch.rand(B, box, box // 2 + 1, dtype=F64, generator=g)
    data, weight = backproject(imgs, rot, wts, pad=pad)
    lhs = half_inner(project_volume(bias, rot, pad=pad), imgs)
    assert abs(lhs - half_inner(bias, data)) < 1e-10 * abs(lhs)
    # with the basis: ⟨P(Σ c_bk V_k), I⟩ = Σ_k ⟨V_k, Σ_b c_bk Pᵀ I_b⟩
    lhs = half_inner(project(basis, coeffs, None, rot, pad=pad), imgs)
    rhs = sum(half_inner(basis[k], backproject(imgs * coeffs[:, k, None, None], rot, pad=pad)[0])
              for k in range(K))
    assert abs(lhs - rhs) < 1e-10 * abs(lhs)
    # the weight volume is the same scatter applied to real weights
    U = torch.randn(P, P, P // 2 + 1, dtype=F64, generator=g)
    lhs = (project_volume(U.to(torch.complex128), rot, pad=pad).real * wts).sum()
    assert abs(lhs - (weight * U).sum()) < 1e-10 * abs(lhs)


def test_project_fused_equals_materialised_volume_and_radius():
    g = torch.Generator().manual_seed(3)
    K, B, D = 4, 6, 14
    basis = torch.randn(K, D, D, D // 2 + 1, dtype=torch.complex128, generator=g)
    bias = torch.randn(D, D, D // 2 + 1, dtype=torch.complex128, generator=g)
    coeffs = torch.randn(B, K, dtype=F64, generator=g)
    rot = random_rotations(B, g)
    fused = project(basis, coeffs, bias, rot)
    for b in range(B):
        vol = torch.einsum("k,kzyx->zyx", coeffs[b].to(torch.complex128), basis) + bias
        assert torch.allclose(fused[b], project_volume(vol, rot[b:b + 1])[0], rtol=0, atol=1e-12)
    small = project(basis, coeffs, bias, rot, radius=4.5)
    inside = torch.zeros(D, D // 2 + 1, dtype=torch.bool)
    ky, kx = torch.meshgrid(torch.arange(D) - D // 2, torch.arange(D // 2 + 1), indexing="ij")
    inside = kx**2 + ky**2 <= 4.5**2
    assert torch.equal(small[:, inside], fused[:, inside])
    assert torch.all(small[:, ~inside] == 0)
    assert torch.all(fused[:, ~disc(D)] == 0)


def test_gradcheck_reference():
    g = torch.Generator().manual_seed(11)
    K, B, D = 2, 2, 6
    basis = torch.randn(K, D, D, D // 2 + 1, dtype=torch.complex128, generator=g).requires_grad_()
    bias = torch.randn(D, D, D // 2 + 1, dtype=torch.complex128, generator=g).requires_grad_()
    coeffs = torch.randn(B, K, dtype=F64, generator=g).requires_grad_()
    rot = random_rotations(B, g).requires_grad_()
    # the pure-PyTorch reference itself (the API may route to the compiled kernels, checked in
    # test_slicing_kernels.py against this reference)
    assert torch.autograd.gradcheck(lambda a, c, b, r: project_ref(a, c, b, r, D / 2, 1), (basis, coeffs, bias, rot),
                                    eps=1e-6, atol=1e-7, fast_mode=True)
