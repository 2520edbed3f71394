"""``avvp-pipe extractors``: list the registered feature extractors and show their specs."""

from __future__ import annotations

import json
from pathlib import Path

import click

_COLUMNS = (("name", "name"), ("modality", "modality"), ("output", "out_shape"), ("input", "input"),
            ("weights source", "weights_source"), ("packages", "packages"), ("weights", "weights"))


def _registry():
    """The registry with every family imported (extractors/__init__ imports them)."""
    import avvp_pipe.extractors  # noqa: F401  (registers the families)
    from avvp_pipe.extractors import registry

    return registry


def _cell(row: dict, key: str) -> str:
    value = row[key]
    if key == "out_shape":
        return f"{value[0]} x {value[1]}"
    if key == "packages":
        return "ok" if value else "missing: " + ",".join(row["missing_packages"])
    return str(value)


def _table(rows: list[dict]) -> str:
    header = [title for title, _ in _COLUMNS]
    body = [[_cell(row, key) for _, key in _COLUMNS] for row in rows]
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in [header, *body])


@click.group("extractors")
def extractors_group() -> None:
    """List and inspect the registered feature extractors."""


@extractors_group.command("list")
@click.option("--weights-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Offline weights folder to check (default: the torch hub cache).")
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON.")
def list_command(weights_dir: Path | None, as_json: bool) -> None:
    """Name, modality, output shape, input, weights source and availability of every extractor.

    Example: avvp-pipe extractors list --weights-dir ~/avvp-weights
    """
    registry = _registry()
    rows = [registry.summary(name, weights_dir) for name in registry.listed_names()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(_table(rows))
    click.echo("\nplus timm:<model_name>, any timm model (e.g. avvp-pipe extractors show timm:convnext_tiny), "
               "and hf_audio:<repo>, the transformers audio encoders above (more: hf_audio.register_hf_audio); "
               "options as NAME[key=value,...], e.g. clip_vit_l14[fps=1]")
    if weights_dir is None:
        from avvp_pipe.extractors.weights import hub_checkpoints_dir

        click.echo(f"\nweights looked for in {hub_checkpoints_dir()} (downloadable: fetched on first use)")


@extractors_group.command("show")
@click.argument("name")
def show_command(name: str) -> None:
    """Print the full spec of extractor NAME as JSON (``timm:<model_name>`` is resolved from timm;
    ``NAME[key=value,...]`` shows the shape those options give).

    Example: avvp-pipe extractors show "clip_vit_b16[output=pre_projection]"
    """
    registry = _registry()
    click.echo(json.dumps(registry.get_spec(name).to_dict(), indent=2))


COMMANDS = [extractors_group]
