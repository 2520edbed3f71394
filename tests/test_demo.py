"""The demo's stages are real command lines: each must parse with the current CLI.

Running the whole demo takes minutes (``make demo``); parsing every stage catches the
drift that breaks it (a renamed option, a removed command) in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from pipeline.cli import cli
from pipeline.demo import stages


def _resolve(args: list[str]) -> tuple[click.Command, list[str]]:
    """The leaf command of an avvp-pipe argument list and its own arguments."""
    command: click.Command = cli
    rest = list(args)
    while isinstance(command, click.Group):
        name, rest = rest[0], rest[1:]
        found = command.get_command(click.Context(command), name)
        if found is None:
            raise AssertionError(f"avvp-pipe has no command {name!r} (demo stage {args})")
        command = found
    return command, rest


@pytest.mark.parametrize("quick", [True, False])
def test_every_demo_stage_parses(tmp_path: Path, quick: bool) -> None:
    plan = stages(tmp_path / "demo", quick)
    assert len(plan) >= 6
    for title, args in plan:
        command, rest = _resolve(args)
        try:
            command.make_context(command.name, rest)  # parses and validates, runs nothing
        except click.UsageError as err:
            raise AssertionError(f"demo stage {title!r}: {err.format_message()}") from None


def test_a_wrong_option_would_be_caught(tmp_path: Path) -> None:
    command, rest = _resolve(["cache", "ls", str(tmp_path), "--no-such-option"])
    with pytest.raises(click.UsageError):
        command.make_context(command.name, rest)
