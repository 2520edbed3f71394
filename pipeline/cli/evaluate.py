"""``avvp-pipe evaluate``: official LLP scores of a saved predictions file."""

from __future__ import annotations

import click


@click.command("evaluate")
@click.option("--predictions", "predictions", required=True, type=click.Path(dir_okay=False),
              help="P.npz written by `avvp-pipe train` (video_ids, frame_prob, global_prob[, a_prob, v_prob]).")
@click.option("--annotations", required=True, type=click.Path(file_okay=False),
              help="Folder with the official LLP CSV files.")
@click.option("--split", required=True, type=click.Choice(["val", "test"]), help="Split to score.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the scores as JSON here (atomically).")
@click.option("--gate", type=click.Choice(["fused", "modality"]), default="fused", show_default=True,
              help="fused: global_prob gates both modalities (official); modality: a_prob/v_prob (MA style).")
@click.option("--threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Per-second probability threshold.")
@click.option("--gate-threshold", type=click.FloatRange(0, 1), default=0.5, show_default=True,
              help="Video-level gate threshold.")
@click.option("--audio-file", default="AVVP_eval_audio.csv", show_default=True,
              help="Dense audio file in the annotation folder (AVVP_eval_audio_pre2024.csv for older papers).")
def evaluate(predictions, annotations, split, json_out, gate, threshold, gate_threshold, audio_file) -> None:
    """Score predictions with the official LLP (AVVP) evaluation and print a table.

    Example:

    \b
        avvp-pipe evaluate --predictions run/P_test.npz --annotations data/llp --split test --json run/test.json
    """
    from avvp_pipe.pipeline.evaluate.scores import evaluate_predictions, format_table, load_predictions, save_scores
    from avvp_pipe.pipeline.llp.annotations import load_annotations

    ann = load_annotations(annotations, audio_file=audio_file)
    result = evaluate_predictions(
        load_predictions(predictions), ann, split, gate=gate, threshold=threshold, gate_threshold=gate_threshold
    )
    click.echo(f"{split}: {result['clips']} clips, gate {gate}, threshold {threshold}, gate threshold {gate_threshold}")
    if result["ignored_clips"]:
        click.echo(f"ignored {result['ignored_clips']} predicted clips that are not in the {split} split")
    click.echo(format_table(result))
    if json_out:
        save_scores(json_out, result)
        click.echo(f"wrote {json_out}")


COMMANDS = [evaluate]
