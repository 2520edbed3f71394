"""Progress on a non-terminal: plain lines every N seconds that a log (and a regex) can read."""

from __future__ import annotations

import io

import pytest

from avvp_pipe.core import progress as progress_module
from avvp_pipe.core.progress import LINE, Progress


class Clock:
    """perf_counter under the test's control."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture()
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress_module.time, "perf_counter", clock)
    return clock


def parsed(stream: io.StringIO) -> list[dict]:
    lines = stream.getvalue().splitlines()
    assert "\r" not in stream.getvalue() and all(LINE.match(line) for line in lines), lines
    return [LINE.match(line).groupdict() for line in lines]


def test_plain_lines_every_n_seconds_then_a_final_one(clock):
    out = io.StringIO()
    with Progress(400, "extract 2 extractor(s)", stream=out, every=30) as bar:
        for _ in range(40):  # 4 s a clip: a line at 32 s (8 clips), 64 s, ...
            clock.now += 4
            bar.update(1, **{"frames/s": "20.0"})
    rows = parsed(out)
    assert len(rows) == 5 + 1  # 160 s of work, a line each >= 30 s, and the final one
    first, last = rows[0], rows[-1]
    assert (first["description"], first["done"], first["total"], first["unit"]) == ("extract 2 extractor(s)", "8", "400", "clips")
    assert float(first["rate"]) == pytest.approx(0.25) and first["eta"] == "26m08s"  # 392 clips at 0.25/s: 1568 s
    assert first["percent"] == "2" and first["postfix"] == "frames/s=20.0" and first["final"] is None
    assert last["final"] == "done " and last["done"] == "40" and last["eta"] is None and last["elapsed"] == "2m40s"


def test_messages_between_lines_and_nothing_when_disabled(clock):
    out = io.StringIO()
    with Progress(3, "train", unit="epochs", stream=out, every=0) as bar:
        clock.now += 2
        bar.update(1)
        bar.write("epoch 1: val 51.2")
    assert out.getvalue().splitlines()[1] == "epoch 1: val 51.2"
    assert LINE.match(out.getvalue().splitlines()[0])["eta"] == "4.0s"
    quiet = io.StringIO()
    with Progress(3, "train", stream=quiet, enabled=False) as bar:
        bar.update(3)
    assert quiet.getvalue() == "" and bar.count == 3


def test_every_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("AVVP_PROGRESS_EVERY", "5")
    assert Progress(1, "x", stream=io.StringIO()).every == 5.0
    monkeypatch.setenv("AVVP_PROGRESS_EVERY", "soon")
    assert Progress(1, "x", stream=io.StringIO()).every == progress_module.DEFAULT_EVERY


def test_a_terminal_gets_a_tqdm_bar():
    out = io.StringIO()
    with Progress(2, "synth", stream=out, tty=True) as bar:
        bar.update(2)
    assert "\r" in out.getvalue() and "2/2" in out.getvalue()
