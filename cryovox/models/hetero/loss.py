"""Objective of the structural-basis VAE: spectrally weighted Gaussian likelihood, KL and a prior.

Likelihood (RELION-4 style). For particle ``i`` with centred image transform ``Y_i`` (half
layout), CTF ``C_i`` and predicted slice ``X_i = σ̄ · P_{R_i} g(z_i)``::

    nll_i = ½ Σ_k  w_k |Y_i(k) − C_i(k) X_i(k)|² / σ²_n(|k|)        (k inside the radius)

``w_k`` are the Hermitian weights of the half layout (:func:`cryovox.core.spectral.hermitian_weights`),
so the sum runs over the full image transform; ``σ²_n(s)`` is the noise power in shell ``s``
per Fourier sample (RELION's σ²_noise spectrum), estimated before training as the mean power
per shell of the residuals ``Y − C · P V_cons`` against a consensus (Wiener) reconstruction of
the same particles, as RELION estimates it from the residuals of its reference (without a
consensus, ``--init none``: the mean image power, an upper bound). It stays fixed during
training, so losses of different epochs compare. Constant terms (``log 2π σ²``) are left out.

Spectral normalisation: ``σ̄²(s) = ⟨|Y|²⟩(s) / ⟨C²⟩(s)``, the mean image power over the mean
squared CTF in shell ``s`` (both averaged over the same particles and Fourier samples inside
the radius), measured once on the data before training; the decoder's output is multiplied
by ``σ̄`` (see the decoder), so its voxels are in "whitened" units of order one.

KL of the posterior ``N(mu, diag exp(logvar))`` from ``N(0, I)``:
``½ Σ_j (mu_j² + exp(logvar_j) − 1 − logvar_j)``.

Prior on the volumes (MAP for the shared parameters): in whitened units the signal power per
voxel of shell ``s`` is ``τ̃²(s) = 1 − σ²_n(s) / ⟨|Y|²⟩(s)`` (the data's signal fraction,
clamped to ``[1e-4, 1]``); ``½ Σ |V|² / τ̃²`` over ``V_0`` and all ``V_k`` is added once per
data set, i.e. divided by the number of particles in each particle's loss. It keeps the basis
from fitting noise at resolutions where the data have little signal.

The loss of a batch is ``mean_i (nll_i + β kl_i) + prior / N``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from cryovox.core.spectral import hermitian_weights, shell_index


def pixel_shells(box: int, radius: float, device=None) -> tuple[Tensor, Tensor]:
    """Shell index ``(D, D//2+1)`` int64 (``-1`` outside ``radius``) and Hermitian weights ``(D, D//2+1)``."""
    idx = shell_index(box, 2, half=True, device=device).clone()
    k = torch.arange(box, device=idx.device, dtype=torch.float64) - box // 2
    kx = torch.arange(box // 2 + 1, device=idx.device, dtype=torch.float64)
    inside = (k[:, None] ** 2 + kx[None, :] ** 2) <= float(radius) ** 2
    idx[~inside] = -1
    w = hermitian_weights(box, device=idx.device).expand(box, -1) * inside
    return idx, w


def shell_sums(values: Tensor, shells: Tensor, weights: Tensor, nshell: int) -> Tensor:
    """Σ over images and samples of ``weights · values`` per shell: ``(B, D, D//2+1) → (nshell,)`` float64."""
    v = (values.to(torch.float64) * weights).sum(0).reshape(-1)
    idx = shells.reshape(-1)
    keep = idx >= 0
    out = torch.zeros(nshell, dtype=torch.float64, device=values.device)
    return out.index_add_(0, idx[keep], v[keep])


def data_spectra(batches, box: int, radius: float) -> dict[str, Tensor]:
    """Shell sums of image power and CTF² over the particles in ``batches`` (one pass).

    batches: iterable of dataset batches (``image`` ``(B, D, D//2+1)`` complex centred transforms,
    ``ctf`` ``(B, D, D//2+1)`` real). Returns float64 sums per shell ``(D//2+1,)`` (sums, so that
    processes can add them): ``power`` ``Σ w|Y|²``, ``ctf2`` ``Σ w C²`` and ``count`` ``Σ w``.
    """
    nshell = box // 2 + 1
    out = {k: torch.zeros(nshell, dtype=torch.float64) for k in ("power", "ctf2", "count")}
    shells, w = pixel_shells(box, radius)
    ones = torch.ones(1, box, box // 2 + 1)
    for b in batches:
        y, c = b["image"].cpu(), b["ctf"].cpu()
        out["power"] += shell_sums(y.real ** 2 + y.imag ** 2, shells, w, nshell)
        out["ctf2"] += shell_sums(c * c, shells, w, nshell)
        out["count"] += shell_sums(ones, shells, w, nshell) * y.shape[0]
    return out


def gaussian_nll(pred: Tensor, data: Tensor, inv_var: Tensor) -> Tensor:
    """``½ Σ_k inv_var_k |data − pred|²`` per image: ``(B, D, D//2+1)`` complex → ``(B,)``.

    inv_var: ``(D, D//2+1)`` real, ``w_k / σ²_n(|k|)`` with zeros outside the radius.
    """
    r = data - pred
    return 0.5 * ((r.real ** 2 + r.imag ** 2) * inv_var).sum((-2, -1))


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) ‖ N(0, I)) per row: ``(B, zdim) → (B,)``."""
    return 0.5 * (mu * mu + logvar.exp() - 1.0 - logvar).sum(-1)
