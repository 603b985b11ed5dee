"""Encoder of the structural-basis VAE: particle image → posterior ``(mu, logvar)`` of ``z``.

The input is the particle's windowed real-space image, re-centred by its known shift (the
dataset applies the shift as a phase ramp), optionally phase-flipped (multiplied by the sign
of its CTF in Fourier space, so that particles from different defocus groups look alike), and
divided by a global scale (the images' standard deviation, measured once before training).
An MLP maps the ``D²`` pixels through ``layers`` hidden layers of ``width`` (ReLU) to
``2 · zdim`` outputs: the posterior mean and log-variance (cryoDRGN's encoder design; the SFBP
paper uses a residual MLP on the masked image transform — both are MLPs on the whole image).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cryovox.core.fft import irfftn_c

ENCODER_INPUTS = ("phase-flip", "raw")


class ImageEncoder(nn.Module):
    """MLP encoder on ``(B, D, D)`` real images → ``mu, logvar`` ``(B, zdim)``."""

    def __init__(self, box: int, zdim: int, width: int = 256, layers: int = 3):
        super().__init__()
        if layers < 1:
            raise ValueError("the encoder needs at least one hidden layer")
        dims = [box * box] + [width] * layers
        mods: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            mods += [nn.Linear(a, b), nn.ReLU()]
        mods.append(nn.Linear(width, 2 * zdim))
        self.net = nn.Sequential(*mods)
        self.zdim = zdim

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        out = self.net(images.reshape(images.shape[0], -1))
        return out[:, : self.zdim], out[:, self.zdim:]


def encoder_images(fimages: Tensor, ctf: Tensor, box: int, mode: str, scale: float | Tensor) -> Tensor:
    """Real-space encoder input ``(B, D, D)`` from centred half transforms ``(B, D, D//2+1)``.

    mode: ``"phase-flip"`` multiplies by ``sign(CTF)`` first, ``"raw"`` does not;
    the result is divided by ``scale``.
    """
    if mode == "phase-flip":
        fimages = fimages * torch.sign(ctf).to(fimages.real.dtype)
    elif mode != "raw":
        raise ValueError(f"encoder input must be one of {ENCODER_INPUTS}, not {mode!r}")
    return irfftn_c(fimages, box, 2) / scale
