"""The LLP data model: classes, splits, clip ids and the official annotation files."""

from avvp_pipe.pipeline.llp.annotations import (CLASSES, NUM_CLASSES, SECONDS, SPLITS, Annotations, Clip,
                                                clip_id, format_labels_summary, load_annotations,
                                                write_annotations)

__all__ = ["CLASSES", "NUM_CLASSES", "SECONDS", "SPLITS", "Annotations", "Clip", "clip_id",
           "format_labels_summary", "load_annotations", "write_annotations"]
