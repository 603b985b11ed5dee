"""The ``cryovox`` command itself: fast --help without heavy imports, --version, an Example in every help."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version

import pytest

from tests.conftest import ROOT


def _run(*code_or_args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *code_or_args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def test_help_imports_no_heavy_module():
    """``cryovox --help`` stays fast (< 2 s) because it imports none of the heavy libraries.

    The import set is asserted here; wall time is a benchmark matter, not a test's.
    """
    code = ("import sys, time; t = time.perf_counter(); from cryovox.cli import main; "
            "rc = main(['--help']); dt = time.perf_counter() - t; "
            "heavy = sorted(m for m in ('torch', 'numpy', 'pandas', 'scipy', 'gemmi', 'matplotlib', 'mrcfile') "
            "if m in sys.modules); print('RESULT', rc, dt, ','.join(heavy) or '-')")
    res = _run("-c", code)
    assert res.returncode == 0, res.stderr
    line = [x for x in res.stdout.splitlines() if x.startswith("RESULT")][-1].split()
    assert line[1] == "0"
    assert line[3] == "-", f"cryovox --help imported {line[3]}"
    res = _run("-m", "cryovox", "--help")
    assert res.returncode == 0, res.stderr
    assert "Usage" in res.stdout and "reconstruct" in res.stdout


def test_version(cli):
    res = cli("--version")
    assert res.code == 0
    assert res.out.strip() == f"cryovox {version('cryovox')}"
    import cryovox

    assert cryovox.__version__ == version("cryovox")


def _command_paths():
    """Every command and sub-command path, e.g. ('simulate', 'map')."""
    import typer.main

    from cryovox.cli import _load_commands
    from cryovox.cli._app import app

    _load_commands()
    root = typer.main.get_command(app)
    paths = []

    def walk(group, prefix):
        for name, cmd in group.commands.items():
            path = prefix + (name,)
            paths.append(path)
            if hasattr(cmd, "commands"):
                walk(cmd, path)

    walk(root, ())
    return paths


def test_every_command_help_has_an_example(cli):
    paths = _command_paths()
    names = {p for p in paths}
    for expected in [("simulate",), ("simulate", "map"), ("simulate", "particles"), ("reconstruct",), ("preprocess",)]:
        assert expected in names, f"command {' '.join(expected)} is not registered"
    missing = []
    for path in paths:
        res = cli(*path, "--help")
        assert res.code == 0, (path, res)
        if "Example:" not in res.out:
            missing.append(" ".join(path))
    assert not missing, f"--help without an 'Example:' line: {missing}"


@pytest.mark.parametrize("args", [("simulate", "particles"), ("reconstruct",), ("preprocess",)])
def test_missing_arguments_are_usage_errors(cli, args):
    res = cli(*args)
    assert res.code == 2
    assert "Usage" in res.err or "Missing" in res.err
