"""The CUDA sources compile where nvcc exists (compile only; no GPU needed).

- ``csrc/slicing_cuda.cu`` (CUDA headers only) with ``nvcc -c -arch=sm_90``; the object must
  define the float and double launchers the torch binding calls.
- ``csrc/slicing_cuda_binding.cpp`` (needs a CUDA build of torch to link) is syntax-checked with
  the installed torch headers; the CPU wheel lacks the generated ``cuda_cmake_macros.h``, for which
  an empty stand-in is supplied.
Both compilers run side by side to keep the wall time down.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CSRC = ROOT / "csrc"
NVCC = shutil.which("nvcc")

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


def _binding_command(tmp: Path) -> list[str] | None:
    cxx = shutil.which("g++") or shutil.which("c++")
    try:
        import torch.utils.cpp_extension as ce
    except ImportError:
        return None
    includes = ce.include_paths()
    if cxx is None or not any((Path(p) / "c10/cuda/CUDAStream.h").exists() for p in includes):
        return None
    stub = tmp / "stub"
    if not any((Path(p) / "c10/cuda/impl/cuda_cmake_macros.h").exists() for p in includes):
        (stub / "c10/cuda/impl").mkdir(parents=True)
        (stub / "c10/cuda/impl/cuda_cmake_macros.h").write_text("// stand-in for a CUDA build's generated header\n")
    homes = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), str(Path(NVCC).resolve().parent.parent),
             "/usr/local/cuda"]
    found = [Path(h) / "include" for h in homes if h and (Path(h) / "include" / "cuda_runtime.h").exists()]
    if not found:
        return None
    cuda_include = found[0]
    return [cxx, "-fsyntax-only", "-std=c++17", "-w", f"-I{stub}", *[f"-I{p}" for p in includes],
            f"-I{cuda_include}", f"-I{CSRC}", f"-I{sysconfig.get_paths()['include']}",
            str(CSRC / "slicing_cuda_binding.cpp")]


def test_cuda_sources_compile(tmp_path):
    obj = tmp_path / "slicing_cuda.o"
    nvcc = subprocess.Popen([NVCC, "-c", "-arch=sm_90", "-O3", "-std=c++17", f"-I{CSRC}",
                             str(CSRC / "slicing_cuda.cu"), "-o", str(obj)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cmd = _binding_command(tmp_path)
    binding = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               if cmd else None)
    out, _ = nvcc.communicate(timeout=300)
    assert nvcc.returncode == 0, out[-4000:]
    assert "warning" not in out.lower(), out[-4000:]
    symbols = subprocess.run(["nm", "-C", str(obj)], capture_output=True, text=True).stdout \
        if shutil.which("nm") else None
    if symbols is not None:
        for name in ("project", "gather_grads", "scatter"):
            for t in ("float", "double"):
                assert f"cryovox::cuda::{name}<{t}>(" in symbols, (name, t)
    else:
        assert obj.stat().st_size > 10_000
    if binding is None:
        pytest.skip("torch c10/cuda headers, CUDA headers or a C++ compiler missing: binding not checked")
    out, _ = binding.communicate(timeout=300)
    assert binding.returncode == 0, out[-4000:]
