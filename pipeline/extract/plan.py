"""What an extract run will do: its options, the clip list, the extractors, the stores and
the tasks (plain data, so they cross process boundaries under dask)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avvp_pipe.core.device import resolve_device
from avvp_pipe.pipeline.decode.readers import resolve_decoder
from avvp_pipe.core.errors import EXIT_USAGE, AvvpError, WeightsError

if TYPE_CHECKING:  # torch stays out of `avvp-pipe --help`
    from avvp_pipe.cache.store import FeatureStore
    from avvp_pipe.extractors.base import Extractor


PRECISIONS = ("fp32", "fp16", "bf16")
VIDEO_SUFFIX = ".mp4"
#: Target rows per ``embed`` call when ``--batch-size`` is not given, by modality. A 2D
#: batch of 128 frames at 224x224 is 77 MB of float32; a 3D item is 8 frames at 112x112.
DEFAULT_BATCH = {"visual-2d": 128, "visual-3d": 16, "audio": 64}
#: How the 80 frames are chosen (recorded in provenance; avvp_pipe.pipeline.decode defaults).
DECODE_RULE = {"n_frames": 80, "out_fps": 8.0, "seconds": 10.0, "legacy_ffmpeg": True,
               "rule": "ffmpeg -r 8 JPEG sequence replayed on timestamps, then "
                       "np.round(np.linspace(0, n - 1, 80)) (avvp_pipe.pipeline.decode)"}
#: The frame rules in words, for provenance (avvp_pipe.pipeline.decode.clip.FRAME_RULES).
FRAME_RULE_TEXT = {
    "official": "np.round(np.linspace(0, n - 1, 80)) over all n JPEGs of ffmpeg -r 8, any clip length "
                "(the official features)",
    "aligned": "JPEGs of frames starting before 10 s, the last repeated to 80, then the linspace "
               "(frame k in second k // 8)",
}
#: The 16 kHz audio paths in words, for provenance (avvp_pipe.pipeline.decode.audio.AUDIO_PATHS).
AUDIO_PATH_TEXT = {
    "moviepy": "moviepy 1.0.3 write_audiofile(fps=16000) replayed: 44.1 kHz stereo s16, nearest sample, "
               "no filter, int16, channel mean (the official VGGish input)",
    "soxr": "channel mean resampled to 16 kHz with soxr HQ",
}
MISSING_VIDEO = "video file missing"



class ExtractUsageError(AvvpError):
    """A bad combination of options: one line on stderr and click's usage exit code."""

    exit_code = EXIT_USAGE


# ----------------------------------------------------------------------------------------
# Options and the clip list


@dataclass(frozen=True)
class ExtractOptions:
    """Everything that steers a run except which clips (see :class:`ClipSet`)."""

    extractors: tuple[str, ...]
    batch_size: int | None = None  # rows per embed call for every extractor; None: DEFAULT_BATCH
    decode_workers: int = 2  # decode threads, each with its own watchdog decode process
    queue: int = 4  # prepared clips waiting for the models (bounds memory)
    device: str = "auto"  # run_extract resolves it (core.device); dask workers on other hosts resolve their own
    precision: str = "fp32"
    weights_dir: str | None = None
    random_init: bool = False
    decode_timeout: float | None = 60.0  # seconds per clip; None decodes in-process, no limit
    dtype: str = "float32"  # storage dtype of the stores
    unit_clips: int = 8  # clips per dask work unit
    trust_weights: bool = False  # use weights files whose sha256 differs from the published one
    frame_rule: str = "official"  # which 80 frames (avvp_pipe.pipeline.decode.clip.FRAME_RULES)
    decoder: str = "auto"  # frame reader (pipeline/decode/readers.py); torchcodec + a cuda device is NVDEC

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ExtractUsageError(f"--precision {self.precision!r}: expected one of {', '.join(PRECISIONS)}")
        if self.frame_rule not in FRAME_RULE_TEXT:
            raise ExtractUsageError(f"--frame-rule {self.frame_rule!r}: expected one of {', '.join(FRAME_RULE_TEXT)}")
        if not self.extractors:
            raise ExtractUsageError("--extractors: expected at least one extractor name")
        resolve_device(self.device)  # a name torch cannot read fails here, before any work
        for name, value in (("--decode-workers", self.decode_workers), ("--queue", self.queue),
                            ("--unit-clips", self.unit_clips), ("--batch-size", self.batch_size or 1)):
            if value < 1:
                raise ExtractUsageError(f"{name}: expected a positive integer but got {value}")


@dataclass(frozen=True)
class ClipSet:
    """Which clips a store holds, which of them this run works on, and their files."""

    dataset: str
    store_ids: list[str]  # every store of the dataset is made for this list, in this order
    work_ids: list[str]  # the clips this run extracts (a subset of store_ids)
    paths: dict[str, str]  # id -> video file; ids without a file are "video file missing"
    splits: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)  # .mp4 files whose name is not an LLP id


def default_dataset(videos: str | os.PathLike) -> str:
    """The videos folder's parent name (``avvp-pipe synth OUT`` writes ``OUT/videos``), else 'llp'."""
    return Path(videos).resolve().parent.name or "llp"


def scan_videos(videos: str | os.PathLike) -> tuple[dict[str, str], list[str]]:
    """id -> path for every ``*.mp4`` in ``videos``; names that are not LLP ids are returned apart."""
    from avvp_pipe.pipeline.llp.annotations import clip_id

    folder = Path(videos).resolve()  # absolute: dask workers may run in another folder
    if not folder.is_dir():
        raise ExtractUsageError(f"--videos {folder}: expected a folder of <id>.mp4 clips but it does not exist")
    paths: dict[str, str] = {}
    ignored: list[str] = []
    for path in sorted(folder.glob(f"*{VIDEO_SUFFIX}")):
        try:
            cid = clip_id(path.name)
        except AvvpError:
            ignored.append(path.name)
            continue
        if cid in paths:
            raise AvvpError(f"{folder}: clip {cid} has two files ({Path(paths[cid]).name}, {path.name}); "
                            "expected one file per clip")
        paths[cid] = str(path)
    return paths, ignored


def read_clip_list(path: str | os.PathLike) -> list[str]:
    """Clip ids from a file with one clip name per line (# comments and blank lines skipped)."""
    from avvp_pipe.pipeline.llp.annotations import clip_id

    file = Path(path)
    if not file.is_file():
        raise ExtractUsageError(f"--clips {file}: expected a file with one clip name per line but it does not exist")
    ids: list[str] = []
    for line in file.read_text(encoding="utf-8").splitlines():
        name = line.split("#", 1)[0].strip()
        if name:
            ids.append(clip_id(name))
    return list(dict.fromkeys(ids))  # file order, duplicates once


def find_clips(videos: str | os.PathLike, *, dataset: str | None = None, annotations: str | os.PathLike | None = None,
               split: str | None = None, clips_file: str | os.PathLike | None = None) -> ClipSet:
    """The clip set of a run.

    With annotations, stores hold every annotated clip (so train/val/test runs share the
    dataset's stores) and the run works on ``split`` (default all). Without, stores hold
    every clip in ``videos`` plus any named in ``clips_file``. ``clips_file`` narrows the work.
    """
    if split is not None and annotations is None:
        raise ExtractUsageError("--split needs --annotations DIR (the official LLP CSV files)")
    paths, ignored = scan_videos(videos)
    wanted = read_clip_list(clips_file) if clips_file is not None else None
    splits: dict[str, str] = {}
    if annotations is not None:
        from avvp_pipe.pipeline.llp.annotations import load_annotations

        ann = load_annotations(annotations, require_dense=False)
        store_ids = list(ann.clips)
        splits = {cid: clip.split for cid, clip in ann.clips.items()}
        work = ann.split_ids(split or "all")
        if wanted is not None:
            for cid in wanted:
                ann.resolve(cid)  # an unknown clip is an error naming the annotations
            chosen = set(wanted)
            work = [cid for cid in work if cid in chosen]
    else:
        store_ids = sorted(set(paths) | set(wanted or ()))
        work = list(wanted) if wanted is not None else sorted(paths)
    return ClipSet(dataset=dataset or default_dataset(videos), store_ids=store_ids, work_ids=work,
                   paths={cid: paths[cid] for cid in store_ids if cid in paths}, splits=splits, ignored=ignored)


# ----------------------------------------------------------------------------------------
# Extractors, weights and stores


def resolve_names(names: Iterable[str] | None) -> list[str]:
    """Requested extractors (all registered ones when None), checked against the registry.

    A request is a name or ``name[key=value,...]`` (``clip_vit_l14[fps=1]``,
    ``timm:convnext_tiny``); pieces a plain ``split(",")`` cut inside brackets are rejoined.
    Options are checked here, so a bad one fails before any model is built.
    """
    import avvp_pipe.extractors  # noqa: F401  (registers the families)
    from avvp_pipe.extractors.base import resolve_options
    from avvp_pipe.extractors.registry import REGISTRY, get_spec, parse_request, split_requests

    if names is None:
        return sorted(REGISTRY)
    out = list(dict.fromkeys(split_requests(",".join(names))))
    unknown = []
    for request in out:
        name, options = parse_request(request)
        try:
            spec = get_spec(name)
        except AvvpError:
            unknown.append(name)
            continue
        resolve_options(spec, options)
    if unknown:
        raise ExtractUsageError(f"--extractors: unknown extractor(s) {', '.join(unknown)}; "
                                f"expected names from: {', '.join(sorted(REGISTRY))} or timm:<model_name>")
    if not out:
        raise ExtractUsageError("--extractors: expected at least one extractor name")
    return out


def check_weights(names: Sequence[str], weights_dir: str | None, random_init: bool) -> None:
    """Fail before any decoding when a package or weights file is missing, naming every one.

    "downloadable" weights pass here; they are fetched when the model is built, which also
    happens before decoding starts.
    """
    from avvp_pipe.extractors import registry, weights

    problems: list[str] = []
    for request in names:
        spec = registry.get_spec(request)  # a request's spec names the weights its options load
        avail = registry.availability(request, weights_dir)
        if avail["missing_packages"]:
            problems.append(f"{request} needs the Python package(s) {', '.join(avail['missing_packages'])} "
                            f"(pip install {' '.join(avail['missing_packages'])})")
        elif not random_init and avail["weights"] == "missing":
            problems.append(_missing_weights_text(spec, weights_dir, weights))
    if problems:
        tail = "" if random_init else " (or pass --random-init for a test run with untrained weights)"
        raise WeightsError("; ".join(problems) + tail)


def _missing_weights_text(spec: Any, weights_dir: str | None, weights: Any) -> str:
    """The weights module's own message (file, folder, how to get it); OpenL3's converter hint."""
    if spec.family == "openl3":
        from avvp_pipe.extractors import openl3

        opts = dict(spec.options)
        net = "audio" if spec.modality == "audio" else "image"
        _, path = weights.locate(spec.weights, weights_dir)
        return (f"OpenL3 weights {path} are missing (extractor {spec.name!r}); "
                f"{openl3.how_to_get(net, opts['input_repr'], opts['content_type'])}")
    if spec.weights.get("source") == "hf_hub":  # timm / transformers files: the HF cache or --weights-dir
        from avvp_pipe.extractors import hub

        return hub.missing_message(spec.name, spec.weights, weights_dir)
    try:
        weights.fetch(spec.name, spec.weights, weights_dir)
    except WeightsError as err:
        return str(err)
    return f"weights for {spec.name} are missing"  # pragma: no cover - fetch raises when missing


def build_extractors(names: Sequence[str], opts: ExtractOptions, device: str | None = None) -> dict[str, Extractor]:
    """Each requested model, built once (pretrained unless ``opts.random_init``)."""
    built = {name: create_extractor(name, opts, device or opts.device) for name in names}
    audio_path_16k(built)  # one decode feeds them all: their 16 kHz audio must agree
    return built


def audio_path_16k(extractors: Mapping[str, Extractor]) -> str:
    """How decode makes the 16 kHz audio for these extractors: their ``audio_path`` option.

    One decode feeds every extractor of a run, so two 16 kHz extractors asking for
    different paths are refused (run them in two ``extract`` runs).
    """
    from avvp_pipe.pipeline.decode.audio import DEFAULT_AUDIO_PATH

    paths = {str(ex.options.get("audio_path", DEFAULT_AUDIO_PATH)) for ex in extractors.values()
             if ex.spec.modality == "audio" and int(ex.spec.input.get("sample_rate", 0)) == 16000}
    if len(paths) > 1:
        raise ExtractUsageError(f"--extractors: 16 kHz extractors ask for different audio paths "
                                f"({', '.join(sorted(paths))}); expected one per extract run")
    return paths.pop() if paths else DEFAULT_AUDIO_PATH


def create_extractor(name: str, opts: ExtractOptions, device: str) -> Extractor:
    """One model as ``opts`` asks: weights from ``weights_dir`` (or the hub cache), random
    init only when asked, and files that differ from their published hash only with
    ``trust_weights``."""
    from avvp_pipe.extractors import create, weights
    from avvp_pipe.extractors.registry import parse_request

    base, options = parse_request(name)  # "clip_vit_l14[fps=1]" -> ("clip_vit_l14", {"fps": 1})
    with weights.trust_weights(opts.trust_weights):
        return create(base, device=device, weights_dir=opts.weights_dir, random_init=opts.random_init, **options)


def store_config(extractor: Extractor, precision: str, frame_rule: str = "official") -> dict[str, Any]:
    """The extractor's config plus the precision and, for visual extractors, the frame rule:
    all change the numbers, so all key the store. The aligned rule (the only one before
    ``--frame-rule`` existed) adds nothing, so the stores it made keep their keys."""
    cfg = {**extractor.config(), "precision": precision}
    if extractor.spec.modality != "audio" and frame_rule != "aligned":
        cfg["frame_rule"] = frame_rule
    return cfg


def decode_provenance(extractor: Extractor, opts: ExtractOptions) -> dict[str, Any]:
    """How decode fed this extractor, in words: the frame rule (visual) or the 16 kHz path (audio)."""
    rule = dict(DECODE_RULE)
    if extractor.spec.modality == "audio":
        from avvp_pipe.pipeline.decode.audio import DEFAULT_AUDIO_PATH

        if int(extractor.spec.input.get("sample_rate", 0)) == 16000:
            path = str(extractor.options.get("audio_path", DEFAULT_AUDIO_PATH))
            rule["audio_16k"] = {"audio_path": path, "rule": AUDIO_PATH_TEXT.get(path, path)}
        return rule
    rule["frame_rule"] = opts.frame_rule
    rule["rule"] = FRAME_RULE_TEXT[opts.frame_rule]
    rule["decoder"] = "{} on {}".format(*resolve_decoder(opts.decoder, opts.device))  # the same frames on cpu
    return rule


def store_spec(extractor: Extractor, clips: ClipSet, opts: ExtractOptions, videos: str | None = None):
    """The StoreSpec of one extractor: kind, shape, config and readable provenance."""
    from avvp_pipe.core.version import __version__
    from avvp_pipe.cache.store import StoreSpec

    from avvp_pipe.extractors.registry import weights_entry

    spec = extractor.spec
    loaded = weights_entry(spec, extractor.options)  # what the options load (CLAP's checkpoint)
    provenance = {
        "made_by": f"avvp-pipe {__version__} extract",
        "weights_identity": extractor.weights_identity,
        "weights_file": None if opts.random_init else loaded.get("file"),
        "weights_source": f"{loaded.get('library', '?')}: {loaded.get('id', '-')}",
        "random_init": opts.random_init,
        "precision": opts.precision,
        "device": opts.device,
        "decode": decode_provenance(extractor, opts),
        "videos": str(Path(videos).resolve()) if videos else None,
        "extractor_spec": spec.to_dict(),
    }
    if opts.random_init:
        provenance["warning"] = ("RANDOM-INIT weights (seeded with 0): not pretrained features; "
                                 "for tests and demos only")
    return StoreSpec(dataset=clips.dataset, extractor=spec.name, modality=spec.modality,
                     shape=tuple(extractor.out_shape),
                     config=store_config(extractor, opts.precision, opts.frame_rule),
                     kind="random-init" if opts.random_init else "extracted", dtype=opts.dtype,
                     provenance=provenance)


def open_stores(cache_root: str, clips: ClipSet, extractors: Mapping[str, Extractor], opts: ExtractOptions,
                videos: str | None = None) -> dict[str, FeatureStore]:
    """Open or create one store per extractor for the dataset's clip list."""
    from avvp_pipe.cache.store import open_or_create

    return {name: open_or_create(str(cache_root), store_spec(ex, clips, opts, videos), clips.store_ids,
                                 clips.splits)
            for name, ex in extractors.items()}


# ----------------------------------------------------------------------------------------
# Work description and results (plain data: they cross process boundaries under dask)


@dataclass(frozen=True)
class ClipTask:
    """One clip to decode and the extractors that still need it."""

    clip_id: str
    path: str
    names: tuple[str, ...]
    retry: tuple[str, ...] = ()  # extractors where this clip failed before (their record is replaced)


@dataclass
class RunResult:
    """What a run (or one dask unit) did: per extractor, clips written and failures."""

    done: dict[str, list[str]] = field(default_factory=dict)  # name -> clip ids written
    failed: dict[str, dict[str, str]] = field(default_factory=dict)  # name -> clip id -> reason
    decoded: int = 0
    frames: int = 0

    def merge(self, other: RunResult) -> None:
        for name, ids in other.done.items():
            self.done.setdefault(name, []).extend(ids)
        for name, reasons in other.failed.items():
            self.failed.setdefault(name, {}).update(reasons)
        self.decoded += other.decoded
        self.frames += other.frames


def plan_tasks(clips: ClipSet, stores: Mapping[str, FeatureStore]) -> tuple[list[ClipTask], dict[str, int]]:
    """Tasks for clips pending in at least one store, and per store how many were already done."""
    from avvp_pipe.cache.store import FAILED

    pending: dict[str, set[str]] = {}
    cached: dict[str, int] = {}
    failed_before: dict[str, set[str]] = {}
    for name, store in stores.items():
        todo = store.pending(clips.work_ids)
        pending[name] = set(todo)
        cached[name] = len(clips.work_ids) - len(todo)
        status = store.status(refresh=False)
        failed_before[name] = {cid for cid in todo if status[store.index[cid]] == FAILED}
    tasks = []
    for cid in clips.work_ids:
        names = tuple(n for n in stores if cid in pending[n])
        if names:
            retry = tuple(n for n in names if cid in failed_before[n])
            tasks.append(ClipTask(cid, clips.paths.get(cid, ""), names, retry))
    return tasks, cached


