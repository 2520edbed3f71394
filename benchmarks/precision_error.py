"""Feature error of reduced precision: each extractor's bf16 (or fp16) output against its fp32 output.

Not a test. Why: ``extract --precision bf16`` is 2-4x faster on tensor cores, but a researcher
comparing pairings needs to know how far bf16 features are from fp32 ones before trusting
them. For each extractor this decodes one real clip (the real LLP clip under
../shared/llp when present, else a synthetic one), prepares its items with the extractor's
own preprocessing, and embeds them twice through the extract engine's batcher (same
autocast path as ``extract``): once in fp32, once in the reduced precision. Per output row
(a frame, a second): relative L2 ``||low - fp32|| / ||fp32||`` and cosine similarity; the
report gives the median and worst over the clip's rows.

Weights: pretrained when --weights-dir (or the library caches) hold them, else
``--random-init`` (say which in BENCHMARKS.md: random weights give other activation
statistics than trained ones, so they bound the arithmetic error, not the error on the
features a researcher will use).

Example:
    python benchmarks/precision_error.py --extractors resnet152,clip_vit_b16 --random-init --device cpu
    python benchmarks/precision_error.py --random-init --device cuda --precision bf16 --json bf16.json
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
sys.path.insert(0, str(REPO))

VISUAL = "resnet152,r2plus1d_18,clip_vit_b16,clip_vit_l14,timm:convnext_tiny,openl3_image"
REAL_CLIP = REPO.parent / "shared" / "llp" / "BjCEufrlXm4.mp4"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("Example:")[1])
    ap.add_argument("--extractors", default=VISUAL, help="Comma-separated extractor names (default: the visual ones).")
    ap.add_argument("--clip", type=Path, help=f"Clip to decode (default: {REAL_CLIP.name} if present, else synthetic).")
    ap.add_argument("--random-init", action="store_true", help="Untrained weights (no weights files needed).")
    ap.add_argument("--weights-dir", help="Offline weights folder.")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp16"])
    ap.add_argument("--batch-size", type=int, help="Rows per model call (default: the extract defaults).")
    ap.add_argument("--json", type=Path, help="Also write the results here.")
    return ap.parse_args(argv)


def the_clip(args: argparse.Namespace, scratch: Path) -> tuple[Path, str]:
    """The clip to measure on, and how to name it in the report."""
    if args.clip is not None:
        return args.clip, str(args.clip)
    if REAL_CLIP.is_file():
        return REAL_CLIP, f"real LLP clip {REAL_CLIP.stem}"
    from avvp_pipe.pipeline.synth.clips import synthesize

    synthesize(scratch, 1, seed=0, size=(320, 240), progress=False)
    return next((scratch / "videos").glob("*.mp4")), "synthetic 320x240 clip"


def row_errors(reference, low) -> dict[str, float]:
    """Median and worst per-row relative L2 and cosine of ``low`` against ``reference`` (float64)."""
    import numpy as np

    ref, got = np.asarray(reference, np.float64), np.asarray(low, np.float64)
    diff = np.linalg.norm(got - ref, axis=-1)
    norm_ref, norm_got = np.linalg.norm(ref, axis=-1), np.linalg.norm(got, axis=-1)
    rel = diff / np.maximum(norm_ref, np.finfo(np.float64).tiny)
    cos = (ref * got).sum(-1) / np.maximum(norm_ref * norm_got, np.finfo(np.float64).tiny)
    return {"rel_l2_median": float(np.median(rel)), "rel_l2_max": float(rel.max()),
            "cosine_median": float(np.median(cos)), "cosine_min": float(cos.min()), "rows": int(ref.shape[0])}


def measure(name: str, extractor, clip, opts, precision: str) -> dict[str, float]:
    """Embed the clip's prepared items in fp32 and in ``precision`` through the engine's batcher."""
    import torch

    from avvp_pipe.pipeline.extract import DEFAULT_BATCH
    from avvp_pipe.pipeline.extract.engine import _Batcher, _channels_last

    _channels_last(extractor)  # as the engine does
    items = extractor.prepare(clip)  # (rows, *item): the extractor's own preprocessing
    batch = opts.batch_size or DEFAULT_BATCH[extractor.spec.modality]
    outputs = {}
    for mode in ("fp32", precision):
        batcher = _Batcher(name, extractor, batch, extractor.device, mode)
        rows = [batcher._embed([items[i : i + batch]]) for i in range(0, items.shape[0], batch)]  # CPU tensors
        outputs[mode] = torch.cat(rows).float().numpy()  # (rows, D)
    return row_errors(outputs["fp32"], outputs[precision])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    import torch

    from avvp_pipe.pipeline.decode.clip import decode_clip
    from avvp_pipe.pipeline.extract import ExtractOptions, audio_rates, build_extractors, resolve_names

    names = resolve_names(args.extractors.split(","))
    opts = ExtractOptions(extractors=tuple(names), batch_size=args.batch_size, device=args.device,
                          precision="fp32", weights_dir=args.weights_dir, random_init=args.random_init)
    extractors = build_extractors(names, opts)
    with tempfile.TemporaryDirectory(prefix="avvp-precision-") as tmp:
        path, label = the_clip(args, Path(tmp))
        clip = decode_clip(path, audio_rates=audio_rates(extractors))
        results = {}
        for name, ex in extractors.items():
            with torch.no_grad():
                results[name] = measure(name, ex, clip, opts, args.precision)
            print(f"{name}: {results[name]}", flush=True)
    report = {"device": args.device, "precision": args.precision, "clip": label, "random_init": args.random_init,
              "machine": platform.processor() or platform.machine(), "torch": torch.__version__,
              "extractors": results}
    print_report(report)
    if args.json:
        from avvp_pipe.core.io import atomic_write_json

        atomic_write_json(args.json, report)
    return report


def print_report(report: dict) -> None:
    from avvp_pipe.core.fmt import table

    print(f"{report['precision']} vs fp32 on {report['device']}, {report['clip']}, "
          f"{'random-init' if report['random_init'] else 'pretrained'} weights, torch {report['torch']}")
    rows = [(name, r["rows"], f"{r['rel_l2_median']:.2e}", f"{r['rel_l2_max']:.2e}",
             f"{1 - r['cosine_median']:.2e}", f"{1 - r['cosine_min']:.2e}") for name, r in report["extractors"].items()]
    print(table(("extractor", "rows", "rel L2 median", "rel L2 max", "1 - cos median", "1 - cos worst"), rows))


if __name__ == "__main__":
    main()
