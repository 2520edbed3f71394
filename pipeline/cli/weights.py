"""``avvp-pipe weights``: bring pretrained weights that cannot be downloaded automatically."""

from __future__ import annotations

from pathlib import Path

import click

_INPUT_REPRS = ("mel256", "mel128", "linear")  # extractors.openl3.INPUT_REPRS (torch-free here)
_CONTENT_TYPES = ("music", "env")


@click.group("weights")
def weights() -> None:
    """Import pretrained weights (OpenL3's Keras files) into the weights folder."""


@weights.command("import-openl3")
@click.argument("h5_file", type=click.Path(path_type=Path))
@click.option("--weights-dir", type=click.Path(path_type=Path), default=None,
              help="Weights folder (the same --weights-dir the extract commands take); the state "
                   "dict goes to DIR/openl3/. Default: the shared weights cache "
                   "(torch hub checkpoints/openl3).")
@click.option("--input-repr", type=click.Choice(_INPUT_REPRS), default=None,
              help="Only when the file name does not say it (openl3_<net>_<input_repr>_<content>.h5).")
@click.option("--content-type", type=click.Choice(_CONTENT_TYPES), default=None,
              help="Only when the file name does not say it.")
def import_openl3(h5_file: Path, weights_dir: Path | None, input_repr: str | None,
                  content_type: str | None) -> None:
    """Convert an official OpenL3 Keras weights file (.h5 or the released .h5.gz).

    The openl3 package downloads its weights at install time, so fetch the file yourself,
    e.g. openl3_audio_mel256_music-v0_4_0.h5.gz from
    https://github.com/marl/openl3/raw/models/ , then:

    Example: avvp-pipe weights import-openl3 openl3_audio_mel256_music-v0_4_0.h5.gz --weights-dir weights
    """
    from avvp_pipe.extractors.openl3 import import_keras_weights

    import_keras_weights(h5_file, weights_dir, input_repr=input_repr, content_type=content_type,
                         log=click.echo)


COMMANDS = [weights]
