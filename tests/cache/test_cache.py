"""The HDF5 feature cache: layout, reading, resume after a real kill -9, locking, fingerprints, pickling, rows."""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.cache.reader import FeatureCache, cache_rows, describe_cache, lock_holder
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.errors import ActrecError
from tests.helpers import PROJECT_ROOT

FINGERPRINT = {"backbone": "resnet18", "img_dim": 32}
CLASSES = ["Apply", "Brush"]
DIM = 8


def video_features(index: int, flip: bool = False) -> np.ndarray:
    """Deterministic features of synthetic video ``index`` (lengths vary from 1 to 37 frames)."""
    rng = np.random.default_rng(2 * index + flip)
    return rng.standard_normal((1 + index % 37, DIM)).astype(np.float32)


def as_stored(x: np.ndarray) -> np.ndarray:
    return x.astype(np.float16).astype(np.float32)


def write_videos(path, indices, flip=False, **kwargs):
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM, flip=flip, **kwargs) as writer:
        for i in indices:
            writer.add(f"Apply/v_{i}", i % 2, video_features(i), video_features(i, True) if flip else None)


def test_layout_attributes_and_reading(tmp_path):
    path = tmp_path / "c.h5"
    write_videos(path, [3, 40, 5], flip=True, config={"embed": {"img_dim": 32}})
    with h5py.File(path, "r") as f:
        assert f["features"].shape == (4 + 4 + 6, DIM) and f["features"].dtype == np.float16
        assert f["features"].maxshape == (None, DIM) and 256 <= f["features"].chunks[0] <= 1024
        assert f["features_flip"].shape == f["features"].shape
        assert int(f["index/count"][0]) == 3 and list(f["index/offsets"][:]) == [0, 4, 8]
        assert json.loads(f.attrs["fingerprint"]) == FINGERPRINT
        assert json.loads(f.attrs["class_names"]) == CLASSES
        assert json.loads(f.attrs["config"]) == {"embed": {"img_dim": 32}}
        assert f.attrs["format_version"] == 1 and f.attrs["dim"] == DIM and f.attrs["created"]

    cache = FeatureCache(path, expected_fingerprint=FINGERPRINT)
    assert cache.names == ["Apply/v_3", "Apply/v_40", "Apply/v_5"]
    assert list(cache.labels) == [1, 0, 1] and list(cache.lengths) == [4, 4, 6] and cache.has_flip
    assert cache.dim == DIM and cache.class_names == CLASSES and cache.failures == {}
    i = cache.index_of("Apply/v_5")
    np.testing.assert_array_equal(cache.sequence(i), as_stored(video_features(5)))
    np.testing.assert_array_equal(cache.sequence(i, flip=True), as_stored(video_features(5, True)))
    assert cache.sequence(i).dtype == np.float32
    for picks in ([5, 0, 0, 2], [0, 5], [3, 3, 3, 3, 3]):  # unordered with repeats, sparse, one row
        np.testing.assert_array_equal(cache.frames(i, np.array(picks)), as_stored(video_features(5))[picks])
    with pytest.raises(IndexError):
        cache.frames(i, np.array([6]))
    with pytest.raises(ActrecError, match="not in"):
        cache.index_of("Apply/v_99")

    cache.load_all()
    np.testing.assert_array_equal(cache.frames(i, np.array([5, 1]), flip=True),
                                  as_stored(video_features(5, True))[[5, 1]])
    np.testing.assert_array_equal(cache.sequence(0), as_stored(video_features(3)))


def test_float32_storage_and_no_flip(tmp_path):
    write_videos(tmp_path / "c.h5", [1, 2], dtype="float32")
    cache = FeatureCache(tmp_path / "c.h5")
    np.testing.assert_array_equal(cache.sequence(1), video_features(2))
    assert not cache.has_flip
    with pytest.raises(ActrecError, match="no flip features"):
        cache.sequence(0, flip=True)


def test_resume_appends_and_keeps_earlier_videos(tmp_path):
    path = tmp_path / "c.h5"
    write_videos(path, [0, 1])
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        assert writer.done == {"Apply/v_0", "Apply/v_1"}
        with pytest.raises(ValueError, match="already"):
            writer.add("Apply/v_0", 0, video_features(0))
        writer.add("Apply/v_2", 0, video_features(2))
    cache = FeatureCache(path)
    assert cache.names == ["Apply/v_0", "Apply/v_1", "Apply/v_2"] and cache.total_frames == 1 + 2 + 3
    np.testing.assert_array_equal(cache.sequence(2), as_stored(video_features(2)))


def test_uncommitted_rows_are_dropped_on_resume(tmp_path):
    """Rows written past the last commit (a writer stopped mid-video) never show up and are overwritten."""
    path = tmp_path / "c.h5"
    write_videos(path, [4])
    with h5py.File(path, "r+", libver="latest", locking=False) as f:  # orphan rows, as an interrupted add leaves
        f["features"].resize(5 + 7, axis=0)
        f["features"][5:] = 9.0
    assert FeatureCache(path).total_frames == 5
    write_videos(path, [6])
    cache = FeatureCache(path)
    assert list(cache.offsets) == [0, 5] and cache.total_frames == 12
    np.testing.assert_array_equal(cache.sequence(1), as_stored(video_features(6)))
    cache.close()
    with h5py.File(path, "r") as f:
        assert f["features"].shape[0] == 12


WRITER_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.cache.test_cache import CLASSES, DIM, FINGERPRINT, video_features
    from pipeline.cache.writer import FeatureCacheWriter
    with FeatureCacheWriter(sys.argv[1], FINGERPRINT, CLASSES, DIM, flip=True) as writer:
        for i in range(int(sys.argv[2])):
            if i % 7 == 0:
                writer.add_failure(f"Brush/v_{{i}}", f"reason {{i}}")  # a repeat adds no record
            if f"Apply/v_{{i}}" not in writer.done:
                writer.add(f"Apply/v_{{i}}", i % 2, video_features(i), video_features(i, True))
""").format(root=str(PROJECT_ROOT))


def committed(path) -> int:
    try:
        return len(FeatureCache(path).names)
    except ActrecError:  # not created yet
        return 0


@pytest.mark.slow
def test_kill_9_mid_write_then_resume_equals_clean_run(tmp_path):
    total = 600
    crashed, clean = tmp_path / "crashed.h5", tmp_path / "clean.h5"
    for _ in range(2):  # two crashes in a row: recovery of a recovered file too
        before = committed(crashed)
        proc = subprocess.Popen([sys.executable, "-c", WRITER_SCRIPT, str(crashed), str(total)],
                                stderr=subprocess.PIPE, text=True)
        while committed(crashed) < before + 20 and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the writer finished before it could be killed"
        assert before < committed(crashed) < total
        # The killed writer's pid file stays behind; it names a dead process, so nobody is said to be writing.
        assert Path(f"{crashed}.lock.pid").read_text().strip() == str(proc.pid)
        assert lock_holder(crashed) is None and "being written" not in describe_cache(crashed)
    result = subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(crashed), str(total)],
                            check=False, stderr=subprocess.PIPE, text=True)
    assert result.returncode == 0, result.stderr
    assert "stopped abruptly" in result.stderr
    subprocess.run([sys.executable, "-c", WRITER_SCRIPT, str(clean), str(total)], check=True)

    a, b = FeatureCache(crashed), FeatureCache(clean)
    assert a.names == b.names == [f"Apply/v_{i}" for i in range(total)]
    assert a.failures == b.failures and len(a.failures) == len(range(0, total, 7))
    with h5py.File(crashed, "r") as f:
        assert int(f["failures/count"][0]) == len(a.failures)
    for attr in ("labels", "offsets", "lengths"):
        np.testing.assert_array_equal(getattr(a, attr), getattr(b, attr))
    with h5py.File(crashed, "r") as fa, h5py.File(clean, "r") as fb:
        for name in ("features", "features_flip"):
            assert fa[name].shape == fb[name].shape
            np.testing.assert_array_equal(fa[name][:], fb[name][:])
    assert not Path(f"{crashed}.lock.pid").exists()  # a writer that finishes takes its pid file away


def test_failures_recorded_once_and_cleared_by_success(tmp_path):
    path = tmp_path / "c.h5"
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        writer.add_failure("Brush/v_1", "empty file (0 bytes)")
        writer.add_failure("Brush/v_2", "cannot open")
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        assert writer.failures == {"Brush/v_1": "empty file (0 bytes)", "Brush/v_2": "cannot open"}
        assert writer.done == set()
        writer.add_failure("Brush/v_1", "empty file (0 bytes)")  # failed again the same way: no new record
        writer.add("Brush/v_2", 1, video_features(2))  # fixed since
    cache = FeatureCache(path)
    assert cache.failures == {"Brush/v_1": "empty file (0 bytes)"} and cache.names == ["Brush/v_2"]
    with h5py.File(path, "r") as f:
        assert int(f["failures/count"][0]) == 2
    text = describe_cache(path)
    assert "videos:     1" in text and "failures:   1" in text and "Brush/v_1: empty file" in text


def test_mismatched_fingerprint_refused_by_writer_and_reader(tmp_path):
    path = tmp_path / "c.h5"
    write_videos(path, [0])
    other = {**FINGERPRINT, "img_dim": 64}
    with pytest.raises(ActrecError, match=r"img_dim: cache has 32, config gives 64") as err:
        FeatureCacheWriter(path, other, CLASSES, DIM)
    assert str(path) in str(err.value) and "cache.path" in str(err.value)
    with pytest.raises(ActrecError, match="img_dim"):
        FeatureCache(path, expected_fingerprint=other)
    with pytest.raises(ActrecError, match="class_names"):
        FeatureCacheWriter(path, FINGERPRINT, CLASSES + ["Cut"], DIM)
    with pytest.raises(ActrecError, match="dim: cache has 8"):
        FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM * 2)
    assert FeatureCache(path, expected_fingerprint=FINGERPRINT).names == ["Apply/v_0"]  # untouched


def test_resume_on_another_forward_precision_refused_but_stage_two_reads(tmp_path):
    path = tmp_path / "c.h5"
    with FeatureCacheWriter(path, {**FINGERPRINT, "forward_dtype": "bfloat16"}, CLASSES, DIM) as writer:
        writer.add("Apply/v_0", 0, video_features(0))
    with pytest.raises(ActrecError, match="forward_dtype: cache has 'bfloat16', this machine .* gives 'float32'"):
        FeatureCacheWriter(path, {**FINGERPRINT, "forward_dtype": "float32"}, CLASSES, DIM)
    # Stage two's expectation comes from the config alone, which cannot know the embedding machine's precision.
    assert FeatureCache(path, expected_fingerprint=FINGERPRINT).names == ["Apply/v_0"]
    with pytest.raises(ActrecError, match="img_dim"):
        FeatureCache(path, expected_fingerprint={**FINGERPRINT, "img_dim": 64})


def test_missing_damaged_and_foreign_files(tmp_path):
    with pytest.raises(ActrecError, match="actrec embed"):
        FeatureCache(tmp_path / "none.h5")
    damaged = tmp_path / "damaged.h5"
    damaged.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8)
    for open_it in (lambda: FeatureCache(damaged), lambda: FeatureCacheWriter(damaged, FINGERPRINT, CLASSES, DIM)):
        with pytest.raises(ActrecError, match="damaged.*[Dd]elete it") as err:
            open_it()
        assert str(damaged) in str(err.value)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w", libver="latest") as f:
        f["x"] = np.zeros(3)
    with pytest.raises(ActrecError, match="not a feature cache"):
        FeatureCache(foreign)


HOLDER_SCRIPT = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r})
    from tests.cache.test_cache import CLASSES, DIM, FINGERPRINT, video_features
    from pipeline.cache.writer import FeatureCacheWriter
    with FeatureCacheWriter(sys.argv[1], FINGERPRINT, CLASSES, DIM) as writer:
        writer.add("Apply/v_0", 0, video_features(0))
        print("holding", flush=True)
        sys.stdin.readline()
        writer.add("Apply/v_1", 1, video_features(1))
""").format(root=str(PROJECT_ROOT))


def test_second_writer_refused_while_first_holds_the_lock(tmp_path):
    path = tmp_path / "c.h5"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER_SCRIPT, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        with pytest.raises(ActrecError, match=rf"another embed is writing .*c\.h5 \(pid {holder.pid}\)"):
            FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM)
        assert f"being written by pid {holder.pid}" in describe_cache(path)
        holder.communicate("go\n", timeout=60)
    finally:
        holder.kill()
    assert holder.returncode == 0
    cache = FeatureCache(path)
    assert cache.names == ["Apply/v_0", "Apply/v_1"]
    np.testing.assert_array_equal(cache.sequence(1), as_stored(video_features(1)))
    cache.close()
    write_videos(path, [2])  # the lock is free again
    assert len(FeatureCache(path)) == 3


def test_pid_file_naming_a_live_process_does_not_block_a_writer(tmp_path):
    """The kernel lock decides who writes; a leftover pid file (its pid since reused) only feeds messages."""
    path = tmp_path / "c.h5"
    write_videos(path, [0])
    pid_file = Path(f"{path}.lock.pid")
    pid_file.write_text(f"{os.getppid()}\n")  # alive, and not a writer
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        assert pid_file.read_text().strip() == str(os.getpid())
        writer.add("Apply/v_1", 1, video_features(1))
        with pytest.raises(ActrecError, match=rf"another embed is writing .*c\.h5 \(pid {os.getpid()}\)"):
            FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM)  # a second writer, even in the same process
    assert not pid_file.exists() and len(FeatureCache(path)) == 2


def test_storage_layer_imports_no_torch_dataset_code_or_cli():
    """Writers and readers stay light: the fingerprint's heavy imports load only when one is computed."""
    code = ("import sys, pipeline.cache.reader, pipeline.cache.writer; "
            "print(sorted({'torch', 'torchvision', 'click', 'pipeline.inputs.formats.ucf101'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True, capture_output=True,
                            text=True)
    assert result.stdout.strip() == "[]"


def test_cache_rows_skip_failed_videos_and_refuse_missing_ones(tmp_path, caplog):
    from pipeline.inputs.formats.ucf101 import (
        VideoItem,  # not at module level: the writer subprocesses import this module
    )

    path = tmp_path / "c.h5"
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        writer.add("A/v_A_g01_c01", 0, video_features(0))
        writer.add("A/v_A_g02_c01", 1, video_features(1))
        writer.add_failure("B/v_B_g99_c01", "DecodeError: corrupt")
    cache = FeatureCache(path)
    item = VideoItem(name="A/v_A_g02_c01", path=tmp_path / "x.avi", label=1, group=2, clip=1)
    failed = VideoItem(name="B/v_B_g99_c01", path=tmp_path / "y.avi", label=1, group=99, clip=1)
    assert cache_rows(cache, [item, failed], "test") == ([1], [1])
    assert "1 test videos failed to embed" in caplog.text and "DecodeError: corrupt" in caplog.text
    missing = VideoItem(name="A/v_A_g07_c01", path=tmp_path / "z.avi", label=0, group=7, clip=1)
    with pytest.raises(ActrecError, match="not in .*actrec embed"):
        cache_rows(cache, [missing], "training")
    wrong_label = VideoItem(name="A/v_A_g02_c01", path=tmp_path / "x.avi", label=0, group=2, clip=1)
    with pytest.raises(ActrecError, match="label 1 in the cache but 0"):
        cache_rows(cache, [wrong_label], "training")


class _FirstFrames:
    """A map-style dataset over a cache: the first frame of each video."""

    def __init__(self, cache):
        self.cache = cache

    def __len__(self):
        return len(self.cache)

    def __getitem__(self, i):
        return self.cache.frames(i, np.zeros(1, np.int64))


def test_reader_pickles_and_opens_lazily_per_worker(tmp_path):
    import torch  # not at module level: the writer subprocesses import this module and need no torch

    path = tmp_path / "c.h5"
    write_videos(path, range(6))
    cache = FeatureCache(path)
    assert cache._file is None  # nothing open until features are read
    first = cache.sequence(0)
    copy = pickle.loads(pickle.dumps(cache))
    assert copy._file is None
    np.testing.assert_array_equal(copy.sequence(0), first)

    # Forked workers inherit the parent's open handle; each must open its own.
    loader = torch.utils.data.DataLoader(_FirstFrames(cache), batch_size=2, num_workers=2,
                                         multiprocessing_context="fork")
    rows = torch.cat(list(loader)).squeeze(1).numpy()
    np.testing.assert_array_equal(rows, np.stack([as_stored(video_features(i))[0] for i in range(6)]))
    np.testing.assert_array_equal(cache.sequence(0), first)  # the parent's handle still works
