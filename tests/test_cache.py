"""The feature cache's guarantees, each shown by trying to break it.

Round trips (float32 exact, float16 within half a unit in the last place), reads that touch
only the requested chunks, resume after ``kill -9`` mid-write, two writers at once, and the
refusals (ambiguous names, mixed datasets, unreal features, a changed clip list).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path

import numpy as np
import pytest
import zarr

from avvp_pipe.cache import (
    DONE,
    FAILED,
    PENDING,
    StoreSpec,
    UnrealFeaturesWarning,
    check_usable,
    find_store,
    list_stores,
    open_or_create,
    open_store,
    verify,
)
from avvp_pipe.core.errors import AvvpError, StoreError
from tests import cache_writer

REPO = Path(__file__).resolve().parents[1]
WRITER = Path(cache_writer.__file__)
SHAPE = (8, 16)
IDS = [f"vid{i:08d}" for i in range(12)]
SPLITS = {**{c: "train" for c in IDS[:6]}, **{c: "val" for c in IDS[6:9]}, **{c: "test" for c in IDS[9:]}}


def spec(shape=SHAPE, dtype="float32", kind="extracted", dataset="tiny", extractor="fake", **config) -> StoreSpec:
    return StoreSpec(dataset, extractor, "visual-2d", shape, {"layer": "pool", **config}, kind=kind, dtype=dtype)


def relu_like(n: int, shape=SHAPE, seed: int = 0) -> np.ndarray:
    """Non-negative features with a spread like post-ReLU activations."""
    return (np.abs(np.random.default_rng(seed).standard_normal((n, *shape))) * 3).astype(np.float32)


@pytest.fixture()
def store(tmp_path):
    return open_or_create(str(tmp_path), spec(), IDS, SPLITS)


def chunk_file(store, i: int) -> Path:
    return Path(store.url) / "features" / "c" / str(i) / "0" / "0"


# ---------------------------------------------------------------- round trips


def test_float32_round_trip_is_exact_in_any_order(store):
    data = relu_like(len(IDS))
    order = np.random.default_rng(1).permutation(len(IDS))
    for part in np.array_split(order, 3):  # three batches, shuffled clip order
        store.write_clips([IDS[i] for i in part], data[part])
    np.testing.assert_array_equal(store.read(IDS), data)
    pick = [IDS[i] for i in (9, 2, 5)]
    np.testing.assert_array_equal(store.read(pick), data[[9, 2, 5]])
    assert store.read().shape == (len(IDS), *SHAPE)  # all done clips by default


def test_float16_round_trip_within_half_ulp(tmp_path):
    shape = (80, 256)
    half = open_or_create(str(tmp_path), spec(shape, dtype="float16"), IDS)
    data = relu_like(len(IDS), shape, seed=3)
    half.write_clips(IDS, data)
    back = half.read(IDS)
    assert back.dtype == np.float32
    err = np.abs(back - data)
    # Round to nearest: relative error <= 2**-11 for normal halves, absolute <= 2**-25 below.
    assert (err <= 2.0**-11 * np.abs(data) + 2.0**-25).all()
    normal = np.abs(data) >= 2.0**-14
    max_rel = float((err[normal] / np.abs(data[normal])).max())
    print(f"float16 max relative error on ReLU-like features: {max_rel:.3e} (bound {2**-11:.3e})")
    assert 0 < max_rel <= 2.0**-11


# ---------------------------------------------------------------- partial reads


@pytest.fixture()
def chunk_reads(monkeypatch):
    """Every key read from local disk, by zarr or by the store's own chunk reader."""
    import avvp_pipe.cache.store as store_module

    seen: list[str] = []
    original = zarr.storage.LocalStore.get

    async def spy(self, key, *args, **kwargs):
        seen.append(key)
        return await original(self, key, *args, **kwargs)

    def spy_file(path):
        parts = Path(path).parts
        seen.append("/".join(parts[parts.index("features"):]))
        return read_file(path)

    read_file = store_module._read_chunk_file
    monkeypatch.setattr(zarr.storage.LocalStore, "get", spy)
    monkeypatch.setattr(store_module, "_read_chunk_file", spy_file)
    return seen


def feature_chunks_read(seen: list[str]) -> set[int]:
    return {int(k.split("/")[2]) for k in seen if k.startswith("features/c/")}


def test_reads_touch_only_the_requested_chunks(store, chunk_reads):
    data = relu_like(len(IDS))
    store.write_clips(IDS, data)
    reopened = open_store(store.url)

    chunk_reads.clear()
    np.testing.assert_array_equal(reopened.read([IDS[4]]), data[[4]])
    assert feature_chunks_read(chunk_reads) == {4}

    chunk_reads.clear()
    reopened.read([IDS[10], IDS[1], IDS[7]])
    assert feature_chunks_read(chunk_reads) == {1, 7, 10}

    val = [c for c in IDS if reopened.splits[c] == "val"]
    chunk_reads.clear()
    np.testing.assert_array_equal(reopened.read(val), data[6:9])
    assert feature_chunks_read(chunk_reads) == {6, 7, 8}

    chunk_reads.clear()
    lazy = reopened.to_dask([IDS[0], IDS[11]])
    assert feature_chunks_read(chunk_reads) == set()  # nothing read until compute
    np.testing.assert_array_equal(lazy.compute(), data[[0, 11]])
    assert feature_chunks_read(chunk_reads) == {0, 11}


def test_to_dask_is_lazy_one_chunk_per_clip(store):
    data = relu_like(len(IDS))
    store.write_clips(IDS[:5], data[:5])
    lazy = store.to_dask()  # done clips only
    assert lazy.shape == (5, *SHAPE)
    assert lazy.chunks[0] == (1,) * 5
    np.testing.assert_array_equal(lazy.mean(axis=1).compute(), data[:5].mean(axis=1))


def test_a_done_clip_without_its_chunk_file_is_an_error_not_zeros(store):
    store.write_clips(IDS[:2], relu_like(2))
    chunk_file(store, 1).unlink()
    with pytest.raises(StoreError, match=f"clip {IDS[1]} is marked done but its chunk .* is missing"):
        store.read(IDS[:2])
    chunk_file(store, 0).write_bytes(b"not zstd")
    with pytest.raises(StoreError, match=f"chunk of clip {IDS[0]} is unreadable"):
        store.read([IDS[0]])


def test_reading_an_incomplete_clip_names_it(store):
    store.write_clips(IDS[:2], relu_like(2))
    with pytest.raises(StoreError, match=IDS[3]):
        store.read([IDS[0], IDS[3]])
    with pytest.raises(StoreError, match=IDS[5]):
        store.to_dask([IDS[5]])
    with pytest.raises(StoreError, match="notinstore1"):
        store.write_clips(["notinstore1"], relu_like(1))


# ---------------------------------------------------------------- status


def test_status_and_progress_per_split(store):
    store.write_clips([IDS[0], IDS[1], IDS[6]], relu_like(3))
    store.mark_failed(IDS[9], "decoder hang")
    assert store.progress() == {
        "train": {"done": 2, "failed": 0, "total": 6},
        "val": {"done": 1, "failed": 0, "total": 3},
        "test": {"done": 0, "failed": 1, "total": 3},
        "all": {"done": 3, "failed": 1, "total": 12},
    }
    status = store.status()
    assert status[0] == DONE and status[9] == FAILED and status[2] == PENDING
    assert store.done_ids() == [IDS[0], IDS[1], IDS[6]]
    assert IDS[9] in store.pending() and IDS[0] not in store.pending()
    assert store.missing([IDS[0], "unknownclip"]) == ["unknownclip"]


def test_mark_failed_is_recorded_and_retried(store):
    store.mark_failed(IDS[2], "no video stream")
    assert store.failures() == {IDS[2]: "no video stream"}
    assert open_store(store.url).record(IDS[2])["reason"] == "no video stream"
    assert IDS[2] in store.pending()  # a rerun tries it again
    store.write_clips([IDS[2]], relu_like(1))
    assert store.failures() == {}
    assert store.status()[2] == DONE


def test_clear_makes_clips_pending_and_rewrite_replaces_data(store):
    store.write_clips(IDS, relu_like(len(IDS)))
    assert store.clear(IDS[:3]) == 3
    assert store.pending() == IDS[:3]
    with pytest.raises(StoreError, match=IDS[1]):
        store.read([IDS[1]])
    new = relu_like(3, seed=9)
    store.write_clips(IDS[:3], new)
    np.testing.assert_array_equal(store.read(IDS[:3]), new)
    assert store.clear() == len(IDS) and store.done_ids() == []


def test_write_refuses_wrong_shape_and_non_finite(tmp_path):
    half = open_or_create(str(tmp_path), spec(dtype="float16"), IDS)
    with pytest.raises(StoreError, match=r"expected features of shape \(1, 8, 16\)"):
        half.write_clips([IDS[0]], np.zeros((1, 8, 15), np.float32))
    bad = relu_like(2)
    bad[1, 0, 0] = np.nan
    with pytest.raises(StoreError, match=IDS[1]):
        half.write_clips(IDS[:2], bad)
    big = relu_like(1)
    big[0, 3, 3] = 1e6  # finite in float32, inf in float16
    with pytest.raises(StoreError, match=IDS[0]):
        half.write_clips(IDS[:1], big)
    assert half.done_ids() == []  # nothing of a refused batch counts as done


# ---------------------------------------------------------------- verify


def test_verify_resets_corrupt_non_finite_and_missing_chunks(store):
    data = relu_like(len(IDS))
    store.write_clips(IDS, data)
    chunk_file(store, 3).write_bytes(os.urandom(200))  # garbage on disk
    store.group["features"][5] = np.full(SHAPE, np.nan, np.float32)  # bypasses write_clips
    chunk_file(store, 8).unlink()  # would read back as zeros
    report = verify(open_store(store.url))
    assert report["checked"] == len(IDS)
    assert set(report["reset"]) == {IDS[3], IDS[5], IDS[8]}
    assert report["reset"][IDS[3]].startswith("unreadable")
    assert report["reset"][IDS[5]] == "non-finite values"
    assert report["reset"][IDS[8]].startswith("missing")
    assert store.pending() == [IDS[3], IDS[5], IDS[8]]
    good = [i for i in range(len(IDS)) if i not in (3, 5, 8)]
    np.testing.assert_array_equal(store.read([IDS[i] for i in good]), data[good])
    store.write_clips([IDS[i] for i in (8, 3, 5)], data[[8, 3, 5]])  # recomputed over the bad chunks
    np.testing.assert_array_equal(store.read(IDS), data)
    assert verify(store)["reset"] == {}  # nothing left to reset
    store.clear([IDS[0]])
    assert verify(store, IDS[:4])["checked"] == 3  # ids limit the check to done clips among them


def test_all_zero_clip_is_stored_not_reported_missing(store):
    store.write_clips([IDS[0]], np.zeros((1, *SHAPE), np.float32))
    assert chunk_file(store, 0).is_file()
    assert verify(store)["reset"] == {}


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_local_chunk_files_are_the_bytes_zarr_writes(tmp_path, dtype):
    """Local stores write chunk files themselves (speed); zarr must read them as its own."""
    import avvp_pipe.cache.store as store_module

    mine = open_or_create(str(tmp_path / "mine"), spec(dtype=dtype), IDS, SPLITS)
    data = relu_like(len(IDS))
    mine.write_clips([IDS[5], IDS[1], IDS[2]], data[[5, 1, 2]])  # out of order, two runs
    layout = store_module._local_row_chunks
    try:
        store_module._local_row_chunks = lambda array: None  # every write through zarr
        ref = open_or_create(str(tmp_path / "ref"), spec(dtype=dtype), IDS, SPLITS)
        ref.write_clips([IDS[5], IDS[1], IDS[2]], data[[5, 1, 2]])
        zarr_status = np.asarray(mine.group["status"][:])  # zarr reading our status chunks
    finally:
        store_module._local_row_chunks = layout
    for i in (1, 2, 5):
        assert chunk_file(mine, i).read_bytes() == chunk_file(ref, i).read_bytes()
        status = Path(mine.url) / "status" / "c" / str(i)
        assert status.read_bytes() == (Path(ref.url) / "status" / "c" / str(i)).read_bytes()
    assert not chunk_file(mine, 0).exists() and not list(Path(mine.url).rglob("*.partial"))
    np.testing.assert_array_equal(np.asarray(mine.group["features"][[1, 2, 5]]), data[[1, 2, 5]].astype(dtype))
    np.testing.assert_array_equal(zarr_status, [0, 1, 1, 0, 0, 1] + [0] * 6)


def test_a_read_only_handle_cannot_write(store):
    with pytest.raises(ValueError, match="read-only"):  # zarr's refusal, not our fast path writing anyway
        open_store(store.url, mode="r").write_clips([IDS[0]], relu_like(1))
    assert not chunk_file(store, 0).exists()


# ---------------------------------------------------------------- fsspec


def test_memory_filesystem_round_trip_and_listing():
    root = f"memory://avvp-cache-{uuid.uuid4().hex[:8]}"
    mem = open_or_create(root, spec(), IDS, SPLITS)
    data = relu_like(len(IDS))
    mem.write_clips(IDS[:7], data[:7])
    mem.mark_failed(IDS[7], "unreadable video")
    [listed] = list_stores(root)
    assert listed.url.startswith("memory://") and listed.name == mem.name
    np.testing.assert_array_equal(listed.read(IDS[:7]), data[:7])
    assert listed.failures() == {IDS[7]: "unreadable video"}
    assert listed.progress()["val"] == {"done": 1, "failed": 1, "total": 3}
    assert find_store(root, "tiny", "fake").url == listed.url
    assert listed.size_bytes() > 0


# ---------------------------------------------------------------- refusals


def test_find_store_names_and_ambiguity(tmp_path):
    root = str(tmp_path)
    a = open_or_create(root, spec(layer="pool"), IDS)
    b = open_or_create(root, spec(layer="fc"), IDS)
    with pytest.raises(StoreError, match="has 2 stores") as err:
        find_store(root, "tiny", "fake")
    assert a.name in str(err.value) and b.name in str(err.value)
    assert find_store(root, "tiny", f"fake@{a.key[:6]}").url == a.url
    assert find_store(root, "tiny", b.name).url == b.url
    with pytest.raises(StoreError, match=r"found: tiny/fake@"):
        find_store(root, "tiny", "other")
    with pytest.raises(StoreError, match="cache folder not found"):
        find_store(str(tmp_path / "nowhere"), "tiny", "fake")


def test_check_usable_refusals(tmp_path):
    root = str(tmp_path)
    real = open_or_create(root, spec(extractor="a"), IDS)
    other_ds = open_or_create(root, spec(extractor="b", dataset="other"), IDS)
    subset = open_or_create(root, spec(extractor="c"), IDS[:6])  # same name, other clip list
    rand = open_or_create(root, spec(extractor="d", kind="random-init"), IDS)
    sim = open_or_create(root, spec(extractor="e", kind="simulated"), IDS)
    check_usable([real])
    with pytest.raises(StoreError, match="different datasets"):
        check_usable([real, other_ds])
    with pytest.raises(StoreError, match=r"dataset 'tiny' hold different clip lists: a@\w+ 12 clips, c@\w+ 6 clips"):
        check_usable([real, subset])  # one dataset name, other clips: says what differs (issue 13)
    with pytest.raises(StoreError, match="--allow-random-init"):
        check_usable([real, rand])
    with pytest.raises(StoreError, match="--allow-simulated"):
        check_usable([real, sim])
    check_usable([real, rand, sim], allow_random_init=True, allow_simulated=True)
    sim.write_clips(IDS[:1], relu_like(1))
    with pytest.warns(UnrealFeaturesWarning, match="simulated"):
        sim.read(IDS[:1])


def test_open_or_create_refuses_a_changed_store(tmp_path):
    root = str(tmp_path)
    first = open_or_create(root, spec(), IDS)
    first.write_clips(IDS[:1], relu_like(1))
    again = open_or_create(root, spec(), IDS)
    assert again.url == first.url and again.done_ids() == IDS[:1]  # a rerun finds its store
    with pytest.raises(StoreError, match="different clip list"):
        open_or_create(root, spec(), IDS[:-1])
    with pytest.raises(StoreError, match="expected clips of shape"):
        open_or_create(root, spec(shape=(8, 32)), IDS)
    with pytest.raises(StoreError, match="random-init"):
        open_or_create(root, spec(kind="random-init"), IDS)
    with pytest.raises(AvvpError, match="duplicate"):
        open_or_create(root, spec(layer="x"), IDS + IDS[:1])
    assert open_or_create(root, spec(dtype="float16"), IDS).url != first.url  # dtype is in the key


# ---------------------------------------------------------------- processes


def run_writer(root: Path, *args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(WRITER), str(root), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)


def wrote_indices(stdout: str) -> list[int]:
    return [int(i) for line in stdout.splitlines() if line.startswith("wrote ") for i in line.split()[1:]]


def check_done_clips_exact(url: str) -> list[int]:
    """Every clip marked done holds exactly its expected data; returns the done indices."""
    store = open_store(url)
    done = [store.index[c] for c in store.done_ids()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UnrealFeaturesWarning)
        for i in done:
            np.testing.assert_array_equal(store.read([store.clip_ids[i]])[0], cache_writer.expected_clip(i),
                                          err_msg=f"clip {i} is marked done but holds other data")
    return done


def test_sigkill_mid_write_then_resume(tmp_path):
    n = 48
    args = ["--clips", str(n), "--batch", "3"]
    url = str(tmp_path / cache_writer.DATASET / cache_writer.EXTRACTOR / f"{cache_writer.spec().key()}.zarr")

    # 1. Killed exactly between a batch's feature chunks and its status: data on disk, not done.
    proc = run_writer(tmp_path, *args, "--hold-before-status", "60")
    assert proc.stdout.readline() == f"pending {n}\n"
    held = [int(i) for i in proc.stdout.readline().split()[1:]]
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert held == [0, 1, 2]
    store = open_store(url)
    for i in held:
        np.testing.assert_array_equal(store.group["features"][i], cache_writer.expected_clip(i))
    assert check_done_clips_exact(url) == []  # complete data, yet never read as done

    # 2. Killed at random moments, three times.
    rng = random.Random(1234)
    done: list[int] = []
    evidence = {"partial_files": 0, "data_without_status": 0}
    # Paced so the 16 batches take >= 16 x 0.08 s > the 0.9 s the three kills can wait in all:
    # on a fast machine an unpaced writer finished before the last kill (CI, stop 8).
    for delay in (rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3), rng.uniform(0.05, 0.3)):
        proc = run_writer(tmp_path, *args, "--pace", "0.08")
        first = proc.stdout.readline()
        assert first.startswith("pending "), first + proc.stderr.read()
        assert int(first.split()[1]) == n - len(done)  # a rerun writes only pending clips
        time.sleep(delay)
        assert proc.poll() is None, "writer finished before the kill; make the test store bigger"
        proc.send_signal(signal.SIGKILL)
        out, _ = proc.communicate()
        assert proc.returncode == -signal.SIGKILL
        now = check_done_clips_exact(url)
        assert set(done) <= set(now)
        assert set(wrote_indices(out)) <= set(now)  # what it reported written survived
        assert not set(wrote_indices(out)) & set(done)  # and it skipped what was done
        evidence["partial_files"] += len(list(Path(url).rglob("*.partial")))
        evidence["data_without_status"] += len({int(p.parts[-3]) for p in Path(url, "features", "c").glob("*/0/0")}
                                               - set(now))
        done = now
    print(f"random kills left: {evidence}; done after them: {len(done)}/{n}")
    assert 0 < len(done) < n

    # 3. A full run writes exactly the rest.
    proc = run_writer(tmp_path, *args)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == f"pending {n - len(done)}"
    assert sorted(wrote_indices(out)) == sorted(set(range(n)) - set(done))
    assert sorted(check_done_clips_exact(url)) == list(range(n))


def test_two_writers_at_once_share_one_store(tmp_path):
    n = 40
    for round_ in range(2):  # both create the store at the same instant, twice
        root = tmp_path / f"round{round_}"
        start = f"{time.time() + 2.5:.3f}"
        first = run_writer(root, "--clips", str(n), "--last", "27", "--start-at", start)
        second = run_writer(root, "--clips", str(n), "--first", "12", "--reverse", "--start-at", start)
        results = [proc.communicate(timeout=120) for proc in (first, second)]
        for proc, (out, err) in zip((first, second), results):
            assert proc.returncode == 0 and "Traceback" not in err, err
            assert out.rstrip().endswith("finished")
        [store] = list_stores(str(root))
        assert sorted(check_done_clips_exact(store.url)) == list(range(n))
        assert store.failures() == {}


def test_many_threads_creating_one_store_at_once(tmp_path):
    """The creation race in-process, where it is frequent: zarr's group creation is
    check-then-write, so without retries some creators failed with ContainsGroupError."""
    import threading

    for round_ in range(5):
        root = str(tmp_path / f"r{round_}")
        barrier = threading.Barrier(8)
        errors: list[BaseException] = []
        urls: list[str] = []

        def create() -> None:
            barrier.wait()
            try:
                urls.append(open_or_create(root, spec(), IDS, SPLITS).url)
            except BaseException as err:  # noqa: BLE001 - collected and asserted below
                errors.append(err)

        threads = [threading.Thread(target=create) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and len(set(urls)) == 1 and len(urls) == 8
        assert open_store(urls[0]).clip_ids == IDS
