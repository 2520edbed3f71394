"""Simulated feature stores at LLP scale, without video (``avvp-pipe synth-features``).

Training, selection and their benchmarks need stores for 11,849 clips; real features cannot
be made here. A simulated extractor ``e`` turns each clip's per-second truth into features
through a small latent space (``LATENT_DIM``) shared by all extractors of both modalities:

    h_s = g(q) * sum_{c active in second s} p_{e,c}  +  OFFSET * o  +  NOISE * n_s    (latent, per second)
    h_f = h_s(f) + JITTER * j_f                                                       (per frame)
    x_f = ReLU(W_e h_f), rounded to multiples of RESOLUTION                           (features, D dims)

- ``p_{e,c} = sqrt(q) z_c + sqrt(1 - q) u_{e,c}``: ``z_c`` is a class prototype shared by every
  extractor, ``u_{e,c}`` one private to ``e`` (both unit variance per latent dim, so ``p`` has
  the same norm at every q). The shared fraction ``q`` says how well the extractor's class
  geometry agrees with the other modality's, which is what fusion exploits.
- ``g(q)`` is the class signal against unit per-second noise ``n_s``: it grows linearly
  from ``SIGNAL_MIN`` to ``SIGNAL_MAX``, calibrated so that nearest-class-centroid accuracy on
  single-event seconds goes from near chance (q=0) through clearly-above-chance (q=0.3) to
  good but not perfect (q=0.9); ``benchmarks/synth_features.py --calibrate`` measures it.
- ``o`` is a per-clip nuisance (recording conditions), ``j_f`` a small per-frame jitter (the
  80 frames of a 2D stream are not 8 copies of a second), ``W_e`` a fixed random map into the
  extractor's D dims; the ReLU makes features non-negative, like CNN embeddings.

One ``QUALITY`` knob in [0, 1] sets both alignment and signal, so a set of simulated
extractors has a quality order known by construction: stage three (ranking pairings by a
trained model's F1) must recover it.

Determinism: a clip's features depend only on (seed, extractor name, clip id) and the
clip's truth (itself a function of (seed, clip id) and the annotations): every clip draws its
noise from its own generator. So block size, resume after a kill, or ``--overwrite`` of some
clips regenerate identical bytes. The work is still vectorised per block of clips: one
(n*T, L) @ (L, D) float32 matmul, and the compressed writes of one block overlap the
computation of the next (zstd releases the GIL).

Rounding to ``RESOLUTION`` (2^-5, far below the simulated noise) is part of the model: it
makes the chunks compress ~2x better and write ~1.6x faster, which is most of the run time.

Train clips get per-second truth consistent with their weak labels (each label is active in
at least one modality, nothing else is); val/test clips use their dense annotations. The
truth of every clip is written beside the stores (``simulated_truth.npz``).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass

import numpy as np

from avvp_pipe.cache.store import DONE, FeatureStore, StoreSpec, open_or_create
from avvp_pipe.core.errors import AvvpError, StoreError
from avvp_pipe.core.io import atomic_write_url
from avvp_pipe.pipeline.llp.annotations import NUM_CLASSES, SECONDS, Annotations
from avvp_pipe.core.progress import Progress

log = logging.getLogger(__name__)

MODALITY_FRAMES = {"audio": 10, "visual-2d": 80, "visual-3d": 10}
LATENT_DIM = 64
#: Class-signal scale g(q) = SIGNAL_MIN + (SIGNAL_MAX - SIGNAL_MIN) * q, against unit noise.
SIGNAL_MIN, SIGNAL_MAX = 0.1, 0.7
OFFSET = 0.5  # per-clip nuisance, std per latent dim
NOISE = 1.0  # per-second noise, std per latent dim
JITTER = 0.3  # per-frame noise on top of the second's, std per latent dim
RESOLUTION = 2.0**-5  # features are multiples of this (exact in float16 and float32)
#: Version of the generative model; part of every store key, so a change never mixes stores.
MODEL_VERSION = "v2"
#: How a train clip's weak label shows up: audio-visual, audio only, visual only.
#: Proportions in the spirit of LLP's test split (audio-visual most common).
TRAIN_MODALITY_P = (0.6, 0.25, 0.15)
#: Bytes of float32 features computed per block; bounds memory (a few blocks are in flight).
BLOCK_BYTES = 32 * 2**20
FORMAT_HELP = "NAME:MODALITY:DIM:QUALITY, e.g. sim_vggish:audio:128:0.8"

#: ``--preset llp``: one simulated stand-in per candidate extractor of the design card,
#: with LLP's shapes and distinct qualities (the ``sim_`` prefix keeps them from being
#: mistaken for real extractors).
PRESETS: dict[str, tuple[str, ...]] = {
    "llp": (
        "sim_vggish:audio:128:0.5",
        "sim_openl3_audio:audio:512:0.7",
        "sim_resnet152:visual-2d:2048:0.8",
        "sim_vgg19_bn:visual-2d:4096:0.6",
        "sim_r2plus1d_18:visual-3d:512:0.9",
    ),
}


@dataclass(frozen=True)
class SimulatedExtractor:
    """``NAME:MODALITY:DIM:QUALITY`` from the command line."""

    name: str
    modality: str
    dim: int
    quality: float

    @classmethod
    def parse(cls, text: str) -> SimulatedExtractor:
        parts = text.split(":")
        if len(parts) != 4:
            raise AvvpError(f"--extractor {text!r}: expected {FORMAT_HELP}")
        name, modality, dim, quality = parts
        if not name:
            raise AvvpError(f"--extractor {text!r}: expected a non-empty NAME ({FORMAT_HELP})")
        if modality not in MODALITY_FRAMES:
            raise AvvpError(f"--extractor {text!r}: expected MODALITY one of {', '.join(MODALITY_FRAMES)} "
                            f"but got {modality!r}")
        try:
            dim_i, quality_f = int(dim), float(quality)
        except ValueError:
            raise AvvpError(f"--extractor {text!r}: expected an integer DIM and a number QUALITY "
                            f"({FORMAT_HELP})") from None
        if dim_i < 1 or not 0.0 <= quality_f <= 1.0:
            raise AvvpError(f"--extractor {text!r}: expected DIM >= 1 and 0 <= QUALITY <= 1")
        return cls(name, modality, dim_i, quality_f)

    @property
    def frames(self) -> int:
        return MODALITY_FRAMES[self.modality]

    @property
    def alignment(self) -> float:
        """Share of the class prototype's variance that is common to all extractors."""
        return self.quality

    @property
    def signal(self) -> float:
        """g(q): scale of the class signal against unit per-second latent noise."""
        return SIGNAL_MIN + (SIGNAL_MAX - SIGNAL_MIN) * self.quality

    @property
    def snr(self) -> float:
        """Distance of two single-class prototypes over the per-second noise std (a d')."""
        return self.signal * float(np.sqrt(2 * LATENT_DIM)) / float(np.hypot(NOISE, OFFSET))


def parse_extractors(texts: Sequence[str], preset: str | None = None) -> list[SimulatedExtractor]:
    """The preset's extractors (if any) then ``texts``; names must be unique."""
    if preset is not None and preset not in PRESETS:
        raise AvvpError(f"--preset {preset!r}: expected one of {', '.join(PRESETS)}")
    specs = [SimulatedExtractor.parse(t) for t in (*PRESETS.get(preset or "", ()), *texts)]
    _check_names(specs)
    return specs


def _check_names(extractors: Sequence[SimulatedExtractor]) -> None:
    if not extractors:
        raise AvvpError(f"synth-features needs at least one --extractor {FORMAT_HELP} (or --preset llp)")
    names = [e.name for e in extractors]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise AvvpError(f"--extractor names must be unique but {', '.join(duplicates)} is given twice")


def _seed(*parts: object) -> int:
    digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little")


def train_truth(labels: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Plausible (2, 25, 10) audio/visual truth for a clip known only by its weak labels."""
    truth = np.zeros((2, NUM_CLASSES, SECONDS), dtype=np.uint8)
    for cls in labels:
        which = rng.choice(3, p=TRAIN_MODALITY_P)
        modalities = (0, 1) if which == 0 else (0,) if which == 1 else (1,)
        for m in modalities:
            if rng.random() < 0.5:
                truth[m, cls, :] = 1  # LLP events often span the whole clip
            else:
                length = int(rng.integers(2, SECONDS + 1))
                start = int(rng.integers(0, SECONDS - length + 1))
                truth[m, cls, start : start + length] = 1
    return truth


def clip_truth(ann: Annotations, seed: int) -> tuple[list[str], np.ndarray]:
    """(ids, (N, 2, 25, 10) uint8): dense truth for val/test, simulated truth for train.

    A val/test clip without any dense row (none in LLP) is simulated like a train clip.
    """
    ids = ann.split_ids("all")
    audio = ann.dense(ids, "audio")
    visual = ann.dense(ids, "visual")
    truth = np.stack([audio, visual], axis=1)  # (N, 2, 25, 10)
    for row, cid in enumerate(ids):
        clip = ann.clips[cid]
        if clip.split == "train" or not truth[row].any():
            truth[row] = train_truth(clip.labels, np.random.default_rng(_seed(seed, "truth", cid)))
    return ids, truth


class _Simulator:
    """The fixed randomness of one simulated extractor, and its block-wise generator."""

    def __init__(self, ext: SimulatedExtractor, shared: np.ndarray, seed: int):
        rng = np.random.default_rng(_seed(seed, "extractor", ext.name))
        self.ext = ext
        self.seed = seed
        private = rng.standard_normal((NUM_CLASSES, LATENT_DIM))  # (25, L)
        q = ext.alignment
        prototypes = np.sqrt(q) * shared + np.sqrt(1.0 - q) * private  # (25, L), unit variance per dim
        self.prototypes = (ext.signal * prototypes).astype(np.float32)  # (25, L)
        projection = rng.standard_normal((LATENT_DIM, ext.dim)) / np.sqrt(LATENT_DIM)  # (L, D)
        # Folding 1/RESOLUTION into the map saves one pass over the (n, T, D) output.
        self.scaled_projection = (projection / RESOLUTION).astype(np.float32)  # (L, D)

    def clip_noise(self, cid: str) -> np.ndarray:
        """(1 + 10 + T, L) standard normals: clip offset, per-second noise, per-frame jitter.

        Drawn from a generator of the clip's own, so a clip's features never depend on
        which other clips share its block.
        """
        rng = np.random.default_rng(_seed(self.seed, "features", self.ext.name, cid))
        return rng.standard_normal((1 + SECONDS + self.ext.frames, LATENT_DIM), dtype=np.float32)

    def latent(self, cids: Sequence[str], active: np.ndarray) -> np.ndarray:
        """active: (n, 25, 10) truth of this extractor's modality -> (n, T, L) float32."""
        n, T, L = len(cids), self.ext.frames, LATENT_DIM
        noise = np.stack([self.clip_noise(cid) for cid in cids])  # (n, 1 + 10 + T, L)
        offset, second, frame = noise[:, :1], noise[:, 1 : 1 + SECONDS], noise[:, 1 + SECONDS :]
        signal = active.transpose(0, 2, 1).astype(np.float32) @ self.prototypes  # (n, 10, L)
        per_second = signal + OFFSET * offset + NOISE * second  # (n, 10, L)
        per_frame = per_second[:, :, None, :] + JITTER * frame.reshape(n, SECONDS, T // SECONDS, L)  # (n, 10, T/10, L)
        return per_frame.reshape(n, T, L)

    def features(self, cids: Sequence[str], active: np.ndarray) -> np.ndarray:
        """active: (n, 25, 10) -> (n, T, D) float32, ReLU'd and rounded to RESOLUTION."""
        latent = self.latent(cids, active)  # (n, T, L)
        n, T, L = latent.shape
        out = latent.reshape(n * T, L) @ self.scaled_projection  # (n*T, D), in RESOLUTION units
        np.maximum(out, 0.0, out=out)
        np.rint(out, out=out)
        out *= RESOLUTION
        return out.reshape(n, T, self.ext.dim)


def block_clips(ext: SimulatedExtractor, block: int) -> int:
    """Clips per computed block: at most ``block``, and at most BLOCK_BYTES of float32."""
    per_clip = ext.frames * ext.dim * 4
    return max(1, min(block, BLOCK_BYTES // per_clip))


def _store_spec(dataset: str, ext: SimulatedExtractor, seed: int, dtype: str, truth_file: str) -> StoreSpec:
    model = {"version": MODEL_VERSION, "latent_dim": LATENT_DIM, "signal": [SIGNAL_MIN, SIGNAL_MAX],
             "offset": OFFSET, "noise": NOISE, "jitter": JITTER, "resolution": RESOLUTION}
    return StoreSpec(
        dataset=dataset, extractor=ext.name, modality=ext.modality, shape=(ext.frames, ext.dim),
        config={"simulated": asdict(ext), "seed": seed, "model": model},
        kind="simulated", dtype=dtype,
        provenance={"simulated_by": "avvp-pipe synth-features", "quality": ext.quality,
                    "truth": truth_file},
    )  # fmt: skip


def synthesize_features(
    root: str,
    dataset: str,
    ann: Annotations,
    extractors: Sequence[SimulatedExtractor],
    *,
    seed: int = 0,
    dtype: str = "float32",
    block: int = 256,
    overwrite: bool = False,
    progress: bool = True,
    writers: int = 2,
    workers: int = 1,
    limit: int | None = None,
) -> dict:
    """Write one simulated store per extractor for every clip of ``ann``; resumable.

    ``block`` caps the clips computed (and written) together; ``writers`` is how many blocks
    a process compresses and writes at once while it computes the next. ``workers`` > 1
    splits a store's pending clips into that many contiguous parts, each generated and
    written by its own process (compression is most of the time; features depend only on
    the clip, so the split changes no byte). Runs under ``PARALLEL_MIN_CLIPS`` pending clips
    stay in this process, where starting workers would cost more than it saves. ``limit``
    stops each store after that many newly written clips (a partial run). Worker processes
    are spawned, so a script calling this with ``workers`` > 1 needs the usual
    ``if __name__ == "__main__":`` guard.

    Returns ``{"dataset", "clips", "truth", "stores": [{"name", "url", "extractor",
    "quality", "written", "already_done", "seconds"}]}``.
    """
    _check_names(extractors)
    if block < 1 or writers < 1 or workers < 1:
        raise AvvpError(f"expected block, writers and workers >= 1 but got {block}, {writers}, {workers}")
    if limit is not None and limit < 0:
        raise AvvpError(f"--limit: expected a number >= 0 but got {limit}")
    ids, truth = clip_truth(ann, seed)
    splits = {cid: ann.clips[cid].split for cid in ids}
    truth_file = truth_path(root, dataset)
    _write_truth(truth_file, ids, truth, seed)
    summary: dict = {"dataset": dataset, "clips": len(ids), "truth": truth_file, "stores": []}
    for ext in extractors:
        store = open_or_create(root, _store_spec(dataset, ext, seed, dtype, truth_file), ids, splits)
        if overwrite:
            store.clear()
        started = time.perf_counter()
        status = store.status()
        done_before = int((status == DONE).sum())
        rows = np.flatnonzero(status != DONE)[:limit]  # pending or failed rows, in store order
        job = _Job(store.url, ext, seed, block_clips(ext, block), writers)
        active = truth[:, 0 if ext.modality == "audio" else 1]  # (N, 25, 10)
        with Progress(len(rows), f"synth-features {ext.name}", unit="clips", enabled=progress) as bar:
            if workers > 1 and len(rows) >= PARALLEL_MIN_CLIPS:
                _run_processes(job, ids, active, rows, workers, bar)
            else:
                job.run(store, [ids[i] for i in rows], active[rows], bar.update)
        summary["stores"].append({
            "name": store.name, "url": store.url, "extractor": ext.name, "quality": ext.quality,
            "written": len(rows), "already_done": done_before,
            "seconds": round(time.perf_counter() - started, 2),
        })  # fmt: skip
    return summary


#: Fewer pending clips than this are written in-process even when ``workers`` > 1.
PARALLEL_MIN_CLIPS = 1000


def _shared_prototypes(seed: int) -> np.ndarray:
    """(25, L) class prototypes common to every extractor of both modalities."""
    return np.random.default_rng(_seed(seed, "shared")).standard_normal((NUM_CLASSES, LATENT_DIM))


@dataclass(frozen=True)
class _Job:
    """What one process needs to fill part of a store (picklable for worker processes)."""

    url: str
    ext: SimulatedExtractor
    seed: int
    block: int
    writers: int

    def run(self, store: FeatureStore, cids: Sequence[str], active: np.ndarray,
            on_written: Callable[[int], object]) -> None:
        """Compute and write ``cids`` (truth ``active``, (n, 25, 10)) block by block."""
        sim = _Simulator(self.ext, _shared_prototypes(self.seed), self.seed)
        blocks = ((cids[s : s + self.block], sim.features(cids[s : s + self.block], active[s : s + self.block]))
                  for s in range(0, len(cids), self.block))  # fmt: skip
        _write_overlapped(store, blocks, self.writers, on_written)


def _write_overlapped(store: FeatureStore, blocks: Iterator[tuple[Sequence[str], np.ndarray]], writers: int,
                      on_written: Callable[[int], object]) -> None:
    """Write blocks on ``writers`` threads while the caller's thread computes the next one.

    At most ``writers`` blocks wait or are being written, which bounds memory. A failed
    write stops the run with its error; blocks already written stay done (resumable).
    """
    in_flight: deque[tuple[Future, int]] = deque()
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="synth-write") as pool:
        try:
            for cids, feats in blocks:
                while len(in_flight) >= writers:
                    _finish(in_flight.popleft(), on_written)
                in_flight.append((pool.submit(store.write_clips, list(cids), feats), len(cids)))
            while in_flight:
                _finish(in_flight.popleft(), on_written)
        except BaseException:
            for future, _ in in_flight:
                future.cancel()
            raise


def _finish(item: tuple[Future, int], on_written: Callable[[int], object]) -> None:
    future, n = item
    future.result()
    on_written(n)


def _run_processes(job: _Job, ids: Sequence[str], active: np.ndarray, rows: np.ndarray, workers: int,
                   bar: Progress) -> None:
    """Split ``rows`` into ``workers`` contiguous parts, one process each; relay progress.

    Processes are spawned (not forked): zarr keeps an event-loop thread that a fork would
    copy in an unknown state. A worker's failure stops the others and is raised here with
    its message; everything written before stays done.
    """
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    messages = ctx.Queue()
    procs = []
    for part in np.array_split(rows, workers):
        if len(part):
            args = (job, [ids[i] for i in part], active[part], messages)
            procs.append(ctx.Process(target=_worker, args=args, name=f"synth-features-{len(procs)}"))
    for proc in procs:
        proc.start()
    finished, error = 0, None
    try:
        while finished < len(procs) and error is None:
            try:
                kind, value = messages.get(timeout=1.0)
            except queue_mod.Empty:
                dead = [p for p in procs if p.exitcode not in (None, 0)]
                if dead:
                    error = f"worker {dead[0].name} died with exit code {dead[0].exitcode}"
                continue
            if kind == "written":
                bar.update(value)
            elif kind == "done":
                finished += 1
            else:
                error = value
    finally:
        for proc in procs:
            if error is not None and proc.is_alive():
                proc.terminate()
            while proc.is_alive():  # keep the queue drained: a child exits only once its messages are out
                _drain(messages)
                proc.join(0.1)
    if error is not None:
        raise StoreError(f"{job.url}: synth-features worker failed: {error}; rerun to resume")


def _drain(messages) -> None:
    import queue as queue_mod

    try:
        while True:
            messages.get_nowait()
    except queue_mod.Empty:
        pass


def _worker(job: _Job, cids: list[str], active: np.ndarray, messages) -> None:
    """Process entry: fill ``cids`` of the store at ``job.url``, reporting written clips."""
    from avvp_pipe.cache.store import open_store

    try:
        try:  # one BLAS thread per process: the processes already use the cores
            from threadpoolctl import threadpool_limits

            threadpool_limits(1)
        except ImportError:
            pass
        job.run(open_store(job.url), cids, active, lambda n: messages.put(("written", n)))
        messages.put(("done", len(cids)))
    except KeyboardInterrupt:
        messages.put(("error", "interrupted"))
    except Exception as err:  # noqa: BLE001 - relayed to the parent, which raises it
        messages.put(("error", f"{type(err).__name__}: {err}"))


def truth_path(root: str, dataset: str) -> str:
    return f"{str(root).rstrip('/')}/{dataset}/simulated_truth.npz"


def load_truth(root: str, dataset: str, seed: int | None = None) -> tuple[list[str], np.ndarray]:
    """(ids, (N, 2, 25, 10) uint8 audio/visual truth) as written by :func:`synthesize_features`.

    The file holds the truth of the latest run for ``dataset`` (it depends on the seed);
    give ``seed`` to make sure it is the truth of the stores at hand.
    """
    import fsspec

    url = truth_path(root, dataset)
    try:
        with fsspec.open(url, "rb") as handle:
            data = np.load(io.BytesIO(handle.read()), allow_pickle=False)
    except FileNotFoundError:
        raise AvvpError(f"{url}: no simulated truth here; run `avvp-pipe synth-features` first") from None
    if seed is not None and int(data["seed"]) != seed:
        raise AvvpError(f"{url}: expected the truth of seed {seed} but the file holds seed {int(data['seed'])}; "
                        f"rerun `avvp-pipe synth-features --seed {seed}` for this dataset")
    return data["video_ids"].tolist(), np.stack([data["audio"], data["visual"]], axis=1)


def _write_truth(url: str, ids: list[str], truth: np.ndarray, seed: int) -> None:
    """Per-second truth of every clip (train included), atomically, for diagnostics."""
    buf = io.BytesIO()
    np.savez_compressed(buf, video_ids=np.array(ids), audio=truth[:, 0], visual=truth[:, 1], seed=np.int64(seed))
    atomic_write_url(url, buf.getvalue())
