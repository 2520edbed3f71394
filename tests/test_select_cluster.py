"""``select`` on dask: a killed ``--workers 2`` run resumes to the in-process ranking; ``--scheduler ADDR``.

Real LocalClusters of 2 single-threaded processes on CPU, tiny simulated stores
(tests/featuresets.py) and a HAN shrunk to d_model = ffn = 64, 4 epochs on 80 test clips.
The killed run is the real command in a subprocess of its own session, killed (SIGKILL, the
whole process group: client, scheduler and workers) once the first result is in
``OUT/pairings``; the rerun is the same command.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from avvp_pipe.pipeline import cli as cli_mod
from tests.featuresets import make_quality_world

pytestmark = pytest.mark.filterwarnings("ignore:.*holds simulated features")
TRAIN_ARGS = ["--epochs", "4", "--batch-size", "8", "--lr", "0.001", "--d-model", "64", "--ffn", "64", "--quiet",
              "--allow-simulated", "--seeds", "2", "--parallel", "2", "--device", "cpu"]
#: how long the killed run may take to write its first result (worker start-up included)
FIRST_RESULT_S = 240


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    return make_quality_world(tmp_path_factory.mktemp("cluster"))


def _args(world: dict, out: Path, *extra: str) -> list[str]:
    return ["select", "--cache", world["cache"], "--dataset", "tiny", "--audio", "a0,a1,a2", "--visual", "v0,v2",
            "--annotations", world["ann_dir"], "--out", str(out), *TRAIN_ARGS, *extra]


def _invoke(args: list[str]):
    result = CliRunner().invoke(cli_mod.cli, args)
    assert result.exit_code == 0, result.output
    return result


def _ranking(out: Path) -> dict:
    """ranking.json without its timings (the only part that differs between two runs of the same work)."""
    ranking = json.loads((out / "ranking.json").read_text())
    return {k: v for k, v in ranking.items() if k != "time"}


@pytest.fixture(scope="module")
def in_process(world) -> dict:
    """The reference: the same selection trained in this process, no dask."""
    out = world["root"] / "here"
    _invoke(_args(world, out))
    return _ranking(out)


def _results(out: Path) -> list[Path]:
    return sorted((out / "pairings").glob("*.json"))


def _runs(out: Path) -> dict[str, tuple]:
    """key -> (per-epoch losses and select scores, eval scores) of every saved run: far more sensitive
    than ranking.json's F1, which a small change of the weights rarely moves."""
    runs = {}
    for path in _results(out):
        record = json.loads(path.read_text())
        runs[record["key"]] = ([(h["loss"], h["select"]) for h in record["history"]], record["scores"])
    return runs


def _kill_after_first_result(args: list[str], out: Path) -> None:
    """Run ``avvp-pipe ARGS`` in a session of its own and SIGKILL that whole group at the first result."""
    code = "import sys; from avvp_pipe.pipeline.cli import main; sys.argv[0] = 'avvp-pipe'; main()"
    proc = subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + FIRST_RESULT_S
        while not _results(out) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err.decode(errors="replace")[-2000:]
    _wait_group_gone(proc.pid)


def _wait_group_gone(pgid: int, timeout: float = 30.0) -> None:
    """Every process of the killed group (the workers too) has exited: nothing trains on behind our back."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise AssertionError(f"processes of the killed group {pgid} are still running")


def test_killed_cluster_run_resumes_to_the_in_process_ranking(world, in_process, tmp_path):
    out = tmp_path / "killed"
    args = _args(world, out, "--workers", "2")
    _kill_after_first_result(args, out)
    done = {p: p.stat().st_mtime_ns for p in _results(out)}
    assert 1 <= len(done) < 12, sorted(p.name for p in done)  # part-way: 6 pairings x 2 seeds
    assert not (out / "ranking.json").exists()
    rerun = _invoke(args)
    assert f"{len(done)} of 12 runs (pairing x seed) already done" in rerun.output
    assert {p: p.stat().st_mtime_ns for p in done} == done  # finished results were kept, not written again
    assert len(_results(out)) == 12
    assert _ranking(out) == in_process
    assert _runs(out) == _runs(world["root"] / "here")


def test_a_group_cut_short_trains_again_whole(world, in_process, tmp_path):
    """A kill between the two saves of a group: the missing seed is trained with its saved mate, as it was.

    Trained in a group of its own it would draw other dropout masks (the CLI's dropout is 0.1) and the
    ranking would differ from the uninterrupted one."""
    import shutil

    out = tmp_path / "cut"
    shutil.copytree(world["root"] / "here", out)
    (out / "ranking.json").unlink()
    saved = [json.loads(p.read_text()) for p in _results(out)]
    first = next(r for r in saved if r["seed"] == 1 and r["pairing"] == "a1+v2")
    assert len(first["group"]) == 2 and first["group"][0] == first["key"]
    mate = out / "pairings" / f"{first['group'][1]}.json"
    mate.unlink()
    kept = {p: p.stat().st_mtime_ns for p in _results(out)}
    rerun = _invoke(_args(world, out))
    assert "11 of 12 runs (pairing x seed) already done" in rerun.output
    assert "1 saved run(s) of 1 group(s) a kill left partly saved train again" in rerun.output
    assert {p: p.stat().st_mtime_ns for p in kept} == kept and mate.is_file()
    assert _ranking(out) == in_process
    assert _runs(out) == _runs(world["root"] / "here")  # alone, the mate's losses differ in the 4th digit


def test_scheduler_address_equals_in_process(world, in_process, tmp_path):
    """``--scheduler ADDR``: a running cluster (2 processes, 1 thread each) started here, not by select."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster:
        out = tmp_path / "scheduler"
        _invoke(_args(world, out, "--scheduler", cluster.scheduler_address))
        assert len(cluster.scheduler.workers) == 2  # select left the cluster running: it is not its own
        trained = cluster.scheduler.task_prefixes["train_unit"].state_counts  # the groups ran on its workers
        assert trained["memory"] == 6, dict(trained)  # 6 pairings, each one group of its 2 seeds, finished there
    assert _ranking(out) == in_process
    assert _runs(out) == _runs(world["root"] / "here")
