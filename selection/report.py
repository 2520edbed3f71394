"""What ``select`` shows and writes: the ranking table, ranking.json/.csv and the PNGs.

The JSON is the record of a selection (every score, rank, agreement statistic and time);
the CSV is the same table for a spreadsheet; ranking.png is a bar chart of the ranking and,
under --validate, f1_f2.png plots F1 and F2 per pairing on one chart like the seed paper's
Figure 5. All files are written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from pathlib import Path

from avvp_pipe.core.fmt import human_seconds, table
from avvp_pipe.selection import stats
from avvp_pipe.core.io import atomic_write_json, atomic_write_text, save_figure

#: column -> protocol whose result fills it
COLUMNS = {"f1": "upper-bound", "f2": "traditional", "logme": "logme"}
LABELS = {"f1": "F1 (upper bound: train+select+score on test)", "f2": "F2 (traditional: train, val, test)",
          "logme": "LogME (test features vs clip labels)"}


def build_ranking(names: Sequence[str], results: Mapping[str, Sequence[dict] | None], score: str,
                  wall: Mapping[str, float]) -> dict:
    """Merge the protocols' per-pairing results into one ranking record.

    ``results``: protocol -> results in ``names`` order (None when not run). ``wall``: measured
    seconds of this invocation per protocol (0 when everything was resumed).
    """
    columns = {col: {n: r["score"] for n, r in zip(names, results[p])}
               for col, p in COLUMNS.items() if results.get(p) is not None}
    ranked = {col: stats.ranks(values) for col, values in columns.items()}
    rows = []
    for i, name in enumerate(names):
        first = next(results[p][i] for p in COLUMNS.values() if results.get(p) is not None)
        row = {"pairing": name, "audio": first["audio"], "visual": first["visual"]}
        for col, values in columns.items():
            row[col] = values[name]
            row[f"{col}_rank"] = ranked[col][name]
        for col in ("f1", "f2"):
            if col in columns:
                row[f"{col}_best_epoch"] = results[COLUMNS[col]][i]["best_epoch"]
        rows.append(row)
    primary = next(c for c in ("f1", "logme", "f2") if c in columns)
    rows.sort(key=lambda r: (r[f"{primary}_rank"], names.index(r["pairing"])))
    return {"score": score, "ranked_by": primary, "pairings": rows, "agreement": _agreement(columns),
            "time": _times(results, wall)}


def _agreement(columns: Mapping[str, Mapping[str, float]]) -> dict:
    """Rank agreement of each cheaper score with each more expensive one."""
    pairs = [("f1", "f2"), ("logme", "f1"), ("logme", "f2")]
    return {f"{a}_vs_{b}": stats.compare(columns[a], columns[b]) for a, b in pairs
            if a in columns and b in columns}


def _times(results: Mapping[str, Sequence[dict] | None], wall: Mapping[str, float]) -> dict:
    """Compute time per protocol (summed over pairings, resumed ones included) and ratios."""
    times = {p: {"seconds": sum(r["seconds"] for r in rs), "pairings": len(rs), "this_run_seconds": wall.get(p, 0.0)}
             for p, rs in results.items() if rs is not None}
    if "upper-bound" in times and "traditional" in times and times["upper-bound"]["seconds"] > 0:
        times["traditional_over_upper_bound"] = times["traditional"]["seconds"] / times["upper-bound"]["seconds"]
    if "logme" in times and "upper-bound" in times and times["logme"]["seconds"] > 0:
        times["upper_bound_over_logme"] = times["upper-bound"]["seconds"] / times["logme"]["seconds"]
    return times


def format_ranking(ranking: Mapping) -> str:
    """The printed table, then agreement and time lines."""
    cols = [c for c in ("f1", "f2", "logme") if c in ranking["pairings"][0]]
    headers = ["#", "pairing"] + [h for c in cols for h in (c.upper() if c != "logme" else "LogME", "rank")]
    rows = [[i + 1, r["pairing"]] + [v for c in cols for v in (r[c], r[f"{c}_rank"])]
            for i, r in enumerate(ranking["pairings"])]
    lines = [f"ranked by {ranking['ranked_by']} ({ranking['score']})", table(headers, rows)]
    for name, a in ranking["agreement"].items():
        lines.append(f"{name}: Kendall tau {_num(a['kendall_tau'])}, Spearman rho {_num(a['spearman_rho'])}, "
                     f"top-1 {'agrees' if a['top1_agree'] else 'differs'} ({a['top1_chosen']} vs "
                     f"{a['top1_best']}), relative top-1 {_num(a['relative_top1'])}")
    for protocol, t in ranking["time"].items():
        if isinstance(t, Mapping):
            lines.append(f"time {protocol}: {human_seconds(t['seconds'])} for {t['pairings']} pairings "
                         f"({human_seconds(t['this_run_seconds'])} in this run)")
        else:
            lines.append(f"time {protocol.replace('_', ' ')}: {t:.2f}x")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "n/a" if value is None or value != value else f"{value:.3f}"


def write_outputs(out: str | Path, ranking: Mapping) -> list[Path]:
    """ranking.json, ranking.csv, ranking.png and (with F1 and F2) f1_f2.png, each atomically."""
    out = Path(out)
    written = [atomic_write_json(out / "ranking.json", ranking),
               atomic_write_text(out / "ranking.csv", to_csv(ranking["pairings"]))]
    written.append(bar_chart(out / "ranking.png", ranking))
    if "f2" in ranking["pairings"][0] and "f1" in ranking["pairings"][0]:
        written.append(f1_f2_chart(out / "f1_f2.png", ranking))
    return written


def to_csv(rows: Sequence[Mapping]) -> str:
    """The ranking rows as CSV text, columns in first-row order."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path: Path, ranking: Mapping) -> Path:
    """One bar panel per score column, pairings in ranking order."""
    plt = _pyplot()
    rows = ranking["pairings"]
    cols = [c for c in ("f1", "f2", "logme") if c in rows[0]]
    fig, axes = plt.subplots(len(cols), 1, figsize=(max(6, 0.7 * len(rows) + 2), 3 * len(cols)), squeeze=False)
    for ax, col in zip(axes[:, 0], cols):
        ax.bar(range(len(rows)), [r[col] for r in rows], color="tab:blue" if col != "logme" else "tab:green")
        ax.set_xticks(range(len(rows)), [r["pairing"] for r in rows], rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(col.upper() if col != "logme" else "LogME")
        ax.set_title(LABELS[col] + (f", {ranking['score']}" if col != "logme" else ""), fontsize=9)
        if col == "logme":  # a log evidence has no meaningful zero: zoom on the spread between pairings
            low, high = min(r[col] for r in rows), max(r[col] for r in rows)
            pad = 0.1 * (high - low) or 0.1 * abs(high) or 0.1
            ax.set_ylim(low - pad, high + pad)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path


def f1_f2_chart(path: Path, ranking: Mapping) -> Path:
    """F1 and F2 per pairing on one chart (seed paper, Figure 5): do the two curves move together?"""
    plt = _pyplot()
    rows = ranking["pairings"]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(6, 0.7 * len(rows) + 2), 4))
    ax.plot(x, [r["f1"] for r in rows], "o-", label="F1 (trained on test)")
    ax.plot(x, [r["f2"] for r in rows], "s-", label="F2 (trained on train)")
    ax.set_xticks(list(x), [r["pairing"] for r in rows], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(f"{ranking['score']} (%)")
    tau = ranking["agreement"].get("f1_vs_f2", {}).get("kendall_tau")
    ax.set_title(f"F1 vs F2 per pairing (Kendall tau {_num(tau)})")
    ax.legend()
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)
    return path
