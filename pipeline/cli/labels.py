"""``avvp-pipe labels``: inspect an LLP annotation folder."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("labels")
def labels() -> None:
    """Read and check LLP annotation files."""


@labels.command("summary")
@click.option("--annotations", "annotations", required=True, type=click.Path(path_type=Path),
              help="Folder with the official AVVP_*.csv files.")
@click.option("--audio-file", default="AVVP_eval_audio.csv", show_default=True,
              help="Dense audio file (AVVP_eval_audio_pre2024.csv for older published numbers).")
@click.option("--json", "json_out", type=click.Path(path_type=Path), help="Also write the summary as JSON.")
def summary(annotations: Path, audio_file: str, json_out: Path | None) -> None:
    """Clips per split, labels per class, dense coverage and quirks.

    Example: avvp-pipe labels summary --annotations ../shared/llp --json labels.json
    """
    from avvp_pipe.pipeline.llp.annotations import load_annotations
    from avvp_pipe.core.io import atomic_write_json
    from avvp_pipe.pipeline.llp.annotations import format_labels_summary

    ann = load_annotations(annotations, audio_file=audio_file)
    report = ann.summary()
    click.echo(format_labels_summary(report))
    if json_out:
        atomic_write_json(json_out, report)
        click.echo(f"wrote {json_out}")


COMMANDS = [labels]
