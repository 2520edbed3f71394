"""``avvp-pipe extract``: decode LLP clips once and write every requested extractor's features."""

from __future__ import annotations

from pathlib import Path

import click

from avvp_pipe.core.device import AUTO, DEVICE_HELP
from avvp_pipe.pipeline.decode.readers import DECODERS, DEFAULT_DECODER


@click.command("extract")
@click.option("--videos", required=True, type=click.Path(path_type=Path),
              help="Folder of <id>.mp4 clips (as the official LLP download script names them).")
@click.option("--cache", "cache_root", required=True, help="Cache root folder (or fsspec URL) for the stores.")
@click.option("--dataset", help="Dataset name of the stores [default: the videos folder's parent name, else llp].")
@click.option("--extractors", "names", help="Comma-separated extractor names [default: all registered].")
@click.option("--annotations", type=click.Path(path_type=Path),
              help="Official LLP annotation folder: stores hold all its clips, the run works on --split.")
@click.option("--split", type=click.Choice(["train", "val", "test", "all"]),
              help="Split to extract (needs --annotations) [default: all].")
@click.option("--clips", "clips_file", type=click.Path(path_type=Path),
              help="File with one clip name per line: extract only these.")
@click.option("--batch-size", type=int, help="Rows per model call, for each extractor "
              "[default: 128 frames for 2D nets, 16 groups for 3D, 64 examples for audio].")
@click.option("--decode-workers", type=int, default=2, show_default=True,
              help="Clips decoded in parallel (each in its own watchdog process).")
@click.option("--queue", "queue_size", type=int, default=4, show_default=True,
              help="Decoded clips that may wait for the models (bounds memory).")
@click.option("--device", default=AUTO, show_default=True, help=f"Torch device: {DEVICE_HELP}.")
@click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16"]), default="fp32", show_default=True,
              help="Autocast precision of the models (part of the store key).")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage dtype of the features.")
@click.option("--weights-dir", type=click.Path(path_type=Path, file_okay=False),
              help="Offline weights folder (nothing is downloaded) [default: the torch hub cache].")
@click.option("--random-init", is_flag=True,
              help="Untrained, seeded weights (tests and demos); the stores say RANDOM-INIT.")
@click.option("--frame-rule", type=click.Choice(["official", "aligned"]), default="official", show_default=True,
              help="Which 80 frames visual extractors see: official (spread over every JPEG of ffmpeg -r 8, any "
                   "clip length; the released features) or aligned (first 10 s, last frame repeated). Keys the store.")
@click.option("--trust-weights", is_flag=True,
              help="Use weights files whose sha256 differs from the published one (fine-tuned or re-saved); "
                   "refused otherwise. Their own hash keys the features.")
@click.option("--workers", type=click.IntRange(min=0),
              help="Run a local dask cluster of N single-threaded worker processes; 0: one per visible GPU "
                   "(else one CPU worker). Default: no cluster, all in this process.")
@click.option("--scheduler", help="Address of an existing dask scheduler, e.g. tcp://10.0.0.5:8786.")
@click.option("--unit-clips", type=int, default=8, show_default=True,
              help="Clips per dask work unit (committed together).")
@click.option("--decode-timeout", type=float, default=60.0, show_default=True,
              help="Seconds before a hanging decoder is killed (0 = decode in-process, no limit).")
@click.option("--decoder", type=click.Choice(DECODERS), default=DEFAULT_DECODER, show_default=True,
              help="Frame reader: torchcodec (maintained; needs FFmpeg 4-8 libraries) or decord; auto takes "
                   "torchcodec when it loads. Same frames on CPU; torchcodec with a cuda --device decodes on NVDEC.")
@click.option("--summary", "summary_path", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the summary as JSON here.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def extract(videos: Path, cache_root: str, dataset: str | None, names: str | None, annotations: Path | None,
            split: str | None, clips_file: Path | None, batch_size: int | None, decode_workers: int,
            queue_size: int, device: str, precision: str, dtype: str, weights_dir: Path | None, random_init: bool,
            frame_rule: str, trust_weights: bool, workers: int | None, scheduler: str | None, unit_clips: int, decode_timeout: float,
            decoder: str, summary_path: Path | None, quiet: bool) -> None:  # fmt: skip
    """Decode each clip once (80 frames at 8 fps, 16/48 kHz audio) and write the features of
    every requested extractor into the cache, resuming where an earlier run stopped.

    Exit codes: 0 all done, 1 some clips failed (reasons in the summary), 2 bad options,
    3 bad input, 4 missing weights or packages.

    Example: avvp-pipe extract --videos LLP/videos --cache ~/avvp-cache --annotations ../shared/llp
    --split test --extractors vggish,resnet152 --device cuda --precision bf16 --summary test.json
    """
    from avvp_pipe.pipeline.extract import (
        ExtractOptions,
        find_clips,
        format_summary,
        raise_if_failed,
        resolve_names,
        run_extract,
    )
    from avvp_pipe.core.io import atomic_write_json

    chosen = resolve_names(names.split(",") if names is not None else None)
    opts = ExtractOptions(
        extractors=tuple(chosen), batch_size=batch_size, decode_workers=decode_workers, queue=queue_size,
        device=device, precision=precision, weights_dir=str(weights_dir) if weights_dir else None,
        random_init=random_init, decode_timeout=decode_timeout or None, dtype=dtype, unit_clips=unit_clips,
        trust_weights=trust_weights, frame_rule=frame_rule, decoder=decoder,
    )  # fmt: skip
    clips = find_clips(videos, dataset=dataset, annotations=annotations, split=split, clips_file=clips_file)
    summary = run_extract(videos, cache_root, clips, opts, workers=workers, scheduler=scheduler,
                          progress=not quiet)
    click.echo(format_summary(summary))
    if summary_path is not None:
        atomic_write_json(summary_path, summary)
        click.echo(f"summary written to {summary_path}")
    raise_if_failed(summary)


COMMANDS = [extract]
