"""``avvp-pipe train`` on small simulated feature sets: learning, resume, run dir, MTSC, CLI."""

from __future__ import annotations

import json
import warnings
from dataclasses import replace
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from avvp_pipe.cache.store import UnrealFeaturesWarning
from avvp_pipe.pipeline.cli import cli
from avvp_pipe.core.errors import EXIT_INPUT, AvvpError, StoreError
from avvp_pipe.pipeline.evaluate.scores import evaluate_predictions, load_predictions
from avvp_pipe.pipeline.train.pairing import load_pairing
from avvp_pipe.pipeline.train import TrainConfig, load_run, train_pairing
from avvp_pipe.pipeline.train.engine import batch_order, init_model, predict, training_loss
from tests.featuresets import make_annotations, make_cache

STORES = ["a1:audio:32:0.9", "v1:visual-2d:48:0.9", "s1:visual-3d:16:0.9", "v2:visual-2d:48:0.9"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Small and quick, but the official optimiser, scheduler and batch size.
FAST = TrainConfig(epochs=4, batch_size=8, lr=1e-3, seed=3)


@pytest.fixture(autouse=True)
def _quiet_simulated_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrealFeaturesWarning)
        yield


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Annotations (80 train / 40 val / 40 test clips), a cache and the pairing a1+v1+s1 in memory."""
    root = tmp_path_factory.mktemp("train")
    ann = make_annotations(root / "ann", n_clips=160, seed=0)
    cache = make_cache(root / "cache", ann, STORES)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrealFeaturesWarning)
        data = load_pairing(cache, "tiny", ann, ["train", "val", "test"], audio="a1", visual="v1",
                            visual_3d="s1", allow_simulated=True)
    return {"root": root, "ann": ann, "cache": cache, "data": data}


@pytest.fixture(scope="module")
def full_run(world):
    """One uninterrupted 4-epoch run, shared by the quality, run-dir and resume tests."""
    out = world["root"] / "full"
    result = train_pairing(world["data"], world["ann"], FAST, out, progress=False)
    return result, out


def _nothing(ann, split: str, n_ids: list[str]) -> dict:
    n = len(n_ids)
    zeros = {"video_ids": np.asarray(n_ids), "frame_prob": np.zeros((n, 10, 2, 25), np.float32),
             "global_prob": np.zeros((n, 25), np.float32)}
    return evaluate_predictions(zeros, ann, split)


def test_learns_far_better_than_predicting_nothing(world, full_run):
    result, _ = full_run
    nothing = _nothing(world["ann"], "test", world["data"].splits["test"].ids)
    ours, base = result.scores["segment"]["type_at_av"], nothing["segment"]["type_at_av"]
    assert ours > base + 15.0, (ours, base)
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    select = [r["select"] for r in result.history]
    assert result.best_epoch == len(select) - int(np.argmax(select[::-1]))  # the last best: ties keep the later


def test_run_dir_contents(world, full_run):
    result, out = full_run
    config = json.loads((out / "config.json").read_text())
    assert {"train", "han", "cache", "dataset", "annotations", "stores", "pairing", "versions"} <= set(config)
    assert config["train"]["keep_visual_head"] is False  # resolved: MTSC off
    assert config["stores"]["visual"] == world["data"].store_keys()["visual"]
    assert config["pairing"] == "a1+v1+s1" and config["han"]["visual_3d_dim"] == 16
    metrics = json.loads((out / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["epochs"]] == [1, 2, 3, 4]
    for record in metrics["epochs"]:
        assert {"epoch", "loss", "bce", "mtsc", "lr", "select", "seconds"} <= set(record)
    # StepLR(10) has not stepped yet within 4 epochs: the lr logged is the configured one.
    assert all(r["lr"] == pytest.approx(FAST.lr) for r in metrics["epochs"])
    assert metrics["best_epoch"] == result.best_epoch
    assert metrics["eval"]["segment"] == result.scores["segment"]
    for png in ("curve.png", "per_class_f1.png"):
        assert (out / png).read_bytes()[:8] == PNG_MAGIC
        image = matplotlib.image.imread(out / png)  # decodes: a complete, valid PNG
        assert image.ndim == 3 and min(image.shape[:2]) > 100
    pred = load_predictions(out / "predictions.npz")
    assert {"a_prob", "v_prob"} <= set(pred)
    rescored = evaluate_predictions(pred, world["ann"], "test")
    assert rescored["segment"] == metrics["eval"]["segment"]
    # best.pt reloads to the model that made predictions.npz.
    model, head, loaded = load_run(out)
    assert head is None and loaded["train"]["epochs"] == 4
    again = predict(model, world["data"].splits["test"], FAST)
    np.testing.assert_allclose(again["frame_prob"], pred["frame_prob"], atol=1e-6)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["epoch"] == 4 and ckpt["stores"] == config["stores"]


class _Kill(Exception):
    pass


def test_resume_after_kill_equals_uninterrupted(world, full_run):
    result, out_full = full_run
    out = world["root"] / "resumed"

    def kill_after_two(record: dict) -> None:
        if record["epoch"] == 2:
            raise _Kill

    with pytest.raises(_Kill):
        train_pairing(world["data"], world["ann"], FAST, out, progress=False, on_epoch=kill_after_two)
    assert json.loads((out / "metrics.json").read_text())["eval"] is None
    with pytest.raises(AvvpError, match="--resume"):  # a run is there: no silent restart
        train_pairing(world["data"], world["ann"], FAST, out, progress=False)
    resumed = train_pairing(world["data"], world["ann"], FAST, out, resume=True, progress=False)

    def strip(history):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in history]

    assert strip(resumed.history) == strip(result.history)
    assert resumed.best_epoch == result.best_epoch and resumed.scores == result.scores
    best_a = torch.load(out_full / "best.pt", weights_only=True)
    best_b = torch.load(out / "best.pt", weights_only=True)
    assert best_a["epoch"] == best_b["epoch"]
    for key, value in best_a["model"].items():
        assert torch.equal(value, best_b["model"][key]), key

    # A finished run is reported finished, not retrained.
    stamp = (out / "checkpoint.pt").stat().st_mtime_ns
    again = train_pairing(world["data"], world["ann"], FAST, out, resume=True, progress=False)
    assert again.already_finished and again.best_epoch == result.best_epoch
    assert (out / "checkpoint.pt").stat().st_mtime_ns == stamp

    # Another config or other stores: an error naming the differing key.
    with pytest.raises(AvvpError, match=r"train\.lr"):
        train_pairing(world["data"], world["ann"], replace(FAST, lr=1e-2), out, resume=True, progress=False)
    other = load_pairing(world["cache"], "tiny", world["ann"], ["train", "val", "test"], audio="a1",
                         visual="v2", visual_3d="s1", allow_simulated=True)
    with pytest.raises(AvvpError, match=r"stores\.visual"):
        train_pairing(other, world["ann"], FAST, out, resume=True, progress=False)


def test_batch_order_is_a_seeded_permutation_per_epoch():
    config = TrainConfig(batch_size=16, seed=5)
    first = batch_order(70, config, 1)
    assert [len(b) for b in first] == [16, 16, 16, 16, 6]
    assert sorted(np.concatenate(first).tolist()) == list(range(70))
    assert all(np.array_equal(a, b) for a, b in zip(first, batch_order(70, config, 1)))
    assert not np.array_equal(np.concatenate(first), np.concatenate(batch_order(70, config, 2)))


def _batch(world, n: int = 8):
    s = world["data"].splits["train"]
    t = [torch.from_numpy(x[:n]) for x in (s.audio, s.visual, s.visual_3d, s.labels)]
    return t


def test_mtsc_terms_and_heads(world):
    dims = world["data"].dims
    audio, visual, v3, labels = _batch(world)
    off_model, off_head = init_model(dims, TrainConfig())
    _, parts_off = training_loss(off_model, off_head, audio, visual, v3, labels, TrainConfig())
    assert off_head is None and parts_off["mtsc"] is None and parts_off["loss"] == parts_off["bce"]

    losses = {}
    for variant in ("part", "entire"):
        config = TrainConfig(mtsc=variant, mtsc_weight=2.0, dropout=0.0)
        model, head = init_model(dims, config)
        assert head is None and "visual_head.weight" in model.state_dict()  # kept by default with MTSC
        loss, parts = training_loss(model, head, audio, visual, v3, labels, config)
        assert parts["mtsc"] > 0
        assert loss.item() == pytest.approx(parts["bce"] + 2.0 * parts["mtsc"], rel=1e-5)
        losses[variant] = parts["mtsc"]
    assert losses["part"] != pytest.approx(losses["entire"], rel=1e-3)

    # MTSC without keeping g: a separate head, trained by MTSC only, never part of HAN.
    config = TrainConfig(mtsc="entire", keep_visual_head=False)
    model, head = init_model(dims, config)
    assert isinstance(head, torch.nn.Linear) and "visual_head.weight" not in model.state_dict()
    bce_model, _ = init_model(dims, TrainConfig())
    for key, value in bce_model.state_dict().items():  # same seeded HAN with or without the head
        assert torch.equal(value, model.state_dict()[key]), key
    loss, parts = training_loss(model, head, audio, visual, v3, labels, config)
    loss.backward()
    assert parts["mtsc"] > 0 and head.weight.grad is not None and head.weight.grad.abs().sum() > 0


def test_bf16_autocast_on_cpu(world):
    config = TrainConfig(precision="bf16", mtsc="entire")
    model, head = init_model(world["data"].dims, config)
    loss, parts = training_loss(model, head, *_batch(world), config)
    loss.backward()
    assert loss.dtype == torch.float32 and np.isfinite(parts["loss"]) and parts["mtsc"] > 0
    pred = predict(model, world["data"].splits["val"], config)
    assert pred["frame_prob"].dtype == np.float32 and pred["frame_prob"].shape == (40, 10, 2, 25)


def test_train_on_test_scored_on_test_with_mtsc_head(world, tmp_path):
    """Stage three's protocol (train = select = eval = test), here with a separate MTSC head."""
    data = load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="a1", visual="v1",
                        visual_3d="s1", allow_simulated=True)
    config = replace(FAST, epochs=2, train_split="test", select_split="test", eval_split="test",
                     mtsc="part", keep_visual_head=False)
    result = train_pairing(data, world["ann"], config, tmp_path / "stage3", progress=False)
    assert result.scores["split"] == "test" and result.scores["clips"] == len(data.splits["test"])
    assert list(result.predictions["video_ids"]) == data.splits["test"].ids
    assert all(r["mtsc"] > 0 for r in result.history)
    model, head, cfg = load_run(tmp_path / "stage3")
    assert head is not None and model.visual_head is None and cfg["train"]["mtsc"] == "part"
    saved = torch.load(tmp_path / "stage3" / "best.pt", weights_only=True)
    assert torch.equal(head.weight, saved["head"]["weight"])


def test_config_errors():
    with pytest.raises(AvvpError, match="--select-metric"):
        TrainConfig(select_metric="segment.typeav")
    with pytest.raises(AvvpError, match="--mtsc"):
        TrainConfig(mtsc="full")
    with pytest.raises(AvvpError, match="--precision"):
        TrainConfig(precision="fp16", device="cpu")


def _cli_args(world, out: Path, *extra: str) -> list[str]:
    return ["train", "--cache", world["cache"], "--dataset", "tiny", "--audio", "a1", "--visual", "v1",
            "--annotations", str(world["root"] / "ann"), "--out", str(out), "--epochs", "1", "--quiet", *extra]


def test_cli_end_to_end(world, tmp_path):
    runner = CliRunner()
    out = tmp_path / "cli"
    refused = runner.invoke(cli, _cli_args(world, out))
    assert refused.exit_code == EXIT_INPUT, refused.output
    assert "simulated" in refused.output and "--allow-simulated" in refused.output
    assert not (out / "config.json").exists()

    bad = runner.invoke(cli, _cli_args(world, out, "--allow-simulated", "--select-metric", "segment.f1"))
    assert bad.exit_code == EXIT_INPUT and "--select-metric" in bad.output and "type_at_av" in bad.output

    ok = runner.invoke(cli, _cli_args(world, out, "--allow-simulated", "--mtsc", "entire"))
    assert ok.exit_code == 0, ok.output
    assert "Type@AV" in ok.output and "best epoch 1" in ok.output
    config = json.loads((out / "config.json").read_text())
    assert config["han"]["visual_3d_dim"] is None and config["train"]["keep_visual_head"] is True

    finished = runner.invoke(cli, _cli_args(world, out, "--allow-simulated", "--mtsc", "entire", "--resume"))
    assert finished.exit_code == 0 and "already finished" in finished.output
    taken = runner.invoke(cli, _cli_args(world, out, "--allow-simulated"))
    assert taken.exit_code == EXIT_INPUT and "train.mtsc" in taken.output
    replaced = runner.invoke(cli, _cli_args(world, out, "--allow-simulated", "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert json.loads((out / "config.json").read_text())["train"]["mtsc"] == "off"


def test_split_without_dense_labels_is_refused(world, tmp_path):
    with pytest.raises(AvvpError, match="--select-split train"):
        train_pairing(world["data"], world["ann"], replace(FAST, select_split="train"), tmp_path / "x",
                      progress=False)


def test_pairing_refusal_is_a_store_error(world):
    with pytest.raises(StoreError, match="--allow-simulated"):
        load_pairing(world["cache"], "tiny", world["ann"], ["test"], audio="a1", visual="v1")
