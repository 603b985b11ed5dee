"""The ``cryovox`` command.

Command modules live beside this file (one per command or command group) and register on
``cryovox.cli._app.app``; they import their pipelines inside the command body so that
``cryovox --help`` stays fast. ``main`` turns :class:`~cryovox.errors.InputError` into one
line on stderr and exit code 2; any other exception is a bug: one line asking for a report,
or the whole traceback with ``--debug``.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

from cryovox.cli._app import app
from cryovox.errors import InputError

_loaded = False


def _load_commands() -> None:
    global _loaded
    if _loaded:
        return
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _loaded = True


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    _load_commands()
    try:
        app(args=args, prog_name="cryovox", standalone_mode=False)
    except InputError as err:
        if debug:
            raise
        print(f"cryovox: error: {err}", file=sys.stderr)
        return 2
    except typer.Exit as err:
        return err.exit_code
    except typer.Abort:
        print("cryovox: aborted", file=sys.stderr)
        return 130
    except ClickException as err:
        err.show()
        return err.exit_code
    except KeyboardInterrupt:
        print("cryovox: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # a bug: say so in one line unless --debug
        if debug:
            raise
        print(f"cryovox: internal error: {type(err).__name__}: {err} "
              "(rerun with --debug for the traceback and please report it)", file=sys.stderr)
        return 1
    return 0


def entry() -> None:
    sys.exit(main())
