"""Errors a user can act on, each with its own process exit code.

The CLI turns any :class:`AvvpError` into one line on stderr and its ``exit_code``, so a
script driving avvp-pipe can tell bad input from a partial failure from missing weights.
Library code raises these (never ``assert``) so the check survives ``python -O``.
"""

from __future__ import annotations

#: Exit codes, documented in the README.
EXIT_OK = 0
EXIT_PARTIAL = 1  # the run finished, but some clips or pairings failed (see the summary)
EXIT_USAGE = 2  # click's own code for a bad option
EXIT_INPUT = 3  # a file, clip, store or annotation is not what was expected
EXIT_WEIGHTS = 4  # pretrained weights or an optional package are missing
EXIT_IO = 5  # the file system refused: disk full, permission denied, read-only, a path that is a file
EXIT_INTERRUPTED = 130


class AvvpError(Exception):
    """Base class: a problem the user can fix; the message is shown as one line."""

    exit_code = EXIT_INPUT


class AnnotationError(AvvpError):
    """An LLP annotation file is missing or malformed (the message names file and line)."""


class StoreError(AvvpError):
    """A feature store is missing, incomplete, or does not match what was asked for."""


class ClipError(AvvpError):
    """A clip cannot be decoded (missing, corrupt, no frames, decoder hang)."""


class WeightsError(AvvpError):
    """Pretrained weights or an optional package needed by an extractor are missing."""

    exit_code = EXIT_WEIGHTS


class PartialFailure(AvvpError):
    """Work finished, but some units failed; their reasons are in the summary."""

    exit_code = EXIT_PARTIAL


class FileSystemError(AvvpError):
    """Writing or reading failed in the file system itself (disk full, permissions); nothing
    already written is lost, and a rerun resumes once the cause is fixed."""

    exit_code = EXIT_IO


def os_error_line(err: OSError) -> str:
    """One line for an OSError: what the system said, and the file it said it of."""
    what = err.strerror or str(err) or type(err).__name__
    where = err.filename if err.filename is not None else None
    if err.filename2 is not None:
        where = f"{err.filename} -> {err.filename2}"
    return f"{where}: {what}" if where else what


def one_line(err: BaseException, limit: int = 300) -> str:
    """A library's error text on one short line: whitespace collapsed (decord's and torch's
    span several lines), terminal colour codes dropped, cut at ``limit``; its type if empty."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(err).split())) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."
