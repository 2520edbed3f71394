"""Benchmark ``avvp-pipe select``: ranking 10 pairings against training one pairing (not a test).

The issue's target: ranking 10 pairings (upper bound, i.e. trained, epoch-picked and scored
on the test split) costs at most 3x the time of training ONE pairing the usual way (train
split, epoch picked on val, scored on test), on the same hardware. Simulated stores
(``avvp_pipe.pipeline.synth.features``) at LLP's split proportions (train 84.4 %, val 5.5 %, test
10.1 %) stand in for real features: 2 audio x 5 visual extractors at real widths.

Timed, each from features already in the cache (loading included, as in a real run):

- ``one``: ``train_pairing`` of one pairing, traditional protocol (the reference);
- ``one_on_test``: the same pairing trained on the test split (what each upper-bound run costs);
- ``rank10``: ``run_select`` over the 10 pairings, upper bound, ``--parallel`` pairings at once.

rank10 / one is the target ratio; rank10 / (10 x one_on_test) shows what grouping buys.

    .venv/bin/python benchmarks/select_pairings.py --clips 1200 --epochs 3
    .venv/bin/python benchmarks/select_pairings.py --clips 11849 --epochs 10 --device cuda --parallel 10
"""

from __future__ import annotations

import os
import sys

# Run as a script, this folder comes first on sys.path, where a file named like a stdlib module
# would shadow it; swap that folder for the repository root.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [os.path.dirname(_HERE)]

import argparse  # noqa: E402
import json
import platform
import tempfile
import time
import warnings
from pathlib import Path

import torch

LLP_FRACTIONS = (0.844, 0.055, 0.101)
AUDIO = ["sim_vggish:audio:128:0.6", "sim_openl3_audio:audio:512:0.8"]
VISUAL = ["sim_resnet152:visual-2d:2048:0.7", "sim_vgg19_bn:visual-2d:512:0.5", "sim_polynet:visual-2d:2048:0.6",
          "sim_senet154:visual-2d:2048:0.8", "sim_openl3_image:visual-2d:512:0.4"]


def names(specs: list[str]) -> tuple[str, ...]:
    return tuple(s.split(":")[0] for s in specs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1200, help="clips in the synthetic dataset (LLP: 11849)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", type=int, default=0, help="pairings per group (0 = auto: cuda 10, cpu 1)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    parser.add_argument("--workdir", default=None, help="where the simulated cache goes (default: a temp dir)")
    parser.add_argument("--json", default=None, help="also write the printed report here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*simulated features.*")

    from avvp_pipe.pipeline.train.pairing import load_pairing
    from avvp_pipe.pipeline.train import TrainConfig, train_pairing
    from avvp_pipe.selection.upper_bound import Candidates, SelectOptions, protocol_config, run_select
    from tests.featuresets import make_annotations, make_cache

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_select_"))
    began = time.perf_counter()
    ann = make_annotations(work / "ann", n_clips=args.clips, fractions=LLP_FRACTIONS)
    cache = make_cache(work / "cache", ann, AUDIO + VISUAL, dataset="bench")
    setup = time.perf_counter() - began
    config = TrainConfig(epochs=args.epochs, device=args.device)
    cands = Candidates(cache, "bench", names(AUDIO), names(VISUAL), allow_simulated=True)

    def timed_one(protocol: str) -> float:
        cfg = protocol_config(config, protocol, config.select_metric)
        started = time.perf_counter()
        data = load_pairing(cache, "bench", ann, [cfg.train_split, cfg.select_split, cfg.eval_split],
                            audio=cands.audio[0], visual=cands.visual[0], allow_simulated=True)
        train_pairing(data, ann, cfg, progress=False)
        return time.perf_counter() - started

    timed_one("upper-bound")  # warm-up: imports, allocator, deterministic-mode setup
    one = timed_one("traditional")
    one_on_test = timed_one("upper-bound")
    started = time.perf_counter()
    ranking = run_select(cands, ann, config, str(work / "out"),
                         SelectOptions(parallel=args.parallel, overwrite=True), notify=lambda m: None)
    rank10 = time.perf_counter() - started
    report = {
        "clips": {s: len(ann.split_ids(s)) for s in ("train", "val", "test")}, "epochs": args.epochs,
        "device": args.device, "parallel": args.parallel, "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else None,
        "setup_seconds": round(setup, 1), "one_pairing_traditional_s": round(one, 2),
        "one_pairing_on_test_s": round(one_on_test, 2), "rank_10_pairings_s": round(rank10, 2),
        "ratio_rank10_over_one": round(rank10 / one, 2),
        "grouping_gain": round(10 * one_on_test / rank10, 2),
        "trained": sorted({r.get("trained", "") for r in _results(work / "out")}),
        "top3": [r["pairing"] for r in ranking["pairings"][:3]],
    }
    print(json.dumps(report, indent=2))
    if args.json:
        from avvp_pipe.core.io import atomic_write_json

        atomic_write_json(args.json, report)
    print(f"target ratio <= 3: {'met' if report['ratio_rank10_over_one'] <= 3 else 'NOT met'}")


def _results(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in (out / "pairings").glob("*upper-bound*.json")]


if __name__ == "__main__":
    main()
