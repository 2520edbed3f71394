"""``train --seeds K``: K seeds in one grouped run equal K separate runs, the summary, resume, refusals.

Simulated stores (tests/featuresets.py), HAN shrunk to d_model = ffn = 64 and 3 epochs on
80 train clips, so the whole file runs in seconds on one CPU core. Dropout is 0 wherever
grouped and lone runs are compared: a group draws its members' dropout masks from one
generator, an equally valid but different draw (pipeline/train/engine.py).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from scipy import stats as sps

from avvp_pipe.core.errors import EXIT_INPUT, EXIT_USAGE, AvvpError
from avvp_pipe.models.metrics import metric_names
from avvp_pipe.pipeline.cli import cli
from avvp_pipe.pipeline.train import TrainConfig
from avvp_pipe.pipeline.train.engine import metric_value
from avvp_pipe.pipeline.train.pairing import load_pairing
from avvp_pipe.pipeline.train.run import train_run
from avvp_pipe.pipeline.train.seeds import (CHECKPOINT, SUMMARY, SeedsUsageError, plan_groups, train_seeds,
                                            train_seeds_run)
from tests.featuresets import make_annotations, make_cache
from tests.tolerance import float32_atol

STORES = ["a1:audio:32:0.7", "v1:visual-2d:48:0.7"]
pytestmark = pytest.mark.filterwarnings("ignore:.*holds simulated features")
CONFIG = TrainConfig(epochs=3, batch_size=8, lr=1e-3, seed=1, dropout=0.0, d_model=64, ffn=64)


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Annotations (80 train / 40 val / 40 test clips) and a cache holding the pairing a1+v1."""
    root = tmp_path_factory.mktemp("seeds")
    ann = make_annotations(root / "ann", n_clips=160, seed=1)
    return {"root": root, "ann": ann, "ann_dir": str(root / "ann"), "cache": make_cache(root / "cache", ann, STORES)}


def _run_seeds(world: dict, out: Path, seeds: int = 2, config: TrainConfig = CONFIG, **flags):
    return train_seeds_run(world["cache"], "tiny", world["ann_dir"], "a1", "v1", None, config, out, seeds,
                           allow_simulated=True, progress=False, **flags)


def _data(world: dict):
    return load_pairing(world["cache"], "tiny", world["ann"], ["train", "val", "test"], audio="a1", visual="v1",
                        allow_simulated=True)


@pytest.fixture(scope="module")
def grouped(world) -> dict:
    """One uninterrupted K = 2 run (seeds 1 and 2), shared by the equality, summary and resume tests."""
    out = world["root"] / "grouped"
    return {"out": out, "result": _run_seeds(world, out)}


def _metrics(folder: Path) -> dict:
    return json.loads((folder / "metrics.json").read_text())


def _predictions(folder: Path) -> dict:
    with np.load(folder / "predictions.npz") as data:
        return dict(data)


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in history]


# ---------------------------------------------------------------------- grouped == alone


def test_seed_folders_equal_separate_train_runs(world, grouped):
    """Each seed folder of one grouped K = 2 run holds what `train --seed s` writes on its own."""
    out = grouped["out"]
    assert sorted(p.name for p in out.iterdir()) == sorted(["seed-1", "seed-2", CHECKPOINT, SUMMARY])
    for seed in (1, 2):
        alone = world["root"] / f"alone-{seed}"
        train_run(world["cache"], "tiny", world["ann_dir"], "a1", "v1", None, replace(CONFIG, seed=seed), alone,
                  allow_simulated=True, progress=False)
        got, want = out / f"seed-{seed}", alone
        # the group's checkpoint stands in for the seed's; member.json names the group
        assert {p.name for p in got.iterdir()} == {p.name for p in want.iterdir()} - {"checkpoint.pt"} | {"member.json"}
        config = json.loads((got / "config.json").read_text())
        assert config == json.loads((want / "config.json").read_text()) and config["train"]["seed"] == seed
        m_got, m_want = _metrics(got), _metrics(want)
        assert m_got["best_epoch"] == m_want["best_epoch"]
        losses = [r["loss"] for r in m_want["epochs"]]
        # Stacked (bmm) and single (mm) matmuls may round differently: a float32 reduction over d_model = 64.
        np.testing.assert_allclose([r["loss"] for r in m_got["epochs"]], losses, atol=float32_atol(losses, 64), rtol=0)
        p_got, p_want = _predictions(got), _predictions(want)
        assert list(p_got["video_ids"]) == list(p_want["video_ids"])
        for key in ("frame_prob", "global_prob", "a_prob", "v_prob"):
            np.testing.assert_allclose(p_got[key], p_want[key], atol=float32_atol(p_want[key], 64), rtol=0)
        assert metric_value(m_got["eval"], "segment.type_at_av") == pytest.approx(
            metric_value(m_want["eval"], "segment.type_at_av"), abs=1e-9)
    assert _metrics(out / "seed-1")["epochs"][0]["loss"] != _metrics(out / "seed-2")["epochs"][0]["loss"]


def test_summary_is_the_t_interval_of_the_seed_metrics(grouped):
    out = grouped["out"]
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["seeds"] == [1, 2] and summary["runs"] == ["seed-1", "seed-2"]
    assert summary == grouped["result"].summary
    evals = [_metrics(out / f"seed-{s}")["eval"] for s in (1, 2)]
    assert set(summary["metrics"]) == set(metric_names())
    t = sps.t.ppf(0.975, 1)
    for name, got in summary["metrics"].items():
        values = [metric_value(e, name) for e in evals]
        mean, sd = sum(values) / 2, abs(values[0] - values[1]) / np.sqrt(2)  # sd of two values, by hand
        assert got["runs"] == values
        assert got["mean"] == pytest.approx(mean, abs=1e-12) and got["sd"] == pytest.approx(sd, abs=1e-12)
        assert got["ci95"] == pytest.approx([mean - t * sd / np.sqrt(2), mean + t * sd / np.sqrt(2)], abs=1e-12)
    assert summary["best_epochs"] == [_metrics(out / f"seed-{s}")["best_epoch"] for s in (1, 2)]


# ---------------------------------------------------------------------- resume, overwrite, refusals


class _Kill(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(world, grouped, tmp_path):
    out = tmp_path / "killed"

    def kill_after_two(records: list[dict]) -> None:
        assert len(records) == 2
        if records[0]["epoch"] == 2:
            raise _Kill

    data = _data(world)
    with pytest.raises(_Kill):
        train_seeds(data, world["ann"], CONFIG, out, 2, progress=False, on_epoch=kill_after_two)
    assert (out / CHECKPOINT).is_file() and not (out / SUMMARY).exists()
    assert _metrics(out / "seed-1")["eval"] is None and len(_metrics(out / "seed-2")["epochs"]) == 2
    with pytest.raises(AvvpError, match="--resume"):  # a run is there: no silent restart
        _run_seeds(world, out)
    epochs = []
    resumed = train_seeds(data, world["ann"], CONFIG, out, 2, resume=True, progress=False,
                          on_epoch=lambda records: epochs.append([r["epoch"] for r in records]))
    assert epochs == [[3, 3]]  # continued from the checkpoint, not retrained from epoch 1
    epochs.clear()
    for seed in (1, 2):
        want, got = grouped["out"] / f"seed-{seed}", out / f"seed-{seed}"
        assert _strip(_metrics(got)["epochs"]) == _strip(_metrics(want)["epochs"])
        assert _metrics(got)["eval"] == _metrics(want)["eval"]
        for key, value in _predictions(want).items():
            np.testing.assert_array_equal(_predictions(got)[key], value)
        best_a, best_b = (torch.load(f / "best.pt", weights_only=True) for f in (want, got))
        assert best_a["epoch"] == best_b["epoch"]
        assert all(torch.equal(v, best_b["model"][k]) for k, v in best_a["model"].items())
    assert {k: v for k, v in resumed.summary.items() if k != "train_seconds"} == {
        k: v for k, v in grouped["result"].summary.items() if k != "train_seconds"}

    # Finished: reported, not retrained (no file of a seed folder is written again).
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file() and p.parent != out}
    again = train_seeds(data, world["ann"], CONFIG, out, 2, resume=True, progress=False,
                        on_epoch=lambda records: epochs.append(records))
    assert again.already_finished and epochs == []
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps


def test_more_seeds_later_trains_only_the_new_ones(world, grouped, tmp_path):
    """K = 2 finished, then K = 3 with --resume: seeds 1 and 2 are read back, seed 3 is trained alone."""
    import shutil

    out = tmp_path / "grow"
    shutil.copytree(grouped["out"], out)
    trained = []
    result = train_seeds(_data(world), world["ann"], CONFIG, out, 3, resume=True, progress=False,
                         on_epoch=lambda records: trained.append(len(records)))
    assert trained == [1, 1, 1] and result.seeds == [1, 2, 3]
    assert result.summary["metrics"]["average"]["runs"][:2] == grouped["result"].summary["metrics"]["average"]["runs"]


def test_overwrite_and_refusals(world, grouped, tmp_path):
    out = tmp_path / "plain"
    train_run(world["cache"], "tiny", world["ann_dir"], "a1", "v1", None, replace(CONFIG, epochs=1), out,
              allow_simulated=True, progress=False)
    with pytest.raises(AvvpError, match="one seed.*--overwrite"):  # a plain run's checkpoint is not a group's
        _run_seeds(world, out, config=replace(CONFIG, epochs=1))
    result = _run_seeds(world, out, config=replace(CONFIG, epochs=1), overwrite=True)
    assert not (out / "config.json").exists() and (out / "seed-2" / "predictions.npz").is_file()
    with pytest.raises(AvvpError, match=r"train\.lr"):  # another config in a seed folder: the key that differs
        _run_seeds(world, out, config=replace(CONFIG, epochs=1, lr=1e-2), resume=True)
    stamp = (out / "seed-1" / "metrics.json").stat().st_mtime_ns
    again = _run_seeds(world, out, config=replace(CONFIG, epochs=1, lr=1e-2), overwrite=True)
    assert not again.already_finished and (out / "seed-1" / "metrics.json").stat().st_mtime_ns != stamp
    assert json.loads((out / "seed-1" / "config.json").read_text())["train"]["lr"] == 1e-2
    for bad in (0, -1):
        with pytest.raises(SeedsUsageError, match="--seeds: expected an integer >= 1"):
            _run_seeds(world, tmp_path / "bad", seeds=bad)
    assert not (tmp_path / "bad").exists()


def test_plan_groups():
    config = TrainConfig()
    assert plan_groups({1: "fresh", 2: "fresh"}, [], config) == [([1, 2], False)]
    assert plan_groups({1: "started", 2: "started"}, [1, 2], config) == [([1, 2], True)]
    # killed while the second group trained: the first is finished, the checkpoint is the second's
    assert plan_groups({1: "finished", 2: "started", 3: "started"}, [2, 3], config) == [([2, 3], True)]
    # the checkpoint's group is not all of ours (killed K = 3, rerun K = 2): start afresh
    assert plan_groups({1: "started", 2: "started"}, [1, 2, 3], config) == [([1, 2], False)]
    assert plan_groups({1: "finished", 2: "finished"}, [1, 2], config) == []
    assert plan_groups({1: "started", 2: "fresh", 3: "started"}, [1, 3], config) == [([1, 3], True), ([2], False)]


# ---------------------------------------------------------------------- CLI


def _cli_args(world: dict, out: Path, *extra: str) -> list[str]:
    return ["train", "--cache", world["cache"], "--dataset", "tiny", "--audio", "a1", "--visual", "v1",
            "--annotations", world["ann_dir"], "--out", str(out), "--epochs", "1", "--d-model", "64", "--ffn", "64",
            "--allow-simulated", "--quiet", *extra]


@pytest.mark.parametrize("bad", ["0", "-2"])
def test_cli_bad_seeds_is_one_line_usage_error(world, tmp_path, bad):
    result = CliRunner().invoke(cli, _cli_args(world, tmp_path / "out", "--seeds", bad))
    assert result.exit_code == EXIT_USAGE, result.output
    assert result.output.strip().count("\n") == 0 and "--seeds: expected an integer >= 1" in result.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("flags", [["--resume"], ["--overwrite"], []])
def test_cli_seed_folder_alone_is_refused(world, grouped, tmp_path, flags):
    """A seed folder has no checkpoint of its own: trained as a plain run it would start over outside its
    group, so train refuses it in one line naming the group, and nothing in it changes."""
    import shutil

    out = tmp_path / "group"
    shutil.copytree(grouped["out"], out)
    before = {p.name: p.read_bytes() for p in (out / "seed-2").iterdir()}
    result = CliRunner().invoke(cli, _cli_args(world, out / "seed-2", "--seed", "2", *flags))
    assert result.exit_code == EXIT_INPUT, result.output
    assert result.output.strip().count("\n") == 0 and "Traceback" not in result.output
    assert f"is seed 2 of the train --seeds group in {out}" in result.output and "--seeds K --resume" in result.output
    assert {p.name: p.read_bytes() for p in (out / "seed-2").iterdir()} == before


def test_cli_seeds_end_to_end(world, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    ok = runner.invoke(cli, _cli_args(world, out, "--seeds", "2", "--seed", "5"))
    assert ok.exit_code == 0, ok.output
    assert all(text in ok.output for text in ("seed 5", "seed 6", "95% CI", "segment.type_at_av"))
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["seeds"] == [5, 6] and summary["runs"] == ["seed-5", "seed-6"]
    row = next(line for line in ok.output.splitlines() if line.startswith("segment.type_at_av "))
    assert f"{summary['metrics']['segment.type_at_av']['mean']:.2f}" in row
    finished = runner.invoke(cli, _cli_args(world, out, "--seeds", "2", "--seed", "5", "--resume"))
    assert finished.exit_code == 0 and "already finished" in finished.output
    taken = runner.invoke(cli, _cli_args(world, out, "--seeds", "2", "--seed", "5"))
    assert taken.exit_code == EXIT_INPUT and "--resume" in taken.output
    again = runner.invoke(cli, _cli_args(world, out, "--seeds", "2", "--seed", "5", "--overwrite"))
    assert again.exit_code == 0 and "already finished" not in again.output
