"""Datasets for training, as torch Datasets.

- :mod:`cryovox.data.particles`: particle images.
- :mod:`cryovox.data.volumes`: :class:`VolumeDataset`, volumes of a ``cryovox curate`` corpus
  store (lazy memory map, split selection, seeded random rotation / crop / flips).
"""

from cryovox.data.volumes import VolumeDataset  # noqa: F401
from cryovox.io.corpus import Corpus, open_corpus  # noqa: F401

__all__ = ["VolumeDataset", "Corpus", "open_corpus"]
