"""cryovox: learned density priors and fast heterogeneous reconstruction for cryo-EM."""

__version__ = "0.1.0"

from cryovox.errors import InputError  # noqa: E402,F401  (light: no torch)
