"""Collect the key numbers of a ``benchmarks/h200.sh`` run into OUT/summary.json and print them.

Reads the steps' --json reports under WORK, the all-extractor run's log under WORK/logs and
its progress samples; tolerant of steps that failed, timed out or were skipped (their entries
say so). Needs the repository on PYTHONPATH (h200.sh sets it), nothing beyond the standard
library and avvp_pipe.core.io.

    python benchmarks/h200_summary.py --work /tmp/avvp-bench --out $OUT --clips-all 1000
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from pathlib import Path

from avvp_pipe.core.io import atomic_write_json

def read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def steps(out: Path) -> dict[str, dict]:
    rows = {}
    try:
        with open(out / "steps.tsv", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                rows[row["step"]] = {"rc": row["rc"], "wall_s": _num(row["wall_s"]), "timeout_s": _num(row["timeout_s"])}
    except OSError:
        pass
    return rows


def _num(text: str) -> float | None:
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def read_json(path: Path) -> dict | None:
    """A step's --json report; None when the step wrote none (failed, timed out, skipped)."""
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def train(report: dict | None) -> dict:
    """benchmarks/train.py's --json report, plus the 40-epoch recipe time (measured or from s/epoch)."""
    out = dict.fromkeys(("model_alone_steps_per_s", "full_loop_steps_per_s", "ratio_loop_over_model",
                         "cuda_epochs", "cuda_epochs_s"))
    out.update(report or {})
    measured = out["cuda_epochs"] == 40
    per_epoch = (out["cuda_epochs_s"] / out["cuda_epochs"] if out["cuda_epochs"]
                 else out.get("full_loop_s_per_epoch"))
    out["recipe_40_epochs_s"] = out["cuda_epochs_s"] if measured else round(40 * per_epoch, 1) if per_epoch else None
    out["recipe_40_epochs_measured"] = measured
    return out


def extract_models(out: Path) -> dict:
    try:
        data = json.loads((out / "extract_models.json").read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    rows = {}
    for name, report in data.items():
        fps = report.get("frames_per_s", {})
        rows[name] = {
            "clips": report.get("clips"),
            "decode_fps": _round(fps.get("decode")),
            "decode_prepare_fps": _round(fps.get("decode+prepare")),
            "model_fps": _round(fps.get("model")),
            "end_to_end_fps": _round(fps.get("end_to_end")),
            "ratio_e2e_over_model": _round(report.get("ratios", {}).get("end_to_end/model"), 3),
            "target_0.7": None if not report.get("ratios") else report["ratios"]["end_to_end/model"] >= 0.7,
            "failed": report.get("failed") or None,
        }
    return rows


def _round(value, digits: int = 1):
    return None if value is None else round(float(value), digits)


def extract_all(out: Path, log_text: str, clips_all: int, n_stores: int, wall: float | None) -> dict:
    """The CLI's --summary when it finished; else a rate from the progress samples and the bar."""
    try:
        summary = json.loads((out / "extract_all.json").read_text())
        clips = summary["clips"]
        return {"finished": True, "seconds_in_run_extract": summary["seconds"], "step_wall_s": wall,
                "clips_processed": clips["processed"], "clips_done": clips["done"], "clips_failed": clips["failed"],
                "clips_per_s": summary["clips_per_s"], "frames_per_s": summary["frames_per_s"],
                "failures_first": summary["failures"][:3]}
    except (OSError, json.JSONDecodeError, KeyError):
        pass
    result: dict = {"finished": False, "step_wall_s": wall}
    # 1. the CLI's progress bar (clips done in every store; its clock starts once the models
    # are built and the stores open), last state before the kill
    bars = re.findall(r"(\d+)/(\d+) \[(\d+):(\d+)(?::(\d+))?<", log_text)
    if bars:
        done, total, a, b, c = bars[-1]
        elapsed = int(a) * 60 + int(b) if not c else int(a) * 3600 + int(b) * 60 + int(c)
        bar = {"done": int(done), "total": int(total), "elapsed_s": elapsed}
        if int(done) > 0 and elapsed > 0:
            rate = int(done) / elapsed
            bar["clips_per_s"] = round(rate, 3)
            bar["frames_per_s"] = round(80 * rate, 1)
            if wall is not None:
                startup = max(wall - elapsed, 0.0)  # imports, model builds, stores (+ shutdown)
                bar["startup_s_upper_bound"] = round(startup, 1)
                bar["projected_s_for_all_clips"] = round(startup + clips_all / rate, 1)
        result["progress_bar_last"] = bar
    # 2. feature chunks per store, sampled every 10 s by the script (independent of the bar)
    samples = []
    try:
        with open(out / "extract_all_progress.tsv", newline="") as handle:
            for row in csv.DictReader(handle, delimiter="\t"):
                counts = [int(part.split("=")[1]) for part in (row["per_store"] or "").split() if "=" in part]
                samples.append((float(row["step_s"]), sum(counts) / n_stores, (row["per_store"] or "").strip()))
    except (OSError, ValueError, KeyError, IndexError):
        pass
    if samples:
        result["last_sample"] = {"step_s": samples[-1][0], "per_store": samples[-1][2]}
        started = [s for s in samples if s[1] > 0]
        if len(started) >= 2 and started[-1][1] > started[0][1]:
            (t0, n0, _), (t1, n1, _) = started[0], started[-1]
            rate = (n1 - n0) / (t1 - t0)  # clips per second, averaged over the stores
            result["clips_per_s_from_samples"] = round(rate, 3)
            result["projected_s_for_all_clips_from_samples"] = round(t0 - n0 / rate + clips_all / rate, 1)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--clips-all", type=int, default=1000)
    ap.add_argument("--stores", type=int, default=8, help="extractors of the all-extractor run")
    args = ap.parse_args()
    logs = args.work / "logs"
    step_rows = steps(args.out)
    summary = {
        "steps": step_rows,
        "train_fp32": train(read_json(args.work / "train_fp32.json")),
        "train_bf16": train(read_json(args.work / "train_bf16.json")),
        "select": read_json(args.work / "select.json"),
        "extract_models": extract_models(args.out),
        "extract_all": extract_all(args.out, read(logs / "extract_all.log"), args.clips_all, args.stores,
                                   step_rows.get("extract_all", {}).get("wall_s")),
    }
    atomic_write_json(args.out / "summary.json", summary)

    print("=" * 30, "summary", "=" * 30)
    for name, row in step_rows.items():
        print(f"step {name:24s} rc {row['rc']:8s} wall {row['wall_s']} s (timeout {row['timeout_s']} s)")
    for key in ("train_fp32", "train_bf16"):
        t = summary[key]
        print(f"{key}: model alone {t['model_alone_steps_per_s']} steps/s, loop {t['full_loop_steps_per_s']} steps/s "
              f"(ratio {t['ratio_loop_over_model']}), {t['cuda_epochs']} epochs in {t['cuda_epochs_s']} s; "
              f"40-epoch recipe {t['recipe_40_epochs_s']} s "
              f"({'measured' if t['recipe_40_epochs_measured'] else 'from s/epoch'}; target <= 60)")
    s = summary["select"]
    if s:
        print(f"select: one {s['one_pairing_traditional_s']} s, one on test {s['one_pairing_on_test_s']} s, "
              f"rank10 {s['rank_10_pairings_s']} s, ratio {s['ratio_rank10_over_one']} (target <= 3), "
              f"grouping gain {s['grouping_gain']}, trained {s['trained']}")
    else:
        print("select: no result")
    for name, row in summary["extract_models"].items():
        print(f"extract {name:13s} {row['clips']} clips: decode {row['decode_fps']}, decode+prep "
              f"{row['decode_prepare_fps']}, model {row['model_fps']}, e2e {row['end_to_end_fps']} frames/s, "
              f"ratio {row['ratio_e2e_over_model']} (target >= 0.7)")
    print(f"extract all extractors x {args.clips_all} clips: {json.dumps(summary['extract_all'])}")


if __name__ == "__main__":
    main()
