"""Cryo-SWAN: a voxel autoencoder with multi-scale residual quantisation, its baselines, and a
latent diffusion model for anchor-conditioned generation.

- :mod:`.posenc`: voxel positional encoding γ(p).
- :mod:`.quantisers`: VQ / RQ / multi-scale residual quantisers (one implementation).
- :mod:`.autoencoder`: :class:`SwanAutoencoder`, :class:`SwanConfig`, :func:`build_model`.
- :mod:`.diffusion`: latent DDPM with classifier-free guidance.
"""

from cryovox.models.swan.autoencoder import (ARCHS, SwanAutoencoder, SwanConfig, build_model,  # noqa: F401
                                             model_from_state, scale_schedule)
from cryovox.models.swan.quantisers import (MultiScaleResidualQuantiser, ResidualQuantiser,  # noqa: F401
                                            VectorQuantiser, nearest_code)
