"""The LLP data model: official annotation files, clip ids, weak and dense labels.

Formats follow the official AVVP release (see README, "Data formats"): tab-separated files
with a header row. Weak files list ``filename<TAB>event_labels``; dense files list
``filename<TAB>onset<TAB>offset<TAB>event_labels`` with integer seconds, onset inclusive and
offset exclusive. A clip is keyed by its 11-character YouTube id, as official features are.

The real files have quirks the official evaluation ignores silently (dense rows naming no
val/test clip, rows with onset >= offset). We handle them on purpose and count them, so a
user sees them in ``avvp-pipe labels summary``; anything else unexpected is an error naming
the file and line.
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avvp_pipe.core.errors import AnnotationError, AvvpError
from avvp_pipe.core.io import atomic_write_text
from avvp_pipe.core.fmt import table

#: The 25 LLP classes in the official index order.
CLASSES: tuple[str, ...] = (
    "Speech", "Car", "Cheering", "Dog", "Cat", "Frying_(food)", "Basketball_bounce",
    "Fire_alarm", "Chainsaw", "Cello", "Banjo", "Singing", "Chicken_rooster", "Violin_fiddle",
    "Vacuum_cleaner", "Baby_laughter", "Accordion", "Lawn_mower", "Motorcycle", "Helicopter",
    "Acoustic_guitar", "Telephone_bell_ringing", "Baby_cry_infant_cry", "Blender", "Clapping",
)  # fmt: skip
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASSES)}
NUM_CLASSES = len(CLASSES)
SECONDS = 10
SPLITS: tuple[str, ...] = ("train", "val", "test")
MODALITIES: tuple[str, ...] = ("audio", "visual")

#: Official file names, per role.
WEAK_FILES: dict[str, str] = {
    "train": "AVVP_train.csv",
    "val": "AVVP_val_pd.csv",
    "test": "AVVP_test_pd.csv",
}
DENSE_FILES: dict[str, str] = {"audio": "AVVP_eval_audio.csv", "visual": "AVVP_eval_visual.csv"}
#: The audio file most published work used before the 2024 upstream fix (< 0.02 points).
AUDIO_PRE2024 = "AVVP_eval_audio_pre2024.csv"
WEAK_HEADER = ("filename", "event_labels")
DENSE_HEADER = ("filename", "onset", "offset", "event_labels")

_ID_LEN = 11
_FILENAME_RE = re.compile(r"^(?P<id>[A-Za-z0-9_-]{11})_(?P<start>\d+(?:\.\d+)?)_(?P<end>\d+(?:\.\d+)?)$")
_ID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")


def clip_id(name: str | os.PathLike) -> str:
    """The 11-char YouTube id of a clip named by id, ``<id>_<start>_<end>``, or a file path.

    Official features are keyed by the id alone, while the annotation files use the full
    LLP filename; accepting both everywhere spares users a conversion step.
    """
    stem = Path(str(name)).name
    for suffix in (".mp4", ".npy", ".npz", ".mkv", ".webm", ".avi"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    match = _FILENAME_RE.match(stem)
    if match:
        return match.group("id")
    if _ID_RE.match(stem):
        return stem
    raise AvvpError(
        f"clip name {str(name)!r}: expected an 11-character YouTube id or "
        f"'<id>_<start>_<end>' (e.g. BjCEufrlXm4 or BjCEufrlXm4_20_30)"
    )


@dataclass(frozen=True)
class Clip:
    """One LLP clip: its id, official filename, split and weak (clip-level) labels."""

    id: str
    filename: str
    split: str
    labels: tuple[int, ...]  # class indices, file order


@dataclass
class Annotations:
    """Weak labels for every split and dense audio/visual truth for val and test."""

    root: Path
    clips: dict[str, Clip]  # id -> clip, in file order (train, val, test)
    dense_rows: dict[str, dict[str, np.ndarray]]  # modality -> id -> (25, 10) uint8
    quirks: Counter = field(default_factory=Counter)
    quirk_examples: dict[str, list[str]] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # role -> path actually read

    # ------------------------------------------------------------------ lookup
    def resolve(self, name: str) -> str:
        """The id of a clip named any accepted way; an unknown clip is an error."""
        cid = clip_id(name)
        if cid not in self.clips:
            raise AvvpError(f"clip {name!r} is not in the annotations at {self.root}")
        return cid

    def split_ids(self, split: str) -> list[str]:
        """Ids of one split ('train', 'val', 'test') or 'all', in file order."""
        if split == "all":
            return list(self.clips)
        _check_split(split)
        return [cid for cid, clip in self.clips.items() if clip.split == split]

    def ids_for(self, split_or_ids: str | Sequence[str]) -> list[str]:
        """Accept a split name or an explicit list of clip names."""
        if isinstance(split_or_ids, str):
            return self.split_ids(split_or_ids)
        return [self.resolve(name) for name in split_or_ids]

    # ------------------------------------------------------------------ arrays
    def weak_labels(self, split_or_ids: str | Sequence[str]) -> np.ndarray:
        """Multi-hot clip labels, (N, 25) float32, rows in the order of ``ids_for``."""
        ids = self.ids_for(split_or_ids)
        out = np.zeros((len(ids), NUM_CLASSES), dtype=np.float32)
        for row, cid in enumerate(ids):
            out[row, list(self.clips[cid].labels)] = 1.0
        return out

    def dense(self, split_or_ids: str | Sequence[str], modality: str) -> np.ndarray:
        """Per-second truth, (N, 25, 10) uint8; clips without rows are all zero."""
        if modality not in MODALITIES:
            raise AvvpError(f"modality {modality!r}: expected one of {', '.join(MODALITIES)}")
        ids = self.ids_for(split_or_ids)
        rows = self.dense_rows.get(modality, {})
        out = np.zeros((len(ids), NUM_CLASSES, SECONDS), dtype=np.uint8)
        for row, cid in enumerate(ids):
            if cid in rows:
                out[row] = rows[cid]
        return out

    def has_dense(self, split_or_ids: str | Sequence[str], modality: str) -> np.ndarray:
        """(N,) bool: whether a clip has at least one marked second for ``modality``."""
        return self.dense(split_or_ids, modality).reshape(-1, NUM_CLASSES * SECONDS).any(1)

    def dense_splits(self) -> list[str]:
        """Splits that carry dense truth (val and test in LLP)."""
        ids_with_rows = set().union(*(set(r) for r in self.dense_rows.values()))
        return [s for s in SPLITS if any(cid in ids_with_rows for cid in self.split_ids(s))]

    # ------------------------------------------------------------------ report
    def summary(self) -> dict:
        """Clips per split, labels per class, dense coverage and quirks, as plain data."""
        per_split = {s: len(self.split_ids(s)) for s in SPLITS}
        per_class = {s: dict(zip(CLASSES, self.weak_labels(s).sum(0).astype(int).tolist()))
                     for s in SPLITS}
        labels_per_clip = {
            s: dict(sorted(Counter(len(self.clips[c].labels) for c in self.split_ids(s)).items()))
            for s in SPLITS
        }
        coverage = {}
        for split in SPLITS:
            audio = self.has_dense(split, "audio")
            visual = self.has_dense(split, "visual")
            coverage[split] = {
                "audio": int(audio.sum()),
                "visual": int(visual.sum()),
                "audio_visual": int(self._av_clips(split).sum()),
            }
        return {
            "root": str(self.root),
            "files": dict(self.files),
            "clips": {**per_split, "total": len(self.clips)},
            "labels_per_clip": labels_per_clip,
            "labels_per_class": per_class,
            "dense_coverage": coverage,
            "quirks": dict(self.quirks),
            "quirk_examples": {k: v[:10] for k, v in self.quirk_examples.items()},
        }

    def _av_clips(self, split: str) -> np.ndarray:
        """Clips with at least one second marked in both modalities for the same class."""
        both = self.dense(split, "audio") & self.dense(split, "visual")  # (N, 25, 10)
        return both.reshape(len(both), NUM_CLASSES * SECONDS).any(1)  # explicit: an empty split reshapes too


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise AvvpError(f"split {split!r}: expected one of {', '.join(SPLITS)} (or all)")


# ---------------------------------------------------------------------- reading


def load_annotations(
    directory: str | os.PathLike,
    *,
    audio_file: str = DENSE_FILES["audio"],
    visual_file: str = DENSE_FILES["visual"],
    require_dense: bool = True,
) -> Annotations:
    """Read the official LLP annotation folder (three weak files and two dense files).

    ``audio_file`` selects the dense audio file, e.g. ``AVVP_eval_audio_pre2024.csv`` to
    match most published numbers. A missing dense file is an error unless
    ``require_dense`` is false (the train split alone needs none).
    """
    root = Path(directory)
    if not root.is_dir():
        raise AnnotationError(f"{root}: annotation folder not found (expected the official LLP CSV files)")
    ann = Annotations(root=root, clips={}, dense_rows={})
    for split, name in WEAK_FILES.items():
        path = root / name
        ann.files[split] = str(path)
        for clip in _read_weak(path, split):
            if clip.id in ann.clips:
                other = ann.clips[clip.id]
                raise AnnotationError(
                    f"{path}: clip {clip.filename} appears twice (already in {other.split} as {other.filename})"
                )
            ann.clips[clip.id] = clip
    by_filename = {c.filename: c.id for c in ann.clips.values()}
    for modality, name in (("audio", audio_file), ("visual", visual_file)):
        path = root / name
        if not path.is_file() and not require_dense:
            continue
        ann.files[modality] = str(path)
        ann.dense_rows[modality] = _read_dense(path, modality, by_filename, ann)
    return ann


def _open_rows(path: Path, header: tuple[str, ...]) -> Iterable[tuple[int, list[str]]]:
    """Yield (line number, fields) after checking the header; errors name file and line."""
    if not path.is_file():
        raise AnnotationError(f"{path}: file not found (expected an official LLP annotation file)")
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise AnnotationError(f"{path}:{line}: expected UTF-8 text (an official LLP annotation file) but byte "
                              f"{err.start} is 0x{raw[err.start]:02x}, which is not UTF-8") from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle, delimiter="\t")
        first = next(reader, None)
        if first is None or tuple(f.strip() for f in first) != header:
            raise AnnotationError(
                f"{path}:1: expected header {' TAB '.join(header)!r} but got {' TAB '.join(first or [])!r}"
            )
        for fields in reader:
            if not fields or all(not f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise AnnotationError(
                    f"{path}:{reader.line_num}: expected {len(header)} tab-separated fields "
                    f"({', '.join(header)}) but got {len(fields)}"
                )
            yield reader.line_num, [f.strip() for f in fields]


def _parse_labels(text: str, path: Path, line: int) -> tuple[int, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise AnnotationError(f"{path}:{line}: empty event_labels")
    unknown = [n for n in names if n not in CLASS_INDEX]
    if unknown:
        raise AnnotationError(f"{path}:{line}: unknown class {unknown[0]!r} (expected one of the 25 LLP classes)")
    return tuple(CLASS_INDEX[n] for n in names)


def _read_weak(path: Path, split: str) -> list[Clip]:
    clips = []
    for line, (filename, labels) in _open_rows(path, WEAK_HEADER):
        if not _FILENAME_RE.match(filename):
            raise AnnotationError(f"{path}:{line}: filename {filename!r} is not '<11-char id>_<start>_<end>'")
        clips.append(Clip(clip_id(filename), filename, split, _parse_labels(labels, path, line)))
    return clips


def _read_dense(
    path: Path, modality: str, by_filename: Mapping[str, str], ann: Annotations
) -> dict[str, np.ndarray]:
    rows: dict[str, np.ndarray] = {}
    unknown_clips: set[str] = set()
    for line, (filename, onset_s, offset_s, labels) in _open_rows(path, DENSE_HEADER):
        try:
            onset, offset = int(onset_s), int(offset_s)
        except ValueError:
            raise AnnotationError(
                f"{path}:{line}: onset/offset must be integer seconds but got {onset_s!r}, {offset_s!r}"
            ) from None
        if not (0 <= onset <= SECONDS and 0 <= offset <= SECONDS):
            raise AnnotationError(f"{path}:{line}: onset/offset must lie in 0..{SECONDS} but got {onset}, {offset}")
        classes = _parse_labels(labels, path, line)
        cid = by_filename.get(filename)
        # Both quirks are counted independently: a row can name an unknown clip AND be empty.
        empty = onset >= offset
        if empty:
            _note(ann, f"{modality}_rows_onset_ge_offset", f"{path.name}:{line} {filename} {onset}-{offset}")
        if cid is None or ann.clips[cid].split == "train":
            _note(ann, f"{modality}_rows_unknown_clip", f"{path.name}:{line} {filename}")
            unknown_clips.add(filename)
            continue
        if empty:
            continue
        grid = rows.setdefault(cid, np.zeros((NUM_CLASSES, SECONDS), dtype=np.uint8))
        grid[list(classes), onset:offset] = 1
    if unknown_clips:
        ann.quirks[f"{modality}_unknown_clips"] = len(unknown_clips)
    return rows


def _note(ann: Annotations, kind: str, example: str) -> None:
    ann.quirks[kind] += 1
    ann.quirk_examples.setdefault(kind, []).append(example)


# ---------------------------------------------------------------------- writing


def format_weak(clips: Iterable[tuple[str, Sequence[int]]]) -> str:
    """Weak-file text from (filename, class indices) pairs, official header and order."""
    buf = io.StringIO()
    buf.write("\t".join(WEAK_HEADER) + "\n")
    for filename, labels in clips:
        buf.write(f"{filename}\t{','.join(CLASSES[c] for c in labels)}\n")
    return buf.getvalue()


def dense_runs(grid: np.ndarray) -> list[tuple[int, int, int]]:
    """(class, onset, offset) runs of a (25, 10) grid: one official dense row each."""
    runs = []
    for cls in range(grid.shape[0]):
        sec = 0
        while sec < grid.shape[1]:
            if grid[cls, sec]:
                start = sec
                while sec < grid.shape[1] and grid[cls, sec]:
                    sec += 1
                runs.append((cls, start, sec))
            else:
                sec += 1
    return runs


def format_dense(grids: Iterable[tuple[str, np.ndarray]]) -> str:
    """Dense-file text from (filename, (25, 10) grid) pairs."""
    buf = io.StringIO()
    buf.write("\t".join(DENSE_HEADER) + "\n")
    for filename, grid in grids:
        for cls, onset, offset in dense_runs(grid):
            buf.write(f"{filename}\t{onset}\t{offset}\t{CLASSES[cls]}\n")
    return buf.getvalue()


def write_annotations(
    directory: str | os.PathLike,
    clips: Sequence[Clip],
    dense: Mapping[str, Mapping[str, np.ndarray]],
) -> Path:
    """Write an annotation folder in the official format (atomic per file).

    ``dense`` maps modality -> clip id -> (25, 10) grid; rows are written for val/test clips
    only, as in LLP. The full list (AVVP_dataset_full.csv) is written too.
    """
    root = Path(directory)
    root.mkdir(parents=True, exist_ok=True)
    for split, name in WEAK_FILES.items():
        text = format_weak((c.filename, c.labels) for c in clips if c.split == split)
        atomic_write_text(root / name, text)
    atomic_write_text(root / "AVVP_dataset_full.csv", format_weak((c.filename, c.labels) for c in clips))
    for modality, name in DENSE_FILES.items():
        grids = dense.get(modality, {})
        text = format_dense(
            (c.filename, grids[c.id]) for c in clips if c.split != "train" and c.id in grids
        )
        atomic_write_text(root / name, text)
    return root


def format_labels_summary(report: Mapping[str, Any]) -> str:
    """The human view of :meth:`avvp_pipe.pipeline.llp.annotations.Annotations.summary`."""
    clips = report["clips"]
    cov = report["dense_coverage"]
    rows = [
        (split, clips[split], report["labels_per_clip"][split], cov[split]["audio"],
         cov[split]["visual"], cov[split]["audio_visual"])
        for split in ("train", "val", "test")
    ]
    out = [table(("split", "clips", "labels per clip", "audio truth", "visual truth", "AV truth"), rows)]
    per_class = report["labels_per_class"]
    class_rows = [(name, per_class["train"][name], per_class["val"][name], per_class["test"][name])
                  for name in per_class["train"]]
    out.append("")
    out.append(table(("class", "train", "val", "test"), class_rows))
    out.append("")
    quirks = report["quirks"]
    if quirks:
        out.append("quirks (handled on purpose; the official evaluation ignores them silently):")
        for kind, count in sorted(quirks.items()):
            examples = report["quirk_examples"].get(kind, [])[:3]
            out.append(f"  {kind}: {count}" + (f"  e.g. {'; '.join(examples)}" if examples else ""))
    else:
        out.append("quirks: none")
    return "\n".join(out)
