"""The official LLP metrics applied to a predictions file (``evaluate``'s P.npz format)."""

from avvp_pipe.pipeline.evaluate.scores import (evaluate_predictions, format_table, load_predictions,
                                                save_predictions, save_scores)

__all__ = ["evaluate_predictions", "format_table", "load_predictions", "save_predictions", "save_scores"]
