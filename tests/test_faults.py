"""Faults a careless or unlucky user meets: a full disk, a read-only folder, a damaged cache.

Full disks are real: a small tmpfs mounted for the test (``small_disk``; needs root, as in CI) and filled with
a filler file. What every stage must do: stop with one line naming the file, commit nothing it did not finish,
and let the next run (with space) go on to the result an uninterrupted run gives.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from conftest import PROJECT_ROOT, fill_disk, tiny_overrides

import pipeline.features.cache_writer as cache_writer
from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.features.cache import FeatureCache
from pipeline.features.cache_writer import FeatureCacheWriter

FULL = "no space left on device writing {}; free space and run the command again to resume"
FINGERPRINT = {"backbone": "resnet18", "img_dim": 32}
CLASSES = ["Apply", "Brush"]
DIM = 512


def long_video(index: int) -> np.ndarray:
    """600 frames of 512-d features: 600 KiB in float16, so a new 1 MiB chunk is needed every other video."""
    return np.random.default_rng(index).standard_normal((600, DIM)).astype(np.float32)


def add_videos(writer, indices) -> None:
    for i in indices:
        writer.add(f"Apply/v_{i}", i % 2, long_video(i))


def cache_contents(path) -> dict:
    with h5py.File(path, "r") as f:
        return {name: f[name][:] for name in ("features", "index/names", "index/labels", "index/offsets",
                                              "index/lengths", "index/count", "failures/count")}


def assert_same_cache(a, b) -> None:
    left, right = cache_contents(a), cache_contents(b)
    for name in left:
        np.testing.assert_array_equal(left[name], right[name], err_msg=name)


def cli_args(command: str, root, *extra: str) -> list[str]:
    args = ["--quiet", command, "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml")]
    for item in tiny_overrides(root) + list(extra):
        args += ["--set", item]
    return args


def one_line(result) -> str:
    """The error line of a failed command, checked to be its only one, its last, and without a traceback."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and result.stderr.endswith(errors[0] + "\n"), result.stderr
    assert "Traceback" not in result.output and "Exception ignored" not in result.output
    return errors[0]


# -- embed: the cache -------------------------------------------------------------------------------------------

def test_cache_write_failing_inside_hdf5_commits_nothing_and_resumes_exactly(small_disk, tmp_path, monkeypatch,
                                                                             capfd):
    disk = small_disk(24)
    path = disk / "cache.h5"
    monkeypatch.setattr(cache_writer, "SPARE_BYTES", -(1 << 40))  # no check ahead: let HDF5 itself hit the wall
    with pytest.raises(ActrecError) as err:
        with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
            add_videos(writer, range(3))
            filler = fill_disk(disk)
            add_videos(writer, range(3, 8))
    assert str(err.value) == FULL.format(path)
    assert "Exception ignored" not in capfd.readouterr().err  # HDF5's own complaints do not reach the user
    assert FeatureCache(path).names == [f"Apply/v_{i}" for i in range(3)]
    assert not path.with_name("cache.h5.reserve").exists()

    filler.unlink()
    monkeypatch.undo()
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        assert writer.done == {f"Apply/v_{i}" for i in range(3)}
        add_videos(writer, range(3, 8))
    with FeatureCacheWriter(tmp_path / "clean.h5", FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, range(8))
    assert_same_cache(path, tmp_path / "clean.h5")


def test_cache_writer_stops_before_a_video_that_does_not_fit(small_disk, caplog):
    disk = small_disk(24)
    path = disk / "cache.h5"
    with FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, range(2))
        filler = fill_disk(disk, leave=cache_writer.SPARE_BYTES + 100_000)  # less than a video plus the spare room
        with pytest.raises(ActrecError, match="no space left on device writing"):
            add_videos(writer, [2])
    assert FeatureCache(path).names == ["Apply/v_0", "Apply/v_1"]
    filler.unlink()
    with caplog.at_level("WARNING", logger="pipeline"), FeatureCacheWriter(path, FINGERPRINT, CLASSES, DIM) as writer:
        add_videos(writer, [2])
    assert "stopped abruptly" not in caplog.text  # a clean stop: nothing to recover


def test_cache_writer_on_a_full_disk_says_so_before_starting(small_disk):
    disk = small_disk(8)
    fill_disk(disk)
    with pytest.raises(ActrecError) as err:
        FeatureCacheWriter(disk / "cache.h5", FINGERPRINT, CLASSES, DIM)
    assert str(err.value) == FULL.format(disk / "cache.h5")
    assert not (disk / "cache.h5").exists() and not (disk / "cache.h5.reserve").exists()


def test_embed_on_a_disk_that_fills_stops_with_one_line_and_resumes_to_the_same_cache(
        small_disk, tiny_dataset_root, tmp_path, monkeypatch):
    disk = small_disk(24)
    cache = disk / "tiny.h5"
    add = FeatureCacheWriter.add

    def fill_after_two(writer, *args, **kwargs):
        add(writer, *args, **kwargs)
        if len(writer.done) == 2:
            fill_disk(disk)

    with monkeypatch.context() as patch:
        patch.setattr(FeatureCacheWriter, "add", fill_after_two)
        result = CliRunner().invoke(cli, cli_args("embed", tiny_dataset_root, f"cache.path={cache}"))
    assert one_line(result) == "error: " + FULL.format(cache)
    info = CliRunner().invoke(cli, ["info", str(cache)])
    assert info.exit_code == 0 and "videos:     2\n" in info.stdout

    (disk / "filler").unlink()
    again = CliRunner().invoke(cli, cli_args("embed", tiny_dataset_root, f"cache.path={cache}"))
    assert again.exit_code == 0, again.output
    clean = CliRunner().invoke(cli, cli_args("embed", tiny_dataset_root, f"cache.path={tmp_path / 'clean.h5'}"))
    assert clean.exit_code == 0, clean.output
    assert_same_cache(cache, tmp_path / "clean.h5")
    assert len(FeatureCache(cache).names) == 32
