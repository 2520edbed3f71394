"""``avvp-pipe decode``: decode one clip into the arrays the extractors see."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("decode")
@click.argument("clip", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the .npz (frames, frame_index, frame_time, audio_16k, audio_48k).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=float,
              help="Seconds before a hanging decoder is killed (0 = no limit, decode in-process).")
@click.option("--modern-ffmpeg", is_flag=True,
              help="Pick frames as ffmpeg 6.1+ would (differs from the 2020 rule only under 16 fps).")
def decode(clip: Path, out: Path, timeout_s: float, modern_ffmpeg: bool) -> None:
    """Decode CLIP's 80 official frames and 10 s of mono audio (16 and 48 kHz) to an .npz.

    Example: avvp-pipe decode ../shared/llp/BjCEufrlXm4.mp4 --out BjCEufrlXm4.npz
    """
    from avvp_pipe.pipeline.decode.clip import decode_clip, save_npz

    decoded = decode_clip(clip, timeout_s=timeout_s or None, legacy_ffmpeg=not modern_ffmpeg)
    save_npz(decoded, out)
    click.echo(f"{decoded.describe()} -> {out}")


COMMANDS = [decode]
