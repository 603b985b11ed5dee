"""Encoder of the structural-basis VAE: particle → posterior ``(mu, logvar)`` of ``z``.

An MLP (``layers`` hidden layers of ``width``, ReLU, cryoDRGN's encoder layout) maps a feature
vector to ``2 · zdim`` outputs, the posterior mean and log-variance. Its input (the model's
``enc_features``) is one or both of:

* ``basis`` (the default): the posterior of the basis coefficients of the linear model
  ``Y ≈ CTF · (P V_0 + Σ_k s_k P V_k)`` for this particle at its known pose
  (:meth:`cryovox.models.hetero.model.SFBPModel.basis_features`): ``2K`` numbers that already
  account for the pose, the CTF and the noise, so the network does not have to learn to undo
  them (this is not in the SFBP paper; it is the linear-Gaussian posterior that 3D variability
  analysis computes, used as input to the amortised encoder);
* ``image``: the particle image as the SFBP paper prepares it: re-centred by its known shift,
  phase-flipped (multiplied by the sign of its CTF; ``encoder_input="raw"`` skips this),
  whitened (divided by ``σ_n(|k|)``, the noise amplitude per shell) and restricted to
  frequencies ``|k| <= enc_radius`` (the paper's ``encoder_mask_resolution``); the spectrum is
  cropped to a box of ``d = 2 · ceil(enc_radius)`` and transformed back: ``d²`` real pixels with
  unit-variance noise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from cryovox.core.fft import irfftn_c

ENCODER_INPUTS = ("phase-flip", "raw")


def encoder_box(box: int, enc_radius: float) -> int:
    """Box ``d`` of the encoder's input image: ``2 · ceil(enc_radius)``, at most ``box``."""
    return int(min(box, 2 * math.ceil(enc_radius)))


class ImageEncoder(nn.Module):
    """MLP encoder on ``(B, n_in)`` features (flattened images …) → ``mu, logvar`` ``(B, zdim)``."""

    def __init__(self, n_in: int, zdim: int, width: int = 256, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError("the encoder needs at least one hidden layer")
        dims = [n_in] + [width] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(width, 2 * zdim))
        self.net = nn.Sequential(*mods)
        self.zdim = zdim

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(images.reshape(images.shape[0], -1))
        return out[:, : self.zdim], out[:, self.zdim:]


def crop_half_spectrum(f: Tensor, d: int) -> Tensor:
    """Central ``(…, d, d//2+1)`` of centred half spectra ``(…, D, D//2+1)`` (``d <= D``, same parity rules
    as :func:`cryovox.core.spectral.fourier_crop`: the origin ``D // 2`` maps to ``d // 2``)."""
    D = f.shape[-2]
    start = D // 2 - d // 2
    return f[..., start:start + d, : d // 2 + 1]


def encoder_images(fimages: Tensor, ctf: Tensor, mode: str, filt: Tensor, in_box: int) -> Tensor:
    """Encoder input ``(B, d, d)`` from centred half transforms ``(B, D, D//2+1)``.

    mode: ``"phase-flip"`` multiplies by ``sign(CTF)`` first, ``"raw"`` does not; filt:
    ``(D, D//2+1)`` real, ``1/σ_n`` inside ``enc_radius`` and 0 outside; in_box: ``d``.
    """
    if mode == "phase-flip":
        fimages = fimages * torch.sign(ctf).to(fimages.real.dtype)
    elif mode != "raw":
        raise ValueError(f"encoder input must be one of {ENCODER_INPUTS}, not {mode!r}")
    f = crop_half_spectrum(fimages * filt, in_box)
    return irfftn_c(f, in_box, 2) * in_box
