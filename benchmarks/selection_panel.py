"""Benchmark stage three as a measuring instrument: every method's agreement with traversal (not a test).

On simulated stores of known quality (benchmarks/select_pairings.py's 2 audio x 5 visual
extractors at real widths, LLP's split proportions), one ``run_select`` with
``--validate`` runs the traditional protocol (F2, the reference), the upper bound (F1) with
``--seeds`` K, and the training-free panel, with ``--bootstrap`` B resamples of the test
clips. It prints, per method: Kendall tau vs F2 with its 95% interval, top-1 agreement,
relative top-1, and seconds; and the cost of K upper-bound seeds against ONE traditional
training of one pairing (timed alone first). Seconds per method are the ones each saved
result recorded when it ran (OUT/pairings/*.json), so a run resumed with ``--resume`` (same
``--workdir``) reports what the whole work cost, not only what was left.

    .venv/bin/python benchmarks/selection_panel.py --clips 1200 --epochs 3 --seeds 3 --bootstrap 200

At LLP scale the work is too long for one process on a small CPU box, so it is run as CLI
commands (``synth-features``, ``select``, ``train``; BENCHMARKS.md lists them) and reported
from their folders:

    .venv/bin/python benchmarks/selection_panel.py --from-out runs/panel --traditional-run runs/trad
"""

from __future__ import annotations

import os
import sys

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [os.path.dirname(_HERE)]

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from benchmarks.select_pairings import AUDIO, LLP_FRACTIONS, VISUAL, names  # noqa: E402

PANEL = "upper-bound,logme,hscore,transrate,knn,cca"


def one_traditional(cache: str, ann, config, cands) -> float:
    """Seconds to train and score ONE pairing the usual way (train / val / test)."""
    from avvp_pipe.pipeline.train import load_pairing, train_pairing
    from avvp_pipe.selection.upper_bound import protocol_config

    cfg = protocol_config(config, "traditional", config.select_metric)
    started = time.perf_counter()
    data = load_pairing(cache, "bench", ann, ["train", "val", "test"], audio=cands.audio[0], visual=cands.visual[0],
                        allow_simulated=True)
    train_pairing(data, ann, cfg, progress=False)
    return time.perf_counter() - started


def recorded_seconds(out: Path) -> dict[str, float]:
    """protocol -> seconds summed over its saved results (trained runs and bootstrap samples alike)."""
    totals: dict[str, float] = {}
    for path in (out / "pairings").glob("*.json"):
        record = json.loads(path.read_text())
        totals[record["protocol"]] = totals.get(record["protocol"], 0.0) + float(record.get("seconds") or 0.0)
    return {k: round(v, 1) for k, v in sorted(totals.items())}


def table(ranking: dict, seconds: dict[str, float], suffix: str = "_vs_f2") -> list[dict]:
    """Per method: tau vs F2 (or ``suffix`` "_vs_f1": vs F1) with interval, top-1 agreement, relative top-1,
    recorded seconds."""
    rows = []
    for key, agreement in sorted(ranking["agreement"].items()):
        if not key.endswith(suffix):
            continue
        method = key[: -len(suffix)]
        protocol = {"f1": "upper-bound"}.get(method, method)
        rows.append({"method": method, "kendall_tau": agreement.get("kendall_tau"),
                     "kendall_tau_ci95": agreement.get("kendall_tau_ci95"), "top1_agree": agreement.get("top1_agree"),
                     "relative_top1": agreement.get("relative_top1"), "seconds": seconds.get(protocol),
                     "bootstrap_seconds": seconds.get(f"{protocol}-bootstrap")})
    return rows


def traditional_seconds(run_dir: Path) -> dict:
    """A finished or partial ``train`` run: epochs done and the seconds they took (metrics.json)."""
    from avvp_pipe.core.io import read_json

    metrics = read_json(run_dir / "metrics.json")
    epochs = metrics.get("epochs") or []
    total = sum(float(e.get("seconds") or 0.0) for e in epochs)
    return {"epochs_done": len(epochs), "seconds": round(total, 1),
            "seconds_per_epoch": round(total / len(epochs), 1) if epochs else None,
            "finished": bool(metrics.get("eval"))}


def report_from(out: Path, run_dir: Path | None) -> dict:
    """The report of a ``select`` output folder (ranking.json and its saved results), without training."""
    from avvp_pipe.core.io import read_json

    ranking = read_json(out / "ranking.json")
    seconds = recorded_seconds(out)
    report = {"score": ranking.get("score"), "seeds": ranking.get("seeds"), "bootstrap": ranking.get("bootstrap"),
              "recorded_seconds": seconds, "top1_prob": ranking.get("top1_prob"),
              "methods_vs_f1": table(ranking, seconds, suffix="_vs_f1"), "methods_vs_f2": table(ranking, seconds)}
    if run_dir is not None:
        trad = traditional_seconds(run_dir)
        report["one_traditional_training"] = trad
        if trad["finished"] and seconds.get("upper-bound"):
            report["upper_bound_all_pairings_over_one_traditional"] = round(seconds["upper-bound"] / trad["seconds"], 3)
    return report


def emit(report: dict, path: str | None) -> None:
    """Print the report; also write it to ``path`` when given."""
    print(json.dumps(report, indent=2))
    if path:
        from avvp_pipe.core.io import atomic_write_json

        atomic_write_json(path, report)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=1200, help="clips in the synthetic dataset (LLP: 11849)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--json", default=None, help="also write the report here")
    parser.add_argument("--resume", action="store_true", help="keep the results already in --workdir")
    parser.add_argument("--from-out", default=None, help="only report a finished `select` output folder")
    parser.add_argument("--traditional-run", default=None, help="with --from-out: a `train` run folder of the "
                        "traditional protocol, timed from its metrics.json")
    args = parser.parse_args()
    if args.from_out:
        emit(report_from(Path(args.from_out), Path(args.traditional_run) if args.traditional_run else None), args.json)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", message=".*simulated features.*")

    from avvp_pipe.pipeline.train import TrainConfig
    from avvp_pipe.selection.upper_bound import Candidates, SelectOptions, run_select
    from tests.featuresets import make_annotations, make_cache

    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_panel_"))
    if args.resume:
        from avvp_pipe.pipeline.llp import load_annotations

        ann, cache = load_annotations(work / "ann"), str(work / "cache")
    else:
        ann = make_annotations(work / "ann", n_clips=args.clips, fractions=LLP_FRACTIONS)
        cache = make_cache(work / "cache", ann, AUDIO + VISUAL, dataset="bench")
    config = TrainConfig(epochs=args.epochs, device=args.device)
    cands = Candidates(cache, "bench", names(AUDIO), names(VISUAL), allow_simulated=True)
    one = one_traditional(cache, ann, config, cands)
    options = SelectOptions(method=PANEL, validate=True, seeds=args.seeds, bootstrap=args.bootstrap,
                            overwrite=not args.resume)
    started = time.perf_counter()
    ranking = run_select(cands, ann, config, str(work / "out"), options, notify=lambda m: None)
    total = time.perf_counter() - started
    seconds = recorded_seconds(work / "out")
    upper = seconds.get("upper-bound")
    report = {
        "clips": {s: len(ann.split_ids(s)) for s in ("train", "val", "test")}, "epochs": args.epochs,
        "seeds": args.seeds, "bootstrap": args.bootstrap, "device": args.device,
        "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
        "one_traditional_training_s": round(one, 2), "select_total_s": round(total, 1),
        "upper_bound_k_seeds_s": upper, "upper_bound_k_seeds_over_one_traditional":
            round(upper / one, 2) if upper else None,
        "recorded_seconds": seconds, "methods": table(ranking, seconds), "truth_order_top": [r["pairing"] for r in ranking["pairings"][:3]],
    }
    emit(report, args.json)


if __name__ == "__main__":
    main()
