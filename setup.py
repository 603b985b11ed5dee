"""Build script: the Python package plus the optional compiled slicing extension (csrc/).

The extension is built with ``pip install --no-build-isolation`` against the torch already
installed. If it cannot be built (no compiler, odd platform), the package still installs and
cryovox falls back to the pure-PyTorch reference with one warning.
"""

from setuptools import setup

setup()
