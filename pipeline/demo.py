"""`make demo`: synthesize a small LLP set, then round-trip simulated features through the cache."""

from __future__ import annotations

import argparse
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="demo-out")
    args = parser.parse_args()
    out = Path(args.out)
    from pipeline.llp import load_annotations
    from pipeline.synth import synthesize
    from pipeline.synth_features import SimulatedExtractor, synthesize_features

    result = synthesize(out / "synth", 12, 0, size=(160, 120))
    print(f"synth: {result.n_clips} clips in {out / 'synth'}")
    ann = load_annotations(out / "synth" / "annotations")
    specs = [SimulatedExtractor.parse("sim_audio:audio:128:0.8"), SimulatedExtractor.parse("sim_visual:visual-2d:256:0.8")]
    summary = synthesize_features(str(out / "cache"), "demo", ann, specs)
    for store in summary["stores"]:
        print(f"cache: {store['name']} written {store['written']} clips at {store['url']}")


if __name__ == "__main__":
    main()
