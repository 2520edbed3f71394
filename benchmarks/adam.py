"""Benchmark the optimiser step of a HAN training step on CPU: Adam for-loop, foreach, fused (not a test).

A profile put Adam at ~15% and dropout at ~6% of a CPU training step. This times whole
steps (forward + BCE + backward + Adam) on one fixed batch at the official dims (audio 128,
visual 2048, 3D 512; batch 16) with each Adam implementation, and with dropout 0.1 vs 0, so
the engine takes what is free. Each variant is timed ``--repeats`` times, interleaved, best
kept; it also checks the implementations agree after the timed steps (relative difference).

    .venv/bin/python benchmarks/adam.py --steps 60 --repeats 3 --threads 1
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [os.path.dirname(_HERE)]

import torch  # noqa: E402

from benchmarks.train import _Features, make_split  # noqa: E402

VARIANTS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def time_steps(variant: str, dropout: float, split, steps: int) -> tuple[float, torch.Tensor]:
    """Seconds for ``steps`` steps from the same seeded start; and the final fc_a weights."""
    from avvp_pipe.pipeline.train.config import TrainConfig
    from avvp_pipe.pipeline.train.engine import Member, determinism, loss_terms, new_state

    config = TrainConfig(dropout=dropout).resolved()
    with determinism(config):
        state = new_state([Member(_Features({"audio": 128, "visual": 2048, "visual_3d": 512}), 1)], config)
        run = state.runs[0]
        optimizer = torch.optim.Adam(state.backend.parameters(), lr=config.lr, **VARIANTS[variant])
        audio, visual, v3, labels = split.rows(torch.arange(config.batch_size))
        run.model.train()
        started = time.perf_counter()
        for _ in range(steps):
            loss, _, _ = loss_terms(run.model, run.head, audio, visual, v3, labels, config)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return time.perf_counter() - started, run.model.fc_a.weight.detach().clone()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    split = make_split(64, "cpu")
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads; {args.steps} steps of batch 16 at the official dims")
    cases = [(v, 0.1) for v in VARIANTS] + [("for-loop", 0.0)]
    best: dict[tuple[str, float], float] = {}
    weights = {}
    for _ in range(args.repeats):
        for case in cases:
            seconds, weights[case] = time_steps(*case, split, args.steps)
            best[case] = min(best.get(case, float("inf")), seconds)
    base = best[("for-loop", 0.1)]
    for (variant, dropout), seconds in best.items():
        diff = (weights[(variant, dropout)] - weights[("for-loop", 0.1)]).norm() / weights[("for-loop", 0.1)].norm()
        same = f"rel. diff of fc_a vs for-loop {diff:.1e}" if dropout == 0.1 else "(other dropout: other numbers)"
        print(f"  Adam {variant:8s} dropout {dropout}: {1e3 * seconds / args.steps:7.1f} ms/step "
              f"({base / seconds:.3f}x the for-loop step)  {same}")


if __name__ == "__main__":
    main()
