"""README.md stays true: every ``avvp-pipe`` example parses with the current CLI, every
command of the CLI has an example there, every ``python -c`` line runs, and every
``avvp_pipe.<name>`` the text refers to exists.

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


def readme_python_lines() -> list[str]:
    """The code of every ``python -c "..."`` line of an indented block."""
    return re.findall(r'^    python -c "(.+)"$', README.read_text(), re.M)


def readme_api_names() -> list[str]:
    """Dotted ``avvp_pipe.x.y`` names in backticks (a call's arguments dropped)."""
    return sorted(set(re.findall(r"`(avvp_pipe(?:\.\w+)+)", README.read_text())))


def test_readme_has_python_lines_and_names() -> None:
    assert readme_python_lines() and len(readme_api_names()) >= 3


@pytest.mark.parametrize("code", readme_python_lines())
def test_readme_python_line_runs(code: str) -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("name", readme_api_names())
def test_readme_api_name_exists(name: str) -> None:
    import importlib

    parts = name.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            assert hasattr(obj, attr), f"README names {name} but {'.'.join(parts[:cut])} has no {attr}"
            obj = getattr(obj, attr)
        return
    raise AssertionError(f"README names {name}, which does not import")
