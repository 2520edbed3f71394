"""Progress for long work that suits where it goes: a tqdm bar on a terminal, plain lines in a log.

Why two forms: in a log file (CI, ``nohup``, SLURM) a tqdm bar becomes thousands of
carriage-return fragments. When stderr is not a terminal, :class:`Progress` instead writes one
plain line every ``every`` seconds (``$AVVP_PROGRESS_EVERY``, default 30) and one when done::

    extract 2 extractor(s): 120/400 clips (30%), 3.20 clips/s, ETA 1m28s, elapsed 37.5s, frames/s=25.6
    extract 2 extractor(s): done 400/400 clips (100%), 3.21 clips/s, elapsed 2m05s

:data:`LINE` parses both (tests and log scrapers use it).
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import TextIO

from tqdm import tqdm

from avvp_pipe.core.fmt import human_seconds

#: Seconds between two plain lines when stderr is not a terminal.
DEFAULT_EVERY = 30.0
EVERY_ENV = "AVVP_PROGRESS_EVERY"
#: One plain progress line: description, done/total, unit, percent, rate, ETA (absent when done).
LINE = re.compile(r"^(?P<description>.+?): (?P<final>done )?(?P<done>\d+)/(?P<total>\d+) (?P<unit>\S+) "
                  r"\((?P<percent>\d+)%\), (?P<rate>[\d.]+) \S+/s(?:, ETA (?P<eta>[^,]+))?, "
                  r"elapsed (?P<elapsed>[^,]+)(?:, (?P<postfix>.*))?$")


class Progress:
    """A bar (or plain lines) over ``total`` units that also keeps elapsed time and rate for summaries.

    ``stream`` defaults to stderr; ``tty`` (default: ``stream.isatty()``) picks the form;
    ``every`` (default ``$AVVP_PROGRESS_EVERY`` or 30 s) spaces the plain lines.
    """

    def __init__(self, total: int, description: str, *, unit: str = "clips", enabled: bool = True,
                 stream: TextIO | None = None, tty: bool | None = None, every: float | None = None):
        self.started = time.perf_counter()
        self.count = 0
        self.total, self.description, self.unit, self.enabled = total, description, unit, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.tty = _isatty(self.stream) if tty is None else tty
        self.every = _every() if every is None else every
        self._postfix: dict[str, object] = {}
        self._last_line = self.started
        self._closed = False
        self._bar = (tqdm(total=total, desc=description, unit=unit, file=self.stream, dynamic_ncols=True,
                          smoothing=0.1) if enabled and self.tty else None)

    def update(self, n: int = 1, **postfix: object) -> None:
        self.count += n
        if postfix:
            self._postfix.update(postfix)
        if self._bar is not None:
            self._bar.update(n)
            if postfix:
                self._bar.set_postfix(postfix, refresh=False)
        elif self.enabled and time.perf_counter() - self._last_line >= self.every:
            self._line()

    def write(self, message: str) -> None:
        """A line above the bar, or between the plain lines (per-epoch results and the like)."""
        if self._bar is not None:
            self._bar.write(message, file=self.stream)
        else:
            print(message, file=self.stream, flush=True)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def line(self, final: bool = False) -> str:
        """The plain progress line now (see :data:`LINE`)."""
        total = max(self.total, 0)
        percent = int(100 * self.count / total) if total else 100
        parts = [f"{self.description}: {'done ' if final else ''}{self.count}/{total} {self.unit} ({percent}%)",
                 f"{self.rate:.2f} {self.unit}/s"]
        if not final:
            parts.append(f"ETA {self._eta()}")
        parts.append(f"elapsed {human_seconds(self.elapsed)}")
        parts += [f"{key}={value}" for key, value in self._postfix.items()]
        return ", ".join(parts)

    def _eta(self) -> str:
        left = self.total - self.count
        return human_seconds(left / self.rate) if self.rate > 0 and left >= 0 else "?"

    def _line(self, final: bool = False) -> None:
        print(self.line(final), file=self.stream, flush=True)
        self._last_line = time.perf_counter()

    def close(self) -> None:
        """Close the bar, or write the final plain line (once; nothing when nothing was to do)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.enabled and self.total > 0:
            self._line(final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # a closed or file-like stream without isatty
        return False


def _every() -> float:
    """``$AVVP_PROGRESS_EVERY`` seconds, else :data:`DEFAULT_EVERY` (a bad value is ignored)."""
    try:
        return max(0.0, float(os.environ.get(EVERY_ENV, DEFAULT_EVERY)))
    except ValueError:
        return DEFAULT_EVERY
