"""Datasets: particle images as torch Datasets for training (see :mod:`cryovox.data.particles`)."""
