"""The output directory of one run: run.log, command.txt, config.yaml, safe creation.

``with job(outdir, force=..., config=...) as run:`` creates ``outdir`` (refusing to reuse a
non-empty one without ``force`` or ``resume``), logs to the console and ``outdir/run.log``,
and records the command line and options. If the run fails on bad input before writing
anything of its own, the directory it created is removed again, so nothing is left behind.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from cryovox.errors import InputError
from cryovox.utils.files import to_plain, write_text_atomic

log = logging.getLogger("cryovox")


@dataclass
class Run:
    dir: Path
    config: dict[str, Any] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.dir / name

    def report(self, text: str) -> None:
        """A result line for the user: printed and logged."""
        log.info(text)



def prepare_outdir(outdir: Path, force: bool = False, resume: bool = False) -> bool:
    """Create ``outdir``. Returns True when this call created it.

    An existing non-empty directory is refused unless ``force`` (reuse, files overwritten)
    or ``resume`` (continue a previous run).
    """
    outdir = Path(outdir)
    if outdir.exists() and not outdir.is_dir():
        raise InputError(f"{outdir}: exists and is not a directory")
    if outdir.is_dir() and any(outdir.iterdir()):
        if not (force or resume):
            raise InputError(f"{outdir}: output directory exists and is not empty (use --force to overwrite)")
        return False
    existed = outdir.is_dir()
    outdir.mkdir(parents=True, exist_ok=True)
    return not existed


class _StderrHandler(logging.StreamHandler):
    """A stream handler that writes to whatever ``sys.stderr`` is now (not at creation)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(logfile: Path | None = None, verbose: bool = False) -> logging.Handler | None:
    """Console logging through rich on a terminal (plain otherwise) plus an optional file."""
    root = logging.getLogger("cryovox")
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False
    if not any(getattr(h, "_cryovox_console", False) for h in root.handlers):
        if sys.stderr.isatty():
            from rich.logging import RichHandler

            console: logging.Handler = RichHandler(show_path=False, rich_tracebacks=False)
            console.setFormatter(logging.Formatter("%(message)s"))
        else:
            console = _StderrHandler()
            console.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        console._cryovox_console = True  # type: ignore[attr-defined]
        root.addHandler(console)
    if logfile is None:
        return None
    handler = logging.FileHandler(logfile, mode="a")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root.addHandler(handler)
    return handler


def is_main_process() -> bool:
    import os

    return int(os.environ.get("RANK", "0")) == 0


@contextlib.contextmanager
def job(outdir: Path, *, force: bool = False, resume: bool = False,
        config: dict[str, Any] | None = None, command: str = "") -> Iterator[Run]:
    """Set up an output directory for one run (see module docstring)."""
    from cryovox import __version__
    import yaml

    outdir = Path(outdir)
    main = is_main_process()
    created = prepare_outdir(outdir, force=force, resume=resume) if main else False
    outdir.mkdir(parents=True, exist_ok=True)
    handler = setup_logging(outdir / "run.log" if main else None)
    run = Run(outdir, dict(config or {}))
    if main:
        argv = " ".join(shlex.quote(a) for a in sys.argv)
        with open(outdir / "command.txt", "a") as f:
            f.write(f"# {time.strftime('%Y-%m-%d %H:%M:%S')} cryovox {__version__}\n{argv}\n")
        cfg = {"command": command, "cryovox_version": __version__, "options": to_plain(run.config)}
        write_text_atomic(outdir / "config.yaml", yaml.safe_dump(cfg, sort_keys=False))
        if handler is not None:  # the start line goes to run.log only, keeping error output to one line
            handler.handle(log.makeRecord(log.name, logging.INFO, __file__, 0, "cryovox %s %s → %s",
                                          (__version__, command, outdir), None))
    t0 = time.monotonic()
    try:
        yield run
    except InputError:
        if created and main:
            logging.getLogger("cryovox").removeHandler(handler) if handler else None
            if handler:
                handler.close()
                handler = None
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    else:
        log.info("done in %.1f s; outputs in %s", time.monotonic() - t0, outdir)
    finally:
        if handler is not None:
            logging.getLogger("cryovox").removeHandler(handler)
            handler.close()
