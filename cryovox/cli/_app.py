"""The typer application object and the options every command shares."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="cryovox",
    help="Learned density priors and fast heterogeneous reconstruction for cryo-EM.\n\n"
    "Add --debug to any command to see the full traceback of an error.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from cryovox import __version__

        typer.echo(f"cryovox {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Optional[bool] = typer.Option(None, "--version", callback=_version, is_eager=True,
                                           help="Print the version and exit."),
) -> None:
    """cryovox: cryo-EM density priors and heterogeneous reconstruction."""


# Shared options (use as defaults in command signatures).
def outdir_option(help: str = "Output directory (created; refused if it exists and is not empty, "
                  "unless --force).") -> Path:
    return typer.Option(..., "-o", "--outdir", help=help)


def force_option() -> bool:
    return typer.Option(False, "--force", help="Overwrite an existing output.")


def seed_option(default: int = 0) -> int:
    return typer.Option(default, "--seed", help="Random seed (runs with the same seed are repeatable).")


def device_option() -> str:
    return typer.Option("auto", "--device", help="auto | cpu | cuda | cuda:N.")
