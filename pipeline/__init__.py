"""avvp-pipe: stage orchestration, decoding, the LLP data model and the CLI."""

__version__ = "0.1.0"
