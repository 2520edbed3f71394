"""What ``select`` shows and writes: the ranking table, ranking.json/.csv, selection.md and the PNGs.

The JSON is the record of a selection (every score, its spread and interval, rank, agreement
statistic with intervals, and time), in the flat per-pairing layout of earlier versions plus
new keys; the CSV is the same table for a spreadsheet; selection.md reads like a results
table (method, cost, tau vs F2 with interval); ranking.png is a bar chart of the ranking and,
under --validate, f1_f2.png plots F1 and F2 per pairing on one chart like the seed paper's
Figure 5, both with 95% interval bars where there are intervals. All files are written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from avvp_pipe.core.fmt import human_seconds, table
from avvp_pipe.selection import bootstrap as bootstrap_mod
from avvp_pipe.selection import stats
from avvp_pipe.core.io import atomic_write_json, atomic_write_text, save_figure

#: column -> protocol whose results fill it (trained: one list of K runs per pairing)
TRAINED = {"f1": "upper-bound", "f2": "traditional"}
NAMES = {"f1": "F1", "f2": "F2", "logme": "LogME", "hscore": "H-score", "transrate": "TransRate", "knn": "kNN",
         "cca": "CCA"}
LABELS = {"f1": "F1 (upper bound: train+select+score on test)", "f2": "F2 (traditional: train, val, test)",
          "logme": "LogME (test features vs clip labels)", "hscore": "H-score (shrinkage, test clips)",
          "transrate": "TransRate (test clips)", "knn": "leave-one-out kNN F1 (test clips)",
          "cca": "held-out audio-visual CCA (test seconds)"}


def _columns(results: Mapping[str, Sequence | None]) -> dict[str, str]:
    """column -> protocol or method, in display order: f1, f2, then the free methods as run."""
    cols = {c: p for c, p in TRAINED.items() if results.get(p) is not None}
    cols.update({m: m for m in results if m not in TRAINED.values() and results[m] is not None})
    return cols


def _runs(results: Mapping[str, Sequence | None], col: str, proto: str, i: int) -> list[dict]:
    """The pairing's runs of a trained column (K of them), or its one result of a free method."""
    entry = results[proto][i]
    return list(entry) if col in TRAINED else [entry]


def build_ranking(names: Sequence[str], results: Mapping[str, Sequence | None], score: str,
                  wall: Mapping[str, float], samples: Mapping[str, np.ndarray] | None = None,
                  bootstrap: Mapping | None = None) -> dict:
    """Merge the protocols' and methods' per-pairing results into one ranking record.

    ``results``: protocol -> per pairing a list of its K runs (trained) or its result (free),
    in ``names`` order (None when not run). ``samples``: protocol or method -> (B, P)
    bootstrap values. ``wall``: measured seconds of this invocation per protocol.
    """
    cols = _columns(results)
    samples = {c: samples[p] for c, p in cols.items() if p in (samples or {})}
    runs = {c: [_runs(results, c, p, i) for i in range(len(names))] for c, p in cols.items()}
    columns = {c: {n: float(np.mean([r["score"] for r in rs])) for n, rs in zip(names, runs[c])} for c in cols}
    ranked = {c: stats.ranks(values) for c, values in columns.items()}
    cis = bootstrap_mod.column_intervals(samples, names)
    rows = [_row(i, name, runs, columns, ranked, cis) for i, name in enumerate(names)]
    primary = next(c for c in [*(c for c in cols if c != "f2"), "f2"] if c in columns)
    rows.sort(key=lambda r: (r[f"{primary}_rank"], names.index(r["pairing"])))
    seeds = max(len(rs) for c in cols if c in TRAINED for rs in runs[c]) if any(c in TRAINED for c in cols) else 1
    return {"score": score, "ranked_by": primary, "seeds": seeds, "bootstrap": dict(bootstrap) if bootstrap else None,
            "ci95": "bootstrap" if samples else ("seeds (t)" if seeds > 1 else None),
            "pairings": rows, "agreement": _agreement(columns, samples, names),
            "top1_prob": {c: bootstrap_mod.top1_prob(samples[c], names, stats.top1(columns[c])) for c in samples},
            "time": _times(results, wall)}


def _row(i: int, name: str, runs: Mapping[str, list], columns: Mapping, ranked: Mapping, cis: Mapping) -> dict:
    """One pairing's line: every column's value and rank, and its spread (trained) or interval."""
    first = runs[next(iter(runs))][i][0]
    row = {"pairing": name, "audio": first["audio"], "visual": first["visual"]}
    for col, values in columns.items():
        row[col] = values[name]
        row[f"{col}_rank"] = ranked[col][name]
        if col in TRAINED:
            summary = bootstrap_mod.seed_summary([r["score"] for r in runs[col][i]])
            row[f"{col}_best_epoch"] = runs[col][i][0]["best_epoch"]
            row[f"{col}_sd"], row[f"{col}_runs"] = summary["sd"], summary["runs"]
            row[f"{col}_ci95"] = cis[col][name] if col in cis else summary["ci95"]
        elif col in cis:
            row[f"{col}_ci95"] = cis[col][name]
    return row


def _agreement(columns: Mapping[str, Mapping[str, float]], samples: Mapping[str, np.ndarray],
               names: Sequence[str]) -> dict:
    """Rank agreement of each cheaper score with each more expensive one (F1 with F2; each free method
    with F1 and F2), with bootstrap intervals where there are samples."""
    free = [c for c in columns if c not in TRAINED]
    pairs = [("f1", "f2")] + [(m, t) for m in free for t in ("f1", "f2")]
    out = {}
    for a, b in pairs:
        if a in columns and b in columns:
            entry = stats.compare(columns[a], columns[b])
            entry.update({"kendall_tau_ci95": None, "spearman_rho_ci95": None, "top1_agree_prob": None})
            if a in samples and b in samples:
                entry.update(bootstrap_mod.agreement_intervals(samples[a], samples[b], names))
            out[f"{a}_vs_{b}"] = entry
    return out


def _times(results: Mapping[str, Sequence | None], wall: Mapping[str, float]) -> dict:
    """Compute time per protocol and method (summed over pairings and runs, resumed ones included), and ratios."""
    def flat(rs: Sequence) -> list[dict]:
        return [r for entry in rs for r in (entry if isinstance(entry, list) else [entry])]

    times = {p: {"seconds": sum(r["seconds"] for r in flat(rs)), "pairings": len(rs),
                 "this_run_seconds": wall.get(p, 0.0)}
             for p, rs in results.items() if rs is not None}
    if "upper-bound" in times and "traditional" in times and times["upper-bound"]["seconds"] > 0:
        times["traditional_over_upper_bound"] = times["traditional"]["seconds"] / times["upper-bound"]["seconds"]
    for method in [m for m in times if m not in TRAINED.values() and isinstance(times[m], Mapping)]:
        if "upper-bound" in times and times[method]["seconds"] > 0:
            times[f"upper_bound_over_{method}"] = times["upper-bound"]["seconds"] / times[method]["seconds"]
    return times


def score_columns(ranking: Mapping) -> list[str]:
    """The score columns present, in display order."""
    first = ranking["pairings"][0]
    return [c for c in NAMES if c in first]


def _cell(row: Mapping, col: str) -> str:
    """A value with its interval when there is one: ``61.20 [60.10, 62.40]``."""
    ci = row.get(f"{col}_ci95")
    value = f"{row[col]:.4g}" if col not in TRAINED else f"{row[col]:.2f}"
    return value if not ci else f"{value} [{_num(ci[0])}, {_num(ci[1])}]"


def format_ranking(ranking: Mapping) -> str:
    """The printed table, then agreement and time lines."""
    cols = score_columns(ranking)
    headers = ["#", "pairing"] + [h for c in cols for h in (NAMES[c], "rank")]
    rows = [[i + 1, r["pairing"]] + [v for c in cols for v in (_cell(r, c), r[f"{c}_rank"])]
            for i, r in enumerate(ranking["pairings"])]
    lines = [f"ranked by {ranking['ranked_by']} ({ranking['score']})", table(headers, rows)]
    for name, a in ranking["agreement"].items():
        lines.append(f"{name}: Kendall tau {_num(a['kendall_tau'])}{_ci(a['kendall_tau_ci95'])}, Spearman rho "
                     f"{_num(a['spearman_rho'])}{_ci(a['spearman_rho_ci95'])}, "
                     f"top-1 {'agrees' if a['top1_agree'] else 'differs'} ({a['top1_chosen']} vs "
                     f"{a['top1_best']}{_prob(a['top1_agree_prob'])}), relative top-1 {_num(a['relative_top1'])}")
    for protocol, t in ranking["time"].items():
        if isinstance(t, Mapping):
            lines.append(f"time {protocol}: {human_seconds(t['seconds'])} for {t['pairings']} pairings "
                         f"({human_seconds(t['this_run_seconds'])} in this run)")
        else:
            lines.append(f"time {protocol.replace('_', ' ')}: {t:.2f}x")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def _ci(ci: Sequence[float] | None) -> str:
    return "" if not ci else f" [{_num(ci[0])}, {_num(ci[1])}]"


def _prob(p: float | None) -> str:
    return "" if p is None else f", same top-1 in {100 * p:.0f}% of resamples"


def results_table(ranking: Mapping) -> str:
    """selection.md: one line per method, read like a paper's results table (tau vs F2 and F1)."""
    boot = ranking.get("bootstrap")
    lines = [f"# Selection: {len(ranking['pairings'])} pairings, ranked by {ranking['score']}", "",
             f"Seeds per pairing: {ranking['seeds']}; intervals: "
             f"{'95% bootstrap over ' + str(boot['clips']) + ' test clips, ' + str(boot['resamples']) + ' resamples' if boot else (ranking['ci95'] or 'none (--bootstrap B adds them)')}.",
             "", "| method | cost (all pairings) | tau vs F2 [95%] | rho vs F2 | top-1 vs F2 | relative top-1 | "
             "tau vs F1 [95%] | top-1 vs F1 |", "|---|---|---|---|---|---|---|---|"]
    for col in score_columns(ranking):
        if col == "f2":
            continue
        vs_f2 = ranking["agreement"].get(f"{col}_vs_f2", {})
        vs_f1 = ranking["agreement"].get(f"{col}_vs_f1", {})
        lines.append(f"| {LABELS[col]} | {_cost(ranking, col)} | {_tau(vs_f2)} | {_num(vs_f2.get('spearman_rho'))} | "
                     f"{_top1(vs_f2)} | {_num(vs_f2.get('relative_top1'))} | {_tau(vs_f1)} | {_top1(vs_f1)} |")
    if "f2" in score_columns(ranking):
        lines.append(f"| {LABELS['f2']} (the truth) | {_cost(ranking, 'f2')} | 1 | 1 | yes | 1 | | |")
    return "\n".join(lines) + "\n"


def _cost(ranking: Mapping, col: str) -> str:
    t = ranking["time"].get(TRAINED.get(col, col))
    return human_seconds(t["seconds"]) if isinstance(t, Mapping) else "n/a"


def _tau(entry: Mapping) -> str:
    return "" if not entry else f"{_num(entry['kendall_tau'])}{_ci(entry['kendall_tau_ci95'])}"


def _top1(entry: Mapping) -> str:
    if not entry:
        return ""
    prob = entry.get("top1_agree_prob")
    return ("yes" if entry["top1_agree"] else "no") + ("" if prob is None else f" ({100 * prob:.0f}%)")


def write_outputs(out: str | Path, ranking: Mapping) -> list[Path]:
    """ranking.json, ranking.csv, selection.md, ranking.png and (with F1 and F2) f1_f2.png, each atomically."""
    out = Path(out)
    written = [atomic_write_json(out / "ranking.json", ranking),
               atomic_write_text(out / "ranking.csv", to_csv(ranking["pairings"])),
               atomic_write_text(out / "selection.md", results_table(ranking))]
    written.append(bar_chart(out / "ranking.png", ranking))
    if "f2" in ranking["pairings"][0] and "f1" in ranking["pairings"][0]:
        written.append(f1_f2_chart(out / "f1_f2.png", ranking))
    return written


def to_csv(rows: Sequence[Mapping]) -> str:
    """The ranking rows as CSV text, columns in first-row order; lists (runs, intervals) as ``a;b``."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: ";".join(str(x) for x in v) if isinstance(v, list) else v for k, v in r.items()}
                      for r in rows])
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _yerr(rows: Sequence[Mapping], col: str) -> np.ndarray | None:
    """(2, P) distances from each value to its interval's ends, for error bars; None without intervals."""
    if not all(r.get(f"{col}_ci95") for r in rows):
        return None
    low = [r[col] - r[f"{col}_ci95"][0] for r in rows]
    high = [r[f"{col}_ci95"][1] - r[col] for r in rows]
    return np.clip(np.asarray([low, high], dtype=np.float64), 0.0, None)


def bar_chart(path: Path, ranking: Mapping) -> Path:
    """One bar panel per score column, pairings in ranking order, 95% intervals as error bars."""
    plt = _pyplot()
    rows = ranking["pairings"]
    cols = score_columns(ranking)
    fig, axes = plt.subplots(len(cols), 1, figsize=(max(6, 0.7 * len(rows) + 2), 3 * len(cols)), squeeze=False)
    for ax, col in zip(axes[:, 0], cols):
        values = [r[col] for r in rows]
        ax.bar(range(len(rows)), values, yerr=_yerr(rows, col), capsize=3,
               color="tab:blue" if col in TRAINED else "tab:green")
        ax.set_xticks(range(len(rows)), [r["pairing"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(NAMES[col])
        ax.set_title(LABELS[col] + (f", {ranking['score']}" if col in TRAINED else ""), fontsize=9)
        if col not in TRAINED:  # a training-free score has no meaningful zero: zoom on the spread
            err = _yerr(rows, col)
            low = min(v - (err[0][j] if err is not None else 0) for j, v in enumerate(values))
            high = max(v + (err[1][j] if err is not None else 0) for j, v in enumerate(values))
            pad = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
            ax.set_ylim(low - pad, high + pad)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def f1_f2_chart(path: Path, ranking: Mapping) -> Path:
    """F1 and F2 per pairing on one chart (seed paper, Figure 5), with 95% intervals where known."""
    plt = _pyplot()
    rows = ranking["pairings"]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4))
    ax.errorbar(x - 0.05, [r["f1"] for r in rows], yerr=_yerr(rows, "f1"), fmt="o-", capsize=3,
                label="F1 (trained on test)")
    ax.errorbar(x + 0.05, [r["f2"] for r in rows], yerr=_yerr(rows, "f2"), fmt="s-", capsize=3,
                label="F2 (trained on train)")
    ax.set_xticks(list(x), [r["pairing"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{ranking['score']} (%)")
    agreement = ranking["agreement"].get("f1_vs_f2", {})
    ax.set_title(f"F1 vs F2 per pairing (Kendall tau {_num(agreement.get('kendall_tau'))}"
                 f"{_ci(agreement.get('kendall_tau_ci95'))})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
