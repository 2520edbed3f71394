"""Progress for long work: a tqdm bar (rate and ETA) on stderr, and the elapsed time after."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm


class Progress:
    """A bar over ``total`` units that also remembers elapsed time and rate for summaries."""

    def __init__(self, total: int, description: str, *, unit: str = "clips", enabled: bool = True):
        self.started = time.perf_counter()
        self.count = 0
        self._bar = tqdm(total=total, desc=description, unit=unit, file=sys.stderr,
                         disable=not enabled, dynamic_ncols=True, smoothing=0.1)

    def update(self, n: int = 1, **postfix: object) -> None:
        self.count += n
        self._bar.update(n)
        if postfix:
            self._bar.set_postfix(postfix, refresh=False)

    def write(self, message: str) -> None:
        """A line above the bar (per-epoch results and the like)."""
        self._bar.write(message, file=sys.stderr)

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    @property
    def rate(self) -> float:
        return self.count / self.elapsed if self.elapsed > 0 else 0.0

    def close(self) -> None:
        self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
