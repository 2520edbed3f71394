"""The demo's stages are real command lines: each must parse with the current CLI.

Running the whole demo takes minutes (``make demo``); parsing every stage catches the
drift that breaks it (a renamed option, a removed command) in milliseconds.
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest

from avvp_pipe.pipeline.cli import cli
from avvp_pipe.pipeline.demo import stages


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
    out = tmp_path / "demo"
    plan = stages(out, quick)
    assert len(plan) >= 6
    for title, args in plan:
        command, rest = _resolve(args)
        _make_outputs_of_earlier_stages(command, rest, out)
        try:
            command.make_context(command.name, rest)  # parses and validates, runs nothing
        except click.UsageError as err:
            raise AssertionError(f"demo stage {title!r}: {err.format_message()}") from None


def _make_outputs_of_earlier_stages(command: click.Command, rest: list[str], out: Path) -> None:
    """Create the paths under the demo folder that options require to exist (earlier stages write them)."""
    for param in command.params:
        if not (isinstance(param.type, click.Path) and param.type.exists):
            continue
        for flag in param.opts:
            if flag in rest and rest.index(flag) + 1 < len(rest):
                path = Path(rest[rest.index(flag) + 1])
                if out in path.parents and not path.exists():
                    if path.suffix:
                        path.parent.mkdir(parents=True, exist_ok=True)
                        path.touch()
                    else:
                        path.mkdir(parents=True)


def test_a_wrong_option_would_be_caught(tmp_path: Path) -> None:
    command, rest = _resolve(["cache", "ls", str(tmp_path), "--no-such-option"])
    with pytest.raises(click.UsageError):
        command.make_context(command.name, rest)
