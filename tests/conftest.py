"""Shared test helpers.

``SHARED`` is ``../shared/data`` beside the repository root; tests that use it are marked with
``needs_shared_data`` and skip cleanly when it is absent. ``cli`` runs the cryovox command in
this process and returns (exit code, stdout, stderr).
"""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"

needs_shared_data = pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/data is absent")


class CliResult:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    def __repr__(self) -> str:
        return f"CliResult(code={self.code}, out={self.out[-2000:]!r}, err={self.err[-2000:]!r})"


@pytest.fixture
def cli(capsys):
    """Run ``cryovox ARGS...`` in-process: ``res = cli("fsc", a, b, "-o", out)``."""
    from cryovox.cli import main

    def run(*args) -> CliResult:
        capsys.readouterr()
        code = main([str(a) for a in args])
        captured = capsys.readouterr()
        return CliResult(code, captured.out, captured.err)

    return run


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """One intra-op thread per test process: the tests' tensors are tiny (thread start-up costs
    more than the work), and under ``pytest -n N`` the N workers share N cores.

    Tests of thread safety set their own thread counts explicitly.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
