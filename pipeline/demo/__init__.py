"""``make demo``: every stage of avvp-pipe on a small synthetic LLP set, as a tour of the CLI.

Each stage is the documented ``avvp-pipe`` command line, printed and then run in this
process, so what the demo does is exactly what a researcher would type:

1. ``synth``: a few synthetic clips (mp4 with sound and sprites, known per-second truth);
2. ``extract``: decode them once and run two extractors with random weights (weights cannot
   be downloaded here) on a local dask cluster into the zarr cache;
3. ``synth --labels-only`` + ``synth-features``: simulated stores at a size where training
   means something, with a quality order known by construction;
4. ``train`` (HAN + MTSC) and ``evaluate`` on one simulated pairing;
5. ``select``: rank the simulated pairings by the test-trained upper bound, with LogME, and
   check the ranking against full traversal (``--validate``);
6. ``analyze``: cross-modal diagnostics of the trained run, and linear probes of the stores.

Outputs (stores, runs, JSON, PNG plots) stay in ``--out`` for a look afterwards; a rerun
resumes every stage instead of recomputing it.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

#: Simulated extractors: 2 audio x 2 visual pairings of known quality order, and a 3D stream.
SIMULATED = ("sim_audio_good:audio:128:0.9", "sim_audio_poor:audio:128:0.4",
             "sim_visual_good:visual-2d:256:0.9", "sim_visual_poor:visual-2d:256:0.4")


def stages(out: Path, quick: bool) -> list[tuple[str, list[str]]]:
    """(title, avvp-pipe arguments) of every stage, in order."""
    synth, cache, labels = out / "synth", out / "cache", out / "labels"
    epochs = "3" if quick else "12"
    sim = ["--cache", str(cache), "--dataset", "demo-sim", "--annotations", str(labels / "annotations")]
    run = out / "runs" / "sim-good-mtsc"
    return [
        ("synthetic clips", ["synth", str(synth), "--clips", "8", "--seed", "0", "--size", "160x120",
                             "--workers", "2", "--quiet"]),
        ("extract on a local dask cluster (random weights)",
         ["extract", "--videos", str(synth / "videos"), "--cache", str(cache), "--dataset", "demo-clips",
          "--annotations", str(synth / "annotations"), "--split", "all", "--extractors", "vggish,r2plus1d_18",
          "--random-init", "--workers", "2", "--summary", str(out / "extract-summary.json")]),
        ("cache listing", ["cache", "ls", str(cache)]),
        ("a label structure for simulated features", ["synth", str(labels), "--clips", "600", "--seed", "0",
                                                      "--splits", "0.6,0.2,0.2", "--labels-only"]),
        ("simulated feature stores", ["synth-features", str(cache), "--dataset", "demo-sim", "--annotations",
                                      str(labels / "annotations"), "--seed", "0"]
         + [arg for spec in SIMULATED for arg in ("--extractor", spec)]),
        ("train HAN + MTSC on the good pairing",
         ["train", *sim, "--audio", "sim_audio_good", "--visual", "sim_visual_good", "--mtsc", "entire",
          "--epochs", epochs, "--allow-simulated", "--out", str(run)]),
        ("evaluate its predictions", ["evaluate", "--predictions", str(run / "predictions.npz"), "--annotations",
                                      str(labels / "annotations"), "--split", "test",
                                      "--json", str(out / "scores.json")]),
        ("rank the pairings (upper bound, LogME, checked against traversal)",
         ["select", *sim, "--audio", "sim_audio_good,sim_audio_poor", "--visual", "sim_visual_good,sim_visual_poor",
          "--method", "both", "--validate", "--epochs", epochs, "--allow-simulated", "--out", str(out / "select")]),
        ("cross-modal diagnostics of the trained run's features (after MTSC)",
         ["analyze", "run", "--run", str(run), "--split", "test", "--allow-simulated", "--no-progress",
          "--out", str(out / "analyze" / "run")]),
        ("unimodal linear probes of every simulated store",
         ["analyze", "probe", "--cache", str(cache), "--dataset", "demo-sim", "--stores", "all", "--annotations",
          str(labels / "annotations"), "--allow-simulated", "--out", str(out / "analyze" / "probe")]),
    ]


def run_stage(args: list[str]) -> None:
    """Run one avvp-pipe command line in this process; a failure stops the demo with its exit code.

    click's standalone mode prints errors as the console script would and always exits.
    """
    from avvp_pipe.pipeline.cli import cli

    try:
        cli.main(args=args, prog_name="avvp-pipe")
    except SystemExit as stop:
        if stop.code:
            print(f"demo stopped: `avvp-pipe {shlex.join(args)}` exited with {stop.code}", file=sys.stderr)
            raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="demo-out", help="folder for everything the demo writes")
    parser.add_argument("--quick", action="store_true", help="fewer epochs (used by the test of the demo)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    started = time.perf_counter()
    plan = stages(out, args.quick)
    for number, (title, command) in enumerate(plan, 1):
        print(f"\n[{number}/{len(plan)}] {title}\n$ avvp-pipe {shlex.join(command)}", flush=True)
        run_stage(command)
    print(f"\ndemo finished in {time.perf_counter() - started:.0f} s; everything is under {out}/")
