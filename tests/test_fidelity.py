"""Smaller fidelity points of issue 14: the official epoch tie rule."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch


def test_epoch_ties_keep_the_later_epoch(monkeypatch):
    """The official main() keeps an epoch whose score equals the best so far (``F >= best_F``)."""
    from avvp_pipe.pipeline.train import engine

    scores = iter([50.0, 50.0, 49.0, 51.0, 51.0])
    monkeypatch.setattr(engine, "predict_on_device", lambda model, split, config: None)
    monkeypatch.setattr(engine, "evaluate_predictions", lambda pred, annotations, split: None)
    monkeypatch.setattr(engine, "metric_value", lambda scores_json, metric: next(scores))
    model = torch.nn.Linear(1, 1)
    run = SimpleNamespace(model=model, head=None, best_epoch=0, best_score=float("-inf"), best_model=None,
                          best_head=None)
    config = SimpleNamespace(select_split="val", select_metric="segment_type_av")
    kept = []
    for epoch in range(1, 6):
        with torch.no_grad():
            model.weight.fill_(float(epoch))  # the weights name their epoch
        engine._select(run, None, None, config, epoch)
        kept.append(run.best_epoch)
    assert kept == [1, 2, 2, 4, 5]
    assert run.best_score == 51.0 and run.best_model["weight"].item() == pytest.approx(5.0)


def test_r2plus1d_kinetics_protocol_resizes_and_crops():
    """Kinetics: short side 128 then a centre 112 crop; LLP: 112x112 exact, and the old store key."""
    import numpy as np

    from avvp_pipe.extractors import create

    llp = create("r2plus1d_18", device="cpu", random_init=True)
    kin = create("r2plus1d_18", device="cpu", random_init=True, protocol="kinetics")
    assert "protocol" not in llp.config()["options"] and llp.config()["input"]["resize_mode"] == "exact"
    assert kin.config()["options"]["protocol"] == "kinetics" and kin.config()["input"]["crop"] == 112
    frames = np.random.default_rng(0).integers(0, 256, (80, 240, 320, 3), dtype=np.uint8)
    clip = SimpleNamespace(clip_id="x", frames=frames)
    items = kin.prepare(clip)  # (10, 3, 8, 112, 112)
    assert tuple(items.shape) == (10, 3, 8, 112, 112)
    import torchvision.transforms.v2.functional as F

    x = torch.as_tensor(frames).permute(0, 3, 1, 2)
    ref = F.center_crop(F.resize(x, [128], antialias=True), [112, 112])  # (80, 3, 112, 112): 128x170 -> crop
    ref = F.normalize(F.to_dtype(ref, torch.float32, scale=True), [0.43216, 0.394666, 0.37645],
                      [0.22803, 0.22145, 0.216989])
    assert torch.equal(items.permute(0, 2, 1, 3, 4).reshape(80, 3, 112, 112), ref)
    assert not torch.equal(llp.prepare(clip), items)
    with pytest.raises(Exception, match="protocol"):
        create("r2plus1d_18", device="cpu", random_init=True, protocol="imagenet")
