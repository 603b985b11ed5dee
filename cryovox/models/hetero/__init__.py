"""Structural-basis VAE with sparse Fourier backpropagation (Kimanius, Jamali & Scheres, NeurIPS 2022).

:class:`SFBPModel` (``kind = "sfbp"``): encoder (:mod:`.encoder`), basis decoder (:mod:`.decoder`),
objective (:mod:`.loss`).
"""

from cryovox.models.hetero.model import SFBPModel

__all__ = ["SFBPModel"]
