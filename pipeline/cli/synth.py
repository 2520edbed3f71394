"""``avvp-pipe synth``: write synthetic LLP-like clips with known dense truth."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("synth")
@click.argument("out", type=click.Path(path_type=Path, file_okay=False))
@click.option("--clips", "n_clips", type=click.IntRange(min=1), required=True, help="Number of 10-s clips.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True,
              help="Seed; the same seed and options rebuild identical files.")
@click.option("--size", default="320x240", show_default=True, help="Frame size WIDTHxHEIGHT (even sides).")
@click.option("--fps", type=float, default=30.0, show_default=True, help="Frame rate.")
@click.option("--sample-rate", type=int, default=44100, show_default=True, help="Audio sample rate (Hz).")
@click.option("--annotations", type=click.Path(path_type=Path, file_okay=False),
              help="Real LLP annotation folder to sample label structures from (else a built-in LLP-like one).")
@click.option("--splits", default="0.8,0.1,0.1", show_default=True, help="Train,val,test shares.")
@click.option("--class-prior", type=click.Choice(["llp", "uniform"]), default="llp", show_default=True,
              help="Class frequencies of the built-in structure: LLP's (Speech in half the clips) or uniform.")
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True, help="Rendering processes.")
@click.option("--labels-only", is_flag=True,
              help="Write only OUT/annotations (no video): a label structure for synth-features, in seconds.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def synth(out: Path, n_clips: int, seed: int, size: str, fps: float, sample_rate: int, annotations: Path | None,
          splits: str, class_prior: str, workers: int, labels_only: bool, quiet: bool) -> None:  # fmt: skip
    """Write N synthetic clips (H.264 + AAC mp4) to OUT/videos, the official annotation
    files to OUT/annotations and the dense truth of every clip to OUT/truth.npz.

    Each class has its own sound and its own sprite; an event is heard only in its dense
    audio seconds and seen only in its dense visual seconds. Rerunning resumes: complete
    clips are kept.

    Example: avvp-pipe synth data/synth --clips 200 --seed 1 --annotations ../shared/llp --workers 2

    Example (labels only, for synth-features): avvp-pipe synth data/labels --clips 2000 --labels-only
    """
    from avvp_pipe.core.fmt import human_seconds
    from avvp_pipe.pipeline.synth.clips import parse_fractions, synthesize, synthesize_annotations

    if labels_only:
        folder = synthesize_annotations(out / "annotations", n_clips, seed, parse_fractions(splits),
                                        annotations, class_prior)
        click.echo(f"synth: annotation files of {n_clips} clips in {folder} (no video)")
        return
    from avvp_pipe.pipeline.synth.clips import parse_size

    result = synthesize(
        out, n_clips, seed, size=parse_size(size), fps=fps, annotations=annotations,
        split_fractions=parse_fractions(splits), workers=workers, progress=not quiet,
        sample_rate=sample_rate, class_prior=class_prior,
    )  # fmt: skip
    for name in result.replaced:
        click.echo(f"warning: {name} was unreadable or had the wrong format; rendered again", err=True)
    rate = f", {result.clips_per_s:.2f} clips/s" if result.rendered else ""
    split_text = ", ".join(f"{k} {v}" for k, v in result.splits.items())
    click.echo(
        f"synth: {result.n_clips} clips in {result.out} (rendered {result.rendered}, kept {result.kept}) "
        f"in {human_seconds(result.seconds)}{rate}; {split_text}"
    )
    click.echo(f"  videos {result.videos}  annotations {result.annotations}  truth {result.truth}")


COMMANDS = [synth]
