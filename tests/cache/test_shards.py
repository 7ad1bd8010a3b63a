"""Shards and their join without an embed: virtual caches that check their shards, a cache replaced while open,
stray files in a shards folder, shards of different devices."""

from __future__ import annotations

import os

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cache.reader import FeatureCache, describe_cache
from pipeline.cache.shards import join, shard_dir, shard_path
from pipeline.cache.virtual import SHARDS_ATTR
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.cli import cli
from pipeline.errors import ActrecError

FINGERPRINT = {"backbone": "resnet18", "img_dim": 32}
CLASSES = ["Apply", "Brush"]
DIM = 4


def features(index: int) -> np.ndarray:
    return np.random.default_rng(index).standard_normal((2 + index % 3, DIM)).astype(np.float32)


def write_shard(path, indices, fingerprint=FINGERPRINT) -> None:
    with FeatureCacheWriter(path, fingerprint, CLASSES, DIM) as writer:
        for i in indices:
            writer.add(f"Apply/v_{i:02d}", i % 2, features(i))


def two_shards(cache, fingerprints=(FINGERPRINT, FINGERPRINT)) -> None:
    """Videos 0..5 shared by two ranks, as torchrun leaves them."""
    for rank, fingerprint in enumerate(fingerprints):
        write_shard(shard_path(cache, rank, 2), range(rank, 6, 2), fingerprint)


def assert_reads_every_video(cache) -> None:
    reader = FeatureCache(cache)
    assert reader.names == [f"Apply/v_{i:02d}" for i in range(6)]
    for i in range(6):
        np.testing.assert_array_equal(reader.sequence(i), features(i).astype(np.float16).astype(np.float32))


def info(cache):
    return CliRunner().invoke(cli, ["info", str(cache)])


def test_virtual_cache_refuses_a_missing_shard_by_name_and_info_says_so(tmp_path):
    cache = tmp_path / "c.h5"
    two_shards(cache)
    join(cache, "virtual")
    assert_reads_every_video(cache)
    assert "join:       virtual, features in 2 shards (c.h5.shards/rank0000-of-0002.h5" in describe_cache(cache)
    missing = shard_path(cache, 1, 2)
    missing.rename(tmp_path / "elsewhere.h5")
    with pytest.raises(ActrecError, match=rf"{missing}, which is missing; put it back, or delete {cache} "):
        FeatureCache(cache)  # without the check, HDF5 reads its rows as zeros
    result = info(cache)
    assert result.exit_code == 2 and f"the shard {missing}, which is missing" in result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1
    (tmp_path / "elsewhere.h5").rename(missing)  # put back: reads again
    assert_reads_every_video(cache)


def test_virtual_cache_refuses_a_shard_replaced_by_another_file(tmp_path):
    cache = tmp_path / "c.h5"
    two_shards(cache)
    join(cache, "virtual")
    first, second = shard_path(cache, 0, 2), shard_path(cache, 1, 2)
    first.rename(tmp_path / "first.h5")
    second.rename(first)  # the ranks' shards swapped: same fingerprint, other videos
    with pytest.raises(ActrecError, match=rf"the shard {first}, but that file is not the shard it was joined from"):
        FeatureCache(cache)
    first.unlink()
    write_shard(first, range(0, 6, 2))  # the same videos embedded again: a new file all the same
    with h5py.File(first, "r+", locking=False) as f:
        f.attrs["created"] = "2000-01-01T00:00:00+0000"
    with pytest.raises(ActrecError, match="created 2000-01-01"):
        FeatureCache(cache)
    assert info(cache).exit_code == 2


def test_virtual_cache_still_opens_after_a_later_embed_extends_a_shard(tmp_path):
    """A shard only grows (an embed that retries failures appends to it); the rows the join took stay put."""
    cache = tmp_path / "c.h5"
    two_shards(cache)
    join(cache, "virtual")
    with FeatureCacheWriter(shard_path(cache, 1, 2), FINGERPRINT, CLASSES, DIM) as writer:
        writer.add("Apply/v_07", 1, features(7))
    assert_reads_every_video(cache)


def test_virtual_cache_joined_before_identities_were_recorded_is_checked_for_presence(tmp_path):
    cache = tmp_path / "c.h5"
    two_shards(cache)
    join(cache, "virtual")
    with h5py.File(cache, "r+", locking=False) as f:
        del f.attrs[SHARDS_ATTR]
    assert_reads_every_video(cache)
    shard_path(cache, 0, 2).unlink()
    with pytest.raises(ActrecError, match="rank0000-of-0002.h5, which is missing"):
        FeatureCache(cache)


def test_a_cache_replaced_while_a_reader_has_its_index_is_refused_not_misread(tmp_path):
    cache = tmp_path / "c.h5"
    write_shard(cache, [0, 1])
    reader = FeatureCache(cache)
    with FeatureCacheWriter(cache, FINGERPRINT, CLASSES, DIM) as writer:  # appending leaves the rows in place
        writer.add("Apply/v_02", 0, features(2))
    np.testing.assert_array_equal(reader.sequence(1), FeatureCache(cache).sequence(1))
    reader.close()
    replacement = tmp_path / "new.h5"
    write_shard(replacement, [1, 0])  # e.g. a join that wrote the videos in another order
    os.replace(replacement, cache)
    with pytest.raises(ActrecError, match="was replaced while this command was reading it"):
        reader.sequence(1)


A100 = "NVIDIA A100-SXM4-80GB (CUDA 12.8, cuDNN 91002)"
H100 = "NVIDIA H100 80GB HBM3 (CUDA 12.8, cuDNN 91002)"


@pytest.mark.parametrize("mode", ["copy", "virtual"])
def test_shards_of_different_devices_are_joined_only_on_request_and_recorded(tmp_path, mode):
    cache = tmp_path / "c.h5"
    two_shards(cache, ({**FINGERPRINT, "device": A100}, {**FINGERPRINT, "device": H100}))
    result = CliRunner().invoke(cli, ["merge-cache", str(cache), "--join", mode])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert f"embedded on another kind of device than {shard_path(cache, 0, 2)} (device: rank0000-of-0002.h5 has " \
           f"'{A100}', rank0001-of-0002.h5 has '{H100}')" in result.output
    assert f"`actrec merge-cache {cache} --mixed-devices`" in result.output and not cache.exists()
    result = CliRunner().invoke(cli, ["merge-cache", str(cache), "--join", mode, "--mixed-devices"])
    assert result.exit_code == 0, result.output
    assert FeatureCache(cache).fingerprint["device"] == [A100, H100]
    assert_reads_every_video(cache)
    # Stage two does not ask which device embedded a cache; a resumed embed on one device must match it.
    assert FeatureCache(cache, expected_fingerprint=FINGERPRINT).names
    with pytest.raises(ActrecError, match=r"device: cache has \['NVIDIA A100"):
        FeatureCacheWriter(cache, {**FINGERPRINT, "device": A100}, CLASSES, DIM)


def test_shards_that_record_no_device_still_join_with_ones_that_do(tmp_path):
    """Shards written before the device was recorded say nothing about it: the join cannot hold it against them."""
    cache = tmp_path / "c.h5"
    two_shards(cache, (FINGERPRINT, {**FINGERPRINT, "device": "cpu"}))
    join(cache)
    assert_reads_every_video(cache)


def test_a_shards_folder_with_a_stray_file_is_refused_and_nothing_is_deleted(tmp_path):
    cache = tmp_path / "c.h5"
    two_shards(cache)
    folder = shard_dir(cache)
    (folder / ".nfs0000000001").write_bytes(b"")  # the file system's, ignored
    assert (folder / "rank0000-of-0002.h5.lock").exists()  # the writers' own files are no strays
    for stray in ("rank0001-of-0002 (copy).h5", "rank0002-of-0002.h5", "notes.txt"):
        (folder / stray).write_text("mine")
        result = CliRunner().invoke(cli, ["merge-cache", str(cache)])
        assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
        assert f"{folder} holds {stray}, which is not a shard of {cache}" in result.output
        assert (folder / stray).read_text() == "mine" and not cache.exists()
        (folder / stray).unlink()
    join(cache)
    assert_reads_every_video(cache)
    assert not folder.exists()


def test_joining_again_without_a_shard_the_virtual_cache_reads_is_refused(tmp_path):
    """Else the new join would leave that shard's videos out without a word."""
    cache = tmp_path / "c.h5"
    two_shards(cache)
    join(cache, "virtual")
    shard_path(cache, 1, 2).unlink()
    for mode in ("virtual", "copy"):
        with pytest.raises(ActrecError, match="rank0001-of-0002.h5, which is missing"):
            join(cache, mode)
    assert len(h5py.File(cache, "r", locking=False)["index/names"]) == 6  # untouched


def test_two_devices_are_noticed_past_a_shard_that_records_none(tmp_path):
    cache = tmp_path / "c.h5"
    for rank, fingerprint in enumerate((FINGERPRINT, {**FINGERPRINT, "device": A100}, {**FINGERPRINT, "device": H100})):
        write_shard(shard_path(cache, rank, 3), range(rank, 6, 3), fingerprint)
    with pytest.raises(ActrecError, match="rank0002-of-0003.h5 was embedded on another kind of device than .*"
                                          "rank0001-of-0003.h5"):
        join(cache)
    join(cache, mixed_devices=True)
    assert FeatureCache(cache).fingerprint["device"] == [A100, H100]
    assert_reads_every_video(cache)


def test_virtual_cache_refuses_a_shard_cut_short(tmp_path):
    cache = tmp_path / "c.h5"
    two_shards(cache)
    join(cache, "virtual")
    shard = shard_path(cache, 1, 2)
    os.truncate(shard, shard.stat().st_size // 2)  # a copy that stopped half-way
    with pytest.raises(ActrecError, match=rf"the shard {shard}, but that file is not the shard it was joined from "
                                          r"\(cannot read it as that shard: .*truncated file"):
        FeatureCache(cache)


def test_a_virtual_join_over_a_cache_of_its_own_or_a_damaged_one_is_refused(tmp_path):
    cache = tmp_path / "c.h5"
    two_shards(cache)
    write_shard(cache, [7])
    with pytest.raises(ActrecError, match="holds features of its own; a virtual join can only point at shards"):
        join(cache, "virtual")
    cache.write_bytes(cache.read_bytes()[:2000])
    with pytest.raises(ActrecError, match="the feature cache is damaged"):
        join(cache, "virtual")


@pytest.mark.parametrize("mode", ["copy", "virtual"])
def test_a_join_keeps_the_record_of_videos_that_decoded_short(tmp_path, mode):
    cache = tmp_path / "c.h5"
    for rank in range(2):
        with FeatureCacheWriter(shard_path(cache, rank, 2), FINGERPRINT, CLASSES, DIM) as writer:
            for i in range(rank, 6, 2):
                writer.add(f"Apply/v_{i:02d}", i % 2, features(i), header_frames=10 + i if i in (1, 4) else None)
    join(cache, mode)
    assert FeatureCache(cache).short == {"Apply/v_01": 11, "Apply/v_04": 14}
    assert_reads_every_video(cache)
