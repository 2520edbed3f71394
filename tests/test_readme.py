"""README.md stays true: every ``avvp-pipe`` example parses with the current CLI, and every
command of the CLI has an example there.

Only parsing is checked (nothing runs); an option that names a file the example does not
ship (``--predictions P.npz``) may fail its existence check, and nothing else may.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from avvp_pipe.pipeline.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_examples() -> list[str]:
    """Command lines starting with ``avvp-pipe``: indented blocks (with ``\\`` continuations) and table cells."""
    text = README.read_text()
    lines = re.sub(r"\\\n\s*", " ", text).splitlines()
    found = [line.strip() for line in lines if line.startswith("    avvp-pipe ")]
    found += re.findall(r"`(avvp-pipe [^`]+)`", text)
    return found


def leaf(args: list[str]) -> tuple[click.Command, list[str], str]:
    command: click.Command = cli
    path = []
    while isinstance(command, click.Group):
        name, args = args[0], args[1:]
        found = command.get_command(click.Context(command), name)
        if found is None:
            raise AssertionError(f"README names a command that does not exist: avvp-pipe {' '.join(path + [name])}")
        command, path = found, path + [name]
    return command, args, " ".join(path)


def all_commands(group: click.Group = cli, prefix: str = "") -> list[str]:
    names = []
    for name in group.list_commands(click.Context(group)):
        command = group.get_command(click.Context(group), name)
        full = f"{prefix}{name}"
        names += all_commands(command, full + " ") if isinstance(command, click.Group) else [full]
    return names


def test_readme_has_examples() -> None:
    assert len(readme_examples()) >= 15


@pytest.mark.parametrize("example", readme_examples())
def test_readme_example_parses(example: str) -> None:
    args = shlex.split(example.replace("<key>", "KEY"))[1:]
    command, rest, _ = leaf(args)
    try:
        command.make_context(command.name, rest)
    except click.BadParameter as err:
        if "does not exist" not in err.format_message():
            raise AssertionError(f"{example}: {err.format_message()}") from None
    except click.UsageError as err:
        raise AssertionError(f"{example}: {err.format_message()}") from None


def test_every_command_has_a_readme_example() -> None:
    documented = {leaf(shlex.split(e.replace("<key>", "KEY"))[1:])[2] for e in readme_examples()}
    missing = sorted(set(all_commands()) - documented)
    assert not missing, f"commands without an example in README.md: {missing}"
