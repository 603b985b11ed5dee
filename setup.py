"""Build script: the Python package plus the optional compiled slicing extension (csrc/).

The extension ``cryovox._C`` is built with ``pip install --no-build-isolation -e .`` against the
torch already installed (``torch.utils.cpp_extension``):

- always the C++/OpenMP kernels (``csrc/slicing_cpu.cpp``);
- plus the CUDA kernels (``csrc/slicing_cuda.cu``) and their torch binding
  (``csrc/slicing_cuda_binding.cpp``) when nvcc is found AND torch is a CUDA build.

If it cannot be built (no compiler, odd platform, torch headers missing), the package still
installs: the failure is printed as a warning and cryovox falls back to the pure-PyTorch
reference with one warning at run time. Environment switches: ``CRYOVOX_NO_BUILD_EXT=1`` skips
the extension, ``CRYOVOX_NO_CUDA=1`` builds the CPU kernels only, ``CRYOVOX_CUDA_ARCH`` sets
``TORCH_CUDA_ARCH_LIST`` (default: torch's choice, i.e. the visible GPU or its own list).
"""

from __future__ import annotations

import os
import sys
import traceback

from setuptools import setup


def _warn(message: str) -> None:
    sys.stderr.write(f"\nWARNING (cryovox): {message}\n"
                     "cryovox will use its pure-PyTorch slicing reference (slower).\n\n")


def _extension_kwargs() -> dict:
    if os.environ.get("CRYOVOX_NO_BUILD_EXT", "") not in ("", "0"):
        return {}
    try:
        import torch
        from torch.utils import cpp_extension as ce
    except Exception as exc:  # torch missing at build time (build isolation?)
        _warn(f"torch is not importable at build time ({exc}); slicing extension not built. "
              "Install with `pip install --no-build-isolation -e .`.")
        return {}

    here = os.path.dirname(os.path.abspath(__file__))
    csrc = os.path.join("csrc")
    openmp = [] if sys.platform == "darwin" else ["-fopenmp"]  # Apple clang has no -fopenmp
    cxx = ["-O3", "-ffp-contract=off", *openmp]
    sources = [os.path.join(csrc, "slicing_cpu.cpp")]
    want_cuda = (torch.version.cuda is not None and ce.CUDA_HOME is not None
                 and os.environ.get("CRYOVOX_NO_CUDA", "") in ("", "0"))
    if want_cuda:
        if os.environ.get("CRYOVOX_CUDA_ARCH"):
            os.environ["TORCH_CUDA_ARCH_LIST"] = os.environ["CRYOVOX_CUDA_ARCH"]
        sources += [os.path.join(csrc, "slicing_cuda.cu"), os.path.join(csrc, "slicing_cuda_binding.cpp")]
        ext = ce.CUDAExtension(
            "cryovox._C", sources,
            include_dirs=[os.path.join(here, csrc)],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
            extra_link_args=openmp)
    else:
        ext = ce.CppExtension(
            "cryovox._C", sources,
            include_dirs=[os.path.join(here, csrc)],
            extra_compile_args={"cxx": cxx}, extra_link_args=openmp)

    class OptionalBuildExt(ce.BuildExtension):
        """Build the extension if possible; a failure is a warning, never a failed install."""

        failed = False

        def run(self):
            try:
                super().run()
            except Exception:  # e.g. the editable install copying a .so that was never built
                if not OptionalBuildExt.failed:
                    _warn("building the compiled slicing kernels failed:\n" + traceback.format_exc(limit=3))

        def build_extension(self, extension):
            try:
                super().build_extension(extension)
            except Exception:
                OptionalBuildExt.failed = True
                _warn(f"building {extension.name} failed:\n" + traceback.format_exc(limit=3))

    return {"ext_modules": [ext], "cmdclass": {"build_ext": OptionalBuildExt}}


setup(**_extension_kwargs())
