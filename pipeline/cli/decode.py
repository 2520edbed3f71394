"""``avvp-pipe decode``: decode one clip into the arrays the extractors see."""

from __future__ import annotations

from pathlib import Path

import click

from avvp_pipe.pipeline.decode.readers import DECODERS, DEFAULT_DECODER


@click.command("decode")
@click.argument("clip", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Where to write the .npz (frames, frame_index, frame_time, audio_16k, audio_48k).")
@click.option("--timeout", "timeout_s", default=60.0, show_default=True, type=float,
              help="Seconds before a hanging decoder is killed (0 = no limit, decode in-process).")
@click.option("--modern-ffmpeg", is_flag=True,
              help="Pick frames as ffmpeg 6.1+ would (differs from the 2020 rule only under 16 fps).")
@click.option("--frame-rule", type=click.Choice(["official", "aligned"]), default="official", show_default=True,
              help="official: 80 frames spread over every JPEG of ffmpeg -r 8, any clip length (the released "
                   "features); aligned: the first 10 s only, the last frame repeated (frame k in second k // 8).")
@click.option("--audio-path", type=click.Choice(["moviepy", "soxr"]), default="moviepy", show_default=True,
              help="How audio_16k is made: moviepy replays the official wavs (nearest sample, no filter); "
                   "soxr resamples with a low-pass filter.")
@click.option("--decoder", type=click.Choice(DECODERS), default=DEFAULT_DECODER, show_default=True,
              help="Frame reader: torchcodec (maintained; needs FFmpeg 4-8 libraries) or decord; auto takes "
                   "torchcodec when it loads. Both give the same frames on CPU.")
@click.option("--device", default="cpu", show_default=True,
              help="cuda with --decoder torchcodec decodes on the GPU (NVDEC); cpu is the official path.")
def decode(clip: Path, out: Path, timeout_s: float, modern_ffmpeg: bool, frame_rule: str, audio_path: str,
           decoder: str, device: str) -> None:
    """Decode CLIP's 80 official frames and 10 s of mono audio (16 and 48 kHz) to an .npz.

    Example: avvp-pipe decode ../shared/llp/BjCEufrlXm4.mp4 --out BjCEufrlXm4.npz
    """
    from avvp_pipe.pipeline.decode.clip import decode_clip, save_npz

    decoded = decode_clip(clip, timeout_s=timeout_s or None, legacy_ffmpeg=not modern_ffmpeg, frame_rule=frame_rule,
                          audio_path=audio_path, decoder=decoder, decode_device=device)
    save_npz(decoded, out)
    click.echo(f"{decoded.describe()} -> {out}")


COMMANDS = [decode]
