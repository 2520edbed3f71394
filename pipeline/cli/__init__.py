"""The ``avvp-pipe`` command line: a thin click layer that parses and calls library code.

Each command group lives in its own module of this package (as lhotse's ``bin/modes``);
this module only assembles them and maps :class:`~avvp_pipe.core.errors.AvvpError` to exit codes.
"""

from __future__ import annotations

import logging
import sys
import warnings

import click

from avvp_pipe.core.version import __version__
from avvp_pipe.core.errors import EXIT_INTERRUPTED, EXIT_IO, AvvpError, os_error_line


class _Cli(click.Group):
    """A group whose commands report :class:`AvvpError` as one line and an exit code."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AvvpError as err:
            click.echo(f"error: {err}", err=True)
            sys.exit(err.exit_code)
        except OSError as err:  # disk full, permissions, a path that is a file: the system's word, one line
            click.echo(f"error: {os_error_line(err)} (finished work is kept; rerun once this is fixed)", err=True)
            sys.exit(EXIT_IO)
        except KeyboardInterrupt:
            click.echo("interrupted: finished work is kept; rerun to resume", err=True)
            sys.exit(EXIT_INTERRUPTED)


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="avvp-pipe")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """avvp-pipe: extract features for LLP clips, train HAN (+MTSC), rank extractor pairings."""
    warnings.formatwarning = _one_line_warning
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


def _one_line_warning(message, category, filename, lineno, line=None) -> str:  # noqa: ANN001
    """Warnings meant for the user (simulated features, padding) as one line, not a source excerpt."""
    return f"warning: {message}\n"


def _register() -> None:
    """Attach every command module; each exposes ``COMMANDS`` (a list of click commands)."""
    import importlib
    import pkgutil

    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        for command in getattr(module, "COMMANDS", []):
            cli.add_command(command)


_register()


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="avvp-pipe")
