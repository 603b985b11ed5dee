"""Structural-basis decoder with sparse Fourier backpropagation (Kimanius, Jamali & Scheres 2022).

``g(z) = Σ_k s_k(z) · V_k + V_0``: ``K`` learnable Fourier-space basis volumes ``V_k`` and a bias
volume ``V_0``, stored as complex half transforms (:func:`cryovox.core.fft.rfftn_c` layout,
``(pD, pD, pD//2+1)`` for ``pad = p``), combined by coefficients ``s(z)`` from a small residual MLP.
A particle's central slice at its pose is taken directly from the basis with
:func:`cryovox.core.slicing.project`, which touches only the voxels the slice passes through,
in the forward and the backward pass (the "sparse" in SFBP); no per-particle volume is formed.

Spectral normalisation: the decoder works in whitened units. The slice that is compared with
the data is ``σ̄(|k|) · project(...)`` where ``σ̄²(s)`` is the mean image power over the mean
CTF² in shell ``s`` (measured on the data once, see :func:`cryovox.models.hetero.loss.data_spectra`);
the learned voxels are therefore of order one at every resolution, which keeps Adam's step size
meaningful across shells (the paper's ``spectral_factor`` / data-spectra scaling).
Only samples inside ``radius`` (image pixels, default Nyquist ``D / 2``) are used and decoded.

Map scale: the slice of ``g`` times ``σ̄`` is the CTF-free transform of the particle image, so
``irfftn_c`` of the decoded volume is the density in image units per voxel (projections along z
give the images). Because slices are trilinear samples of the grid, the grid holds the
transform of ``density / sinc²`` (the gridding pre-correction of a RELION projector); the
decoded map is therefore ``irfftn_c(g) · Π sinc²(n / (pad · D))``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cryovox.core import slicing
from cryovox.core.fft import irfftn_c
from cryovox.core.spectral import shell_index


class ResidualMLP(nn.Module):
    """``in → width``, ``blocks`` residual blocks ``x + W₂ gelu(W₁ x)``, ``width → out``."""

    def __init__(self, n_in: int, n_out: int, width: int = 64, blocks: int = 2):
        super().__init__()
        self.inp = nn.Linear(n_in, width)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width))
            for _ in range(blocks))
        self.out = nn.Sequential(nn.GELU(), nn.Linear(width, n_out))

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for b in self.blocks:
            h = h + b(h)
        return self.out(h)


class BasisDecoder(nn.Module):
    """``K`` Fourier basis volumes, a bias volume and the coefficient network ``s(z)``.

    box: image box ``D``; pad: volume oversampling (volume box ``pad · D``); radius: in image
    pixels. Parameters are stored as real ``(..., 2)`` views of the complex half volumes (so
    that DDP and every optimizer see real tensors); the basis voxel-major, ``(P, P, P//2+1, K, 2)``.
    """

    def __init__(self, box: int, zdim: int, n_basis: int = 16, width: int = 64, blocks: int = 2,
                 pad: int = 1, radius: float | None = None, init_scale: float = 1e-2):
        super().__init__()
        self.box, self.pad, self.n_basis = box, pad, n_basis
        self.radius = float(box / 2 if radius is None else radius)
        P = pad * box
        self.coeffs = ResidualMLP(zdim, n_basis, width, blocks)
        inside = self._sphere3(P)
        g = torch.Generator().manual_seed(0x5FB9)  # init does not consume the global RNG stream
        # voxel-major storage (P, P, P//2+1, K, 2): the K values of a voxel are adjacent, the layout
        # the slicing kernels read without a copy (basis_c() is a (K, ...) view of it)
        basis = torch.randn((P, P, P // 2 + 1, n_basis, 2), generator=g) * init_scale
        self.basis = nn.Parameter(basis * inside[..., None, None])
        self.bias = nn.Parameter(torch.zeros(P, P, P // 2 + 1, 2))
        nshell = box // 2 + 1
        # σ̄(s) per image shell (whitening of the decoder output); set from the data
        self.register_buffer("spectral_scale", torch.ones(nshell))

    # -- geometry -------------------------------------------------------------------------
    def _sphere3(self, P: int) -> Tensor:
        """(P, P, P//2+1) bool: volume samples within ``pad · radius``."""
        k = torch.arange(P, dtype=torch.float64) - P // 2
        kx = torch.arange(P // 2 + 1, dtype=torch.float64)
        r2 = k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2
        return r2 <= (self.pad * self.radius) ** 2

    def _cached(self, name: str, make) -> Tensor:
        key = (name, self.spectral_scale.device, self.spectral_scale._version)
        cache = self.__dict__.setdefault("_grids", {})
        if key not in cache:
            for k in [k for k in cache if k[0] == name]:
                del cache[k]
            cache[key] = make()
        return cache[key]

    def scale_2d(self) -> Tensor:
        """(D, D//2+1) σ̄ at each half-image pixel (0 outside ``radius``); cached."""
        return self._cached("scale_2d", self._scale_2d)

    def scale_3d(self) -> Tensor:
        """(P, P, P//2+1) σ̄ at each volume sample (shell = radius / pad; 0 outside the sphere); cached."""
        return self._cached("scale_3d", self._scale_3d)

    def _scale_2d(self) -> Tensor:
        D = self.box
        idx = shell_index(D, 2, half=True, device=self.spectral_scale.device)
        k = torch.arange(D, device=idx.device, dtype=torch.float64) - D // 2
        kx = torch.arange(D // 2 + 1, device=idx.device, dtype=torch.float64)
        inside = (k[:, None] ** 2 + kx[None, :] ** 2) <= self.radius ** 2
        s = self.spectral_scale[idx.clamp(max=D // 2)]
        return torch.where(inside, s, torch.zeros_like(s))

    def _scale_3d(self) -> Tensor:
        P = self.pad * self.box
        k = torch.arange(P, device=self.spectral_scale.device, dtype=torch.float64) - P // 2
        kx = torch.arange(P // 2 + 1, device=k.device, dtype=torch.float64)
        r = torch.sqrt(k[:, None, None] ** 2 + k[None, :, None] ** 2 + kx[None, None, :] ** 2) / self.pad
        idx = torch.round(r).long().clamp(max=self.box // 2)
        s = self.spectral_scale[idx]
        return torch.where(r <= self.radius, s, torch.zeros_like(s)).to(self.spectral_scale.dtype)

    # -- decoding -----------------------------------------------------------------------------
    def prior_energy(self, prec: Tensor) -> Tensor:
        """``½ Σ prec · (Σ_k |V_k|² + |V_0|²)`` over the stored half volumes; prec ``(P, P, P//2+1)``
        already includes the Hermitian weights (a full-volume sum)."""
        b = self.basis
        return 0.5 * ((b * b).sum((-2, -1)) * prec).sum() + 0.5 * ((self.bias * self.bias).sum(-1) * prec).sum()

    def basis_c(self) -> Tensor:
        """The basis as complex ``(K, P, P, P//2+1)`` (a view of the voxel-major parameter)."""
        return torch.view_as_complex(self.basis).permute(3, 0, 1, 2)

    def bias_c(self) -> Tensor:
        return torch.view_as_complex(self.bias)

    def coefficients(self, z: Tensor) -> Tensor:
        """``s(z)`` ``(n, K)`` in ``(-1, 1)``: the residual MLP's output through ``tanh``.

        Bounding ``s`` fixes the scale shared by ``s`` and ``V_k`` (else the basis could shrink
        under its prior while ``s`` grows), so the prior on the volumes acts on ``s_k V_k``.
        """
        return torch.tanh(self.coeffs(z))

    def slices(self, z: Tensor, rot: Tensor) -> Tensor:
        """Central slices ``(B, D, D//2+1)`` complex of ``g(z)`` at poses ``rot`` ``(B, 3, 3)``, in image units."""
        s = self.coefficients(z)
        out = slicing.project(self.basis_c(), s, self.bias_c(), rot.to(self.basis.dtype),
                              radius=self.radius, pad=self.pad)
        return out * self.scale_2d().to(out.real.dtype)

    def fourier(self, z: Tensor) -> Tensor:
        """Fourier volumes ``(n, P, P, P//2+1)`` complex (image units, zero outside the sphere)."""
        s = self.coefficients(z).to(self.basis.dtype)
        n, K, P = z.shape[0], self.n_basis, self.pad * self.box
        # Σ_k s_k V_k as one matrix product on the voxel-major storage, without copying the basis:
        # (M, 2K) @ (2K, 2n) with the block matrix s ⊗ I₂ (real and imaginary parts kept apart)
        eye = torch.eye(2, dtype=s.dtype, device=s.device)
        mix = (s.t()[:, None, :, None] * eye[None, :, None, :]).reshape(2 * K, 2 * n)
        out = self.basis.reshape(-1, 2 * K) @ mix                                 # (M, 2n)
        out = out.reshape(-1, n, 2).transpose(0, 1) + self.bias.reshape(1, -1, 2)  # (n, M, 2)
        vol = torch.view_as_complex(out).reshape(n, P, P, P // 2 + 1)
        return vol * self.scale_3d().to(vol.real.dtype)

    def volume(self, z: Tensor) -> Tensor:
        """Real-space maps ``(n, D, D, D)`` (see the module docstring for scale and gridding)."""
        vol_ft = self.fourier(z)
        P, D = self.pad * self.box, self.box
        vol = irfftn_c(vol_ft, P, 3)
        if self.pad != 1:
            o = P // 2 - D // 2
            vol = vol[..., o:o + D, o:o + D, o:o + D]
        grid = self._cached("gridding", lambda: slicing.gridding_correction(
            D, self.pad, 3, dtype=torch.float64, device=self.spectral_scale.device))
        return vol * grid.to(vol.dtype)

