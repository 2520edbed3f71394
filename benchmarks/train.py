"""Benchmark the ``avvp-pipe train`` loop against the model alone (not a test).

Both run at the official dims (audio 128, visual 2048 per-second means, 3D 512; batch 16,
Adam 3e-4, deterministic mode as in a run) on random in-memory features:

- model alone: forward + BCE + backward + Adam step on ONE fixed batch already on the device
  (no data handling at all), as many steps as an epoch has;
- full loop: ``avvp_pipe.pipeline.train.engine.train_epoch``, the loop ``train`` runs (batch_order, one index
  copy per epoch, index_select per step, loss, step, one host sync per epoch).

The ratio (model-alone time / loop time) says how much the loop costs on top of the model;
the target is >= 0.9. Because other processes' load makes those two noisy, the loop's
own work (batch order, gathers, loss sums) is also timed without the model. Each is timed ``--repeats`` times, alternating, and the best kept, so
load from other processes hits both alike. With ``--device cuda`` it also times
``--cuda-epochs`` full epochs (plus the per-epoch predict on a val-sized split).

    .venv/bin/python benchmarks/train.py --clips 10000
    .venv/bin/python benchmarks/train.py --clips 10000 --device cuda --cuda-epochs 40
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def make_split(n: int, device: str, seed: int = 0):
    """Random ReLU-like features at the official dims and 1-3 labels per clip, moved once."""
    from avvp_pipe.pipeline.train.engine import to_device
    from avvp_pipe.pipeline.train.pairing import SplitArrays

    rng = np.random.default_rng(seed)
    feats = {name: np.abs(rng.standard_normal((n, 10, dim), dtype=np.float32))
             for name, dim in (("audio", 128), ("visual", 2048), ("visual_3d", 512))}
    labels = np.zeros((n, 25), np.float32)
    for row in range(n):
        labels[row, rng.choice(25, size=int(rng.integers(1, 4)), replace=False)] = 1.0
    arrays = SplitArrays([f"clip{i:06d}" for i in range(n)], feats["audio"], feats["visual"],
                         feats["visual_3d"], labels)
    return to_device(arrays, device)


class _Features:
    """Stands in for a pairing's data: the engine only needs its widths and a name here."""

    def __init__(self, dims: dict) -> None:
        self.dims, self.name, self.splits = dims, "bench", {}


def model_alone(state, split, config, steps: int) -> float:
    """Seconds for ``steps`` optimiser steps on one fixed batch: the model's own cost."""
    from avvp_pipe.pipeline.train.engine import loss_terms

    idx = torch.arange(config.batch_size, device=split.audio.device)
    audio, visual, v3, labels = split.rows(idx)  # gathered once, outside the timing
    run = state.runs[0]
    run.model.train()
    sync(config.device)
    started = time.perf_counter()
    for _ in range(steps):
        loss, _, _ = loss_terms(run.model, run.head, audio, visual, v3, labels, config)
        state.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        state.optimizer.step()
    sync(config.device)
    return time.perf_counter() - started


def data_alone(split, config, epoch: int) -> float:
    """Seconds for the loop's own work without the model: batch order, gathers, loss sums.

    Load from other processes makes the two timings above noisy; this one is small and
    stable, and model / (model + data) is the ratio the loop can reach at best.
    """
    from avvp_pipe.pipeline.train.engine import batch_order

    device = split.audio.device
    sync(config.device)
    started = time.perf_counter()
    batches = batch_order(len(split), config, epoch)
    order = torch.from_numpy(np.concatenate(batches)).to(device)
    sums = torch.zeros(3, device=device)
    start = 0
    for rows in batches:
        idx = order[start : start + len(rows)]
        start += len(rows)
        audio, visual, v3, labels = split.rows(idx)
        part = labels.sum()
        sums += torch.stack([part, part, part]) * len(rows)
    sums.tolist()
    sync(config.device)
    return time.perf_counter() - started


def full_loop(state, split, config, epoch: int) -> float:
    from avvp_pipe.pipeline.train.engine import train_epoch

    sync(config.device)
    started = time.perf_counter()
    train_epoch(state, [split], epoch)  # ends with its one host sync
    sync(config.device)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=10000, help="train clips per epoch (LLP: 10,000)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--repeats", type=int, default=2, help="alternating timings of each; best kept")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--cuda-epochs", type=int, default=40, help="with a cuda device: time this many epochs")
    parser.add_argument("--json", default=None, help="also write the printed numbers here")
    args = parser.parse_args()

    from avvp_pipe.pipeline.train.config import TrainConfig
    from avvp_pipe.pipeline.train.engine import Member, determinism, new_state, predict_on_device

    if args.threads:
        torch.set_num_threads(args.threads)
    config = TrainConfig(device=args.device, precision=args.precision).resolved()
    split = make_split(args.clips, args.device)
    dims = {"audio": 128, "visual": 2048, "visual_3d": 512}
    steps = -(-args.clips // config.batch_size)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, device {args.device}, {args.precision}; {args.clips} clips = {steps} steps of {config.batch_size}")
    with determinism(config):
        state = new_state([Member(_Features(dims), config.seed)], config)
        model_alone(state, split, config, 5)  # warm-up (allocator, kernels)
        alone, loop = [], []
        for repeat in range(args.repeats):
            alone.append(model_alone(state, split, config, steps))
            loop.append(full_loop(state, split, config, epoch=repeat + 1))
            print(f"  repeat {repeat + 1}: model alone {steps / alone[-1]:.1f} steps/s, "
                  f"full loop {steps / loop[-1]:.1f} steps/s")
        best_alone, best_loop = min(alone), min(loop)
        print(f"model alone: {steps / best_alone:.1f} steps/s ({best_alone:.1f} s per epoch)")
        print(f"full loop:   {steps / best_loop:.1f} steps/s ({best_loop:.1f} s per epoch)")
        print(f"ratio full / model-alone throughput: {best_alone / best_loop:.3f} (target >= 0.9)")
        data = min(data_alone(split, config, epoch) for epoch in range(1, 4))
        print(f"data handling alone: {1e3 * data / steps:.3f} ms/step; model alone {1e3 * best_alone / steps:.1f} "
              f"ms/step; best reachable ratio {best_alone / (best_alone + data):.4f}")
        report = {"device": args.device, "precision": args.precision, "clips": args.clips, "steps": steps,
                  "model_alone_steps_per_s": round(steps / best_alone, 1),
                  "full_loop_steps_per_s": round(steps / best_loop, 1), "full_loop_s_per_epoch": round(best_loop, 2),
                  "ratio_loop_over_model": round(best_alone / best_loop, 3),
                  "data_ms_per_step": round(1e3 * data / steps, 3), "cuda_epochs": None, "cuda_epochs_s": None}
        if torch.device(args.device).type == "cuda":
            val = make_split(649, args.device, seed=1)
            sync(args.device)
            started = time.perf_counter()
            for epoch in range(1, args.cuda_epochs + 1):
                full_loop(state, split, config, epoch)
                state.scheduler.step()
                predict_on_device(state.runs[0].model, val, config)  # the per-epoch selection forward
            sync(args.device)
            total = time.perf_counter() - started
            print(f"{args.cuda_epochs} epochs (train + val predict): {total:.1f} s "
                  f"({total / args.cuda_epochs:.2f} s/epoch)")
            report.update(cuda_epochs=args.cuda_epochs, cuda_epochs_s=round(total, 1))
    if args.json:
        from avvp_pipe.core.io import atomic_write_json

        atomic_write_json(args.json, report)


if __name__ == "__main__":
    main()
