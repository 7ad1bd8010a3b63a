"""Stage one on several ranks (torchrun, gloo on the CPU): shards, the join, kill -9 and changed world sizes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline import distributed
from pipeline.cache.lock import WriteLock, lock_holder
from pipeline.cache.reader import FeatureCache
from pipeline.cache.shards import join, shard_dir, shard_files, shard_path
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.embed.run import embed
from pipeline.errors import ActrecError
from tests.embed.spawned_ranks import agree_on_rank
from tests.helpers import PROJECT_ROOT, tiny_overrides


def torchrun(root: Path, cache: Path, nproc: int = 2, extra: tuple = (), restarts: int = 0) -> subprocess.Popen:
    """`torchrun --standalone --nproc_per_node=N -m pipeline embed` on the tiny dataset, this checkout's code."""
    overrides = tiny_overrides(root) + [f"cache.path={cache}", *extra]
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
               "--monitor-interval=0.1", f"--max-restarts={restarts}", "-m", "pipeline", "embed", "-c",
               "configs/synthetic.yaml"]
    command += [arg for kv in overrides for arg in ("--set", kv)]
    env = dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), OMP_NUM_THREADS="1")
    return subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def assert_same_cache(a_path, b_path) -> None:
    """Names, labels, offsets, lengths and every feature bit equal; same fingerprint and config (but its paths)."""
    a, b = FeatureCache(a_path), FeatureCache(b_path)
    assert a.names == b.names and a.fingerprint == b.fingerprint
    assert dict(a.config, cache=None, run=None) == dict(b.config, cache=None, run=None)
    assert a.failures == b.failures and a.has_flip == b.has_flip
    for column in ("labels", "offsets", "lengths"):
        np.testing.assert_array_equal(getattr(a, column), getattr(b, column))
    a.close(), b.close()
    with h5py.File(a_path, "r", locking=False) as fa, h5py.File(b_path, "r", locking=False) as fb:
        for dataset in ("features", "features_flip") if a.has_flip else ("features",):
            assert fa[dataset].dtype == fb[dataset].dtype
            np.testing.assert_array_equal(fa[dataset][:], fb[dataset][:])


REFERENCE_SETS = ("embed.batch_size=5", "embed.flip=true", "embed.img_dim=48")


@pytest.fixture(scope="module")
def reference_cache(tiny_dataset_root, tmp_path_factory) -> Path:
    """The one-process cache, made once (batch 5 straddles the 12-frame videos; flip on, so both passes are
    compared; 48 px, slow enough to kill a rank mid-way). Tests must not change it."""
    path = tmp_path_factory.mktemp("reference") / "one.h5"
    overrides = tiny_overrides(tiny_dataset_root) + [f"cache.path={path}", *REFERENCE_SETS]
    embed(load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", overrides))
    return path


@pytest.fixture
def reference(reference_cache, tiny_dataset_config):
    """The config of the reference cache (a fresh copy per test)."""
    cfg = tiny_dataset_config
    cfg.embed.batch_size, cfg.embed.flip, cfg.embed.img_dim = 5, True, 48
    cfg.cache.path = str(reference_cache)
    return cfg




@pytest.mark.slow
def test_two_ranks_join_equals_one_process(tiny_dataset_root, reference, tmp_path):
    cache = tmp_path / "two" / "cache.h5"
    proc = torchrun(tiny_dataset_root, cache, extra=REFERENCE_SETS)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert "rank 1/2" in out and "joined 2 shards into" in out
    assert_same_cache(reference.cache.path, cache)
    assert not shard_dir(cache).exists()  # copied, so the shards are gone


@pytest.mark.slow
def test_rank_killed_mid_way_is_restarted_and_resumes_its_shard(tiny_dataset_root, reference, tmp_path):
    """torchrun --max-restarts=1: rank 1 killed with SIGKILL mid-way; the restarted ranks resume their shards and
    the joined cache still equals the one-process cache."""
    cache = tmp_path / "killed" / "cache.h5"
    proc = torchrun(tiny_dataset_root, cache, extra=REFERENCE_SETS, restarts=1)
    shard = shard_path(cache, 1, 2)
    try:
        while committed(shard) < 2:
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.02)
        pid = lock_holder(shard)  # rank 1, by the pid its shard's lock records
        os.kill(pid, signal.SIGSTOP)
        left = committed(shard)
        os.kill(pid, signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert 2 <= left < 16, "rank 1 was not stopped mid-way"
    assert proc.returncode == 0, out
    assert f"keeping its {left} committed videos" in out  # the restarted rank 1 recovered its shard
    assert_same_cache(reference.cache.path, cache)


def committed(path) -> int:
    """Videos committed in a cache file; 0 before it exists or while its writer is opening it."""
    try:
        return len(FeatureCache(path))
    except ActrecError:
        return 0


def fake_shard(reference_cfg, cache: Path, rank: int, world: int, names: list[str]) -> None:
    """A shard holding some of the reference cache's videos, as an earlier run of ``world`` ranks left it."""
    ref = FeatureCache(reference_cfg.cache.path)
    with FeatureCacheWriter(shard_path(cache, rank, world), ref.fingerprint, ref.class_names, ref.dim,
                            flip=ref.has_flip, dtype=ref.dtype, config=ref.config) as writer:
        for name in names:
            i = ref.index_of(name)
            writer.add(name, int(ref.labels[i]), ref.sequence(i), ref.sequence(i, flip=True))


@pytest.mark.slow
def test_changed_world_size_keeps_finished_videos_and_redistributes(reference, tmp_path, caplog):
    cfg = reference
    names = FeatureCache(cfg.cache.path).names
    cache = tmp_path / "resized" / "cache.h5"
    fake_shard(cfg, cache, 1, 4, names[1:12:4])   # what ranks 1 and 3 of 4 had finished
    fake_shard(cfg, cache, 3, 4, names[3:8:4])
    reference_path, cfg.cache.path = cfg.cache.path, str(cache)
    with caplog.at_level("INFO", logger="pipeline"):
        summary = embed(cfg)  # one process now: the rest is its share
    assert "shards written with 4 rank(s)" in caplog.text
    assert summary["skipped"] == 5 and summary["embedded"] == 27
    assert_same_cache(reference_path, cache)
    assert shard_files(cache) == []


def test_virtual_join_reads_like_the_copy_and_merge_cache(reference, tmp_path, monkeypatch):
    names = FeatureCache(reference.cache.path).names
    cache = tmp_path / "virtual" / "cache.h5"
    fake_shard(reference, cache, 0, 2, names[0::2])
    fake_shard(reference, cache, 1, 2, names[1::2])
    summary = join(cache, "virtual")
    assert summary["videos"] == 32 and len(shard_files(cache)) == 2
    with h5py.File(cache, "r") as f:
        assert f["features"].is_virtual and f["features_flip"].is_virtual
    monkeypatch.chdir(tmp_path.parent)  # shard paths resolve against the cache's folder, not the cwd
    virtual, ref = FeatureCache(cache), FeatureCache(reference.cache.path)
    assert virtual.names == ref.names
    for i in (0, 7, 31):
        np.testing.assert_array_equal(virtual.sequence(i), ref.sequence(i))
        np.testing.assert_array_equal(virtual.sequence(i, flip=True), ref.sequence(i, flip=True))
    np.testing.assert_array_equal(virtual.frames(5, np.array([11, 0, 3])), ref.frames(5, np.array([11, 0, 3])))

    result = CliRunner().invoke(cli, ["merge-cache", str(cache)])  # copy over the virtual one
    assert result.exit_code == 0, result.output
    assert "32 videos" in result.output and not shard_dir(cache).exists()
    assert_same_cache(reference.cache.path, cache)


def test_join_refuses_shards_of_other_settings_and_nothing_to_join(reference, tmp_path):
    names = FeatureCache(reference.cache.path).names
    cache = tmp_path / "mixed" / "cache.h5"
    with pytest.raises(ActrecError, match="no shards"):
        join(cache)
    fake_shard(reference, cache, 0, 2, names[:3])
    ref = FeatureCache(reference.cache.path)
    with FeatureCacheWriter(shard_path(cache, 1, 2), dict(ref.fingerprint, img_dim=64), ref.class_names, ref.dim,
                            flip=True, dtype=ref.dtype, config=ref.config) as writer:
        writer.add(names[4], 0, ref.sequence(4), ref.sequence(4, flip=True))
    result = CliRunner().invoke(cli, ["merge-cache", str(cache)])
    assert result.exit_code == 2 and "other settings" in result.output and "img_dim" in result.output
    assert len(shard_files(cache)) == 2 and not cache.exists()  # nothing lost


def test_rank_from_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.current() == distributed.Rank(0, 1, 0) and not distributed.current().launched
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    rank = distributed.current()
    assert rank.launched and str(rank) == "rank 2/4"
    assert distributed.share(list(range(10)), rank) == [2, 6]
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ActrecError, match="RANK=4 does not fit WORLD_SIZE=4"):
        distributed.current()


def test_a_shard_of_other_settings_is_refused_before_embedding(reference, tmp_path):
    names = FeatureCache(reference.cache.path).names
    cache = tmp_path / "other" / "cache.h5"
    fake_shard(reference, cache, 0, 2, names[:2])
    reference.cache.path, reference.embed.img_dim = str(cache), 64
    with pytest.raises(ActrecError, match=r"rank0000-of-0002.h5 was made with other settings \(img_dim"):
        embed(reference)
    assert len(FeatureCache(shard_path(cache, 0, 2))) == 2 and not cache.exists()


def test_embed_records_the_kind_of_device_it_ran_on(reference):
    assert FeatureCache(reference.cache.path).fingerprint["device"] == "cpu"


@pytest.mark.slow
def test_torchrun_on_a_cache_another_embed_writes_stops_every_rank_with_one_line(tiny_dataset_root, tmp_path):
    """Rank 0 is refused the lock (held here, by this process, as a running embed holds it); its other rank learns
    it from rank 0 and stops with the same line, not with a gloo "Connection closed by peer" traceback."""
    cache = tmp_path / "busy" / "cache.h5"
    cache.parent.mkdir()
    lock = WriteLock(cache)
    lock.acquire()
    try:
        out, _ = torchrun(tiny_dataset_root, cache).communicate(timeout=120)
    finally:
        lock.release()
    refusals = [line for line in out.splitlines() if "another embed is writing" in line]
    assert len(refusals) == 2, out
    assert all(line == f"error: another embed is writing {cache} (pid {os.getpid()}); wait for it to finish or stop "
               f"it, then run again" for line in refusals), out
    assert "Connection closed" not in out and "gloo::" not in out.lower(), out
    assert f'File "{PROJECT_ROOT / "pipeline"}' not in out, out  # no traceback through our code on any rank
    assert not cache.exists() and shard_files(cache) == []


def test_stage_two_refuses_a_virtual_cache_whose_shard_is_gone(reference, tmp_path):
    """Before, HDF5 filled the missing shard's rows with zeros and training ran to the end on them."""
    from pipeline.cache.reader import open_cache

    names = FeatureCache(reference.cache.path).names
    cache = tmp_path / "virtual" / "cache.h5"
    fake_shard(reference, cache, 0, 2, names[0::2])
    fake_shard(reference, cache, 1, 2, names[1::2])
    join(cache, "virtual")
    reference.cache.path = str(cache)
    assert len(open_cache(reference)) == 32
    shard_path(cache, 0, 2).unlink()
    with pytest.raises(ActrecError, match=rf"the shard {shard_path(cache, 0, 2)}, which is missing"):
        open_cache(reference)


@pytest.mark.slow
def test_every_rank_stops_with_the_failing_ranks_line(tmp_path):
    import torch.multiprocessing

    torch.multiprocessing.spawn(agree_on_rank, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=2)
    assert (tmp_path / "rank0").read_text().splitlines() == [
        "['a', 'b']", "ActrecError: c.h5 is busy", "OSError: [Errno 28] No space left on device",
        "ActrecError: disk full", "0"]
    assert (tmp_path / "rank1").read_text().splitlines() == [
        "['a', 'b']", "ActrecError: c.h5 is busy",
        "ActrecError: rank 0 stopped (OSError: [Errno 28] No space left on device); see its error",
        "ActrecError: disk full", "1"]
