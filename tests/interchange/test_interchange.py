"""actrec export / import: other tools' layouts, round trips bit for bit, training on imported features, and
bad folders refused with one line and nothing written."""

from __future__ import annotations

import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from pipeline.cache.reader import FeatureCache
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.interchange.exporting import export_cache
from pipeline.interchange.importing import import_features
from pipeline.interchange.layouts import load_array
from tests.orderdata import order_config, write_order_dataset


def actrec(*args: str) -> str:
    result = CliRunner().invoke(cli, ["-q", *args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def stored(path) -> dict:
    cache = FeatureCache(path)
    rows = {name: (int(cache.labels[i]), np.array(cache.stored_rows(i))) for i, name in enumerate(cache.names)}
    cache.close()
    return rows


def half_precision_copy(source, target, fps: float = 25.0) -> None:
    """The cache at ``source`` as float16 with a frame rate, as `actrec embed` writes by default."""
    cache = FeatureCache(source)
    with FeatureCacheWriter(target, cache.fingerprint, cache.class_names, cache.dim, dtype="float16",
                            config=cache.config, fps=fps) as writer:
        for i, name in enumerate(cache.names):
            writer.add(name, int(cache.labels[i]), cache.sequence(i))
    cache.close()


@pytest.fixture
def order_cache(tmp_path):
    cfg = order_config(tmp_path / "data", f"cache.path={tmp_path}/cache.h5", f"run.dir={tmp_path}/run")
    write_order_dataset(cfg)
    return cfg


def settings(cfg, *more: str) -> list[str]:
    """The command-line form of ``cfg`` (its resolved YAML) with ``more`` overrides."""
    path = Path(cfg.run.dir).parent / "order.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return ["-c", str(path), *(arg for kv in more for arg in ("--set", kv))]


def test_video_features_layout_round_trips_bit_for_bit(order_cache, tmp_path):
    half = tmp_path / "half.h5"
    half_precision_copy(order_cache.cache.path, half)
    actrec("export", str(half), str(tmp_path / "vf"))
    video = "BlockMoveRight/v_BlockMoveRight_g01_c01"
    rows = load_array(tmp_path / "vf" / "v_BlockMoveRight_g01_c01_resnet.npy")  # resnet18's video_features key
    assert rows.dtype == np.float16 and np.array_equal(rows, stored(half)[video][1])
    assert float(load_array(tmp_path / "vf" / "v_BlockMoveRight_g01_c01_fps.npy")) == 25.0
    times = load_array(tmp_path / "vf" / "v_BlockMoveRight_g01_c01_timestamps_ms.npy")
    assert np.allclose(times, np.arange(len(rows)) * 40.0)
    assert (tmp_path / "vf" / "classes.txt").read_text().split()[:2] == ["BlockMoveRight", "BlockMoveLeft"]

    actrec("import", str(tmp_path / "vf"), *settings(order_cache, f"cache.path={tmp_path}/back.h5"),
           "--made-by", "actrec export of a test cache")
    back, original = stored(tmp_path / "back.h5"), stored(half)
    assert sorted(back) == sorted(original)
    assert all(back[n][0] == original[n][0] and back[n][1].dtype == np.float16 and
               np.array_equal(back[n][1], original[n][1]) for n in original)
    imported = FeatureCache(tmp_path / "back.h5")
    assert imported.fps == 25.0 and imported.fingerprint["imported"]["made_by"] == "actrec export of a test cache"
    assert not list(tmp_path.glob(".back*"))  # the temporary cache was renamed, its lock files gone


def test_training_on_imported_features_equals_training_on_the_original_cache(order_cache, tmp_path):
    from pipeline.predict.predictor import Predictor

    actrec("export", order_cache.cache.path, str(tmp_path / "mm"), "--layout", "mmaction2")
    listed = (tmp_path / "mm" / "video_list.txt").read_text().splitlines()
    assert listed[0] == "BlockMoveRight/v_BlockMoveRight_g01_c01 0"  # the cache's order, its labels
    assert (tmp_path / "mm" / "BlockMoveLeft" / "v_BlockMoveLeft_g01_c01.pkl").is_file()  # class folders kept
    actrec("import", str(tmp_path / "mm"), *settings(order_cache, f"cache.path={tmp_path}/mm.h5"),
           "--layout", "mmaction2", "--made-by", "MMAction2 TSN (test)")
    back, original = stored(tmp_path / "mm.h5"), stored(order_cache.cache.path)
    assert sorted(back) == sorted(original) and all(
        back[n][0] == original[n][0] and back[n][1].dtype == np.float32 and np.array_equal(back[n][1], original[n][1])
        for n in original)  # float32, bit for bit
    for cache, run in ((order_cache.cache.path, "original"), (f"{tmp_path}/mm.h5", "imported")):
        actrec("train", *settings(order_cache, f"cache.path={cache}", f"run.dir={tmp_path}/{run}"))
        actrec("evaluate", *settings(order_cache, f"cache.path={cache}", f"run.dir={tmp_path}/{run}"))
    original, imported = (json.loads((tmp_path / run / "metrics.json").read_text()) for run in ("original", "imported"))
    for metrics in (original, imported):
        del metrics["checkpoint"], metrics["cache"]  # where each run's files are: the one thing that differs
    assert imported == original
    histories = [list(csv.DictReader((tmp_path / run / "history.csv").open())) for run in ("original", "imported")]
    for row in (row for history in histories for row in history):
        row.pop("seconds")  # wall time, the one column that may differ
    assert histories[0] == histories[1] and len(histories[0]) == 2  # every epoch's losses and accuracies, equal
    with pytest.raises(ActrecError, match="trained on imported features .made by 'MMAction2 TSN .test.'"):
        Predictor(tmp_path / "imported" / "checkpoints" / "best.pt")


class Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/actrec-import-ran-code"),))


def _rewrite(folder: Path, stem: str, array) -> None:
    np.save(folder / f"{stem}_resnet.npy", array)


BAD_FOLDERS = {
    "ragged width": (lambda f: _rewrite(f, "v_TriangleGrow_g02_c01", np.zeros((5, 7), np.float32)),
                     r"has 7-d features but .* 6-d; one cache holds one width"),
    "NaN": (lambda f: _rewrite(f, "v_TriangleGrow_g02_c01", np.array([[0] * 6, [np.nan] * 6], np.float32)),
            r"v_TriangleGrow_g02_c01_resnet.npy: row 1 holds NaN or inf"),
    "inf": (lambda f: _rewrite(f, "v_TriangleGrow_g02_c01", np.full((3, 6), np.inf, np.float32)),
            r"row 0 holds NaN or inf"),
    "not in the lists": (lambda f: _rewrite(f, "v_Unlisted_g01_c01", np.zeros((3, 6), np.float32)),
                         r"v_Unlisted_g01_c01_resnet.npy names no video of the split lists"),
    "two files": (lambda f: ((f / "sub").mkdir(), shutil.copy(f / "v_TriangleGrow_g02_c01_resnet.npy", f / "sub")),
                  r"two files for one video \(v_TriangleGrow_g02_c01\)"),
    "missing": (lambda f: (f / "v_TriangleGrow_g02_c01_resnet.npy").unlink(),
                r"1 videos of the split lists have no features .* \(first: TriangleGrow/v_TriangleGrow_g02_c01"),
    "integers": (lambda f: _rewrite(f, "v_TriangleGrow_g02_c01", np.zeros((3, 6), np.int64)),
                 r"holds int64 values; features are floating point"),
    "bad fps": (lambda f: np.save(f / "v_TriangleGrow_g02_c01_fps.npy", np.array(0.0)),
                r"v_TriangleGrow_g02_c01_fps.npy: fps must be one positive number"),
    "timestamps": (lambda f: np.save(f / "v_TriangleGrow_g02_c01_timestamps_ms.npy", np.zeros(2)),
                   r"timestamps must be \d+ increasing finite numbers"),
    "classes": (lambda f: (f / "classes.txt").write_text("TriangleGrow\nBlockMoveRight\n"),
                r"classes.txt lists 2 classes .* the labels would not match"),
    "pickled code": (lambda f: (f / "v_TriangleGrow_g02_c01_resnet.npy").write_bytes(pickle.dumps(Exploit())),
                     r"v_TriangleGrow_g02_c01_resnet.npy: not a readable .npy array"),
}


@pytest.mark.parametrize("case", sorted(BAD_FOLDERS))
def test_a_bad_folder_is_one_line_and_writes_nothing(order_cache, tmp_path, case):
    folder = tmp_path / "vf"
    export_cache(order_cache.cache.path, folder)  # float32, no frame rate: features and classes.txt only
    spoil, message = BAD_FOLDERS[case]
    spoil(folder)
    cfg = order_cache.updated(cache={"path": str(tmp_path / "imported.h5")})
    with pytest.raises(ActrecError, match=message):
        import_features(cfg, folder, "video_features", "test")
    assert not list(tmp_path.glob("*imported*")) and not Path("/tmp/actrec-import-ran-code").exists()


def test_a_pickle_that_is_not_an_array_is_refused_without_running_it(order_cache, tmp_path):
    folder = tmp_path / "mm"
    export_cache(order_cache.cache.path, folder, "mmaction2")
    (folder / "TriangleGrow" / "v_TriangleGrow_g02_c01.pkl").write_bytes(pickle.dumps(Exploit()))
    cfg = order_cache.updated(cache={"path": str(tmp_path / "imported.h5")})
    with pytest.raises(ActrecError, match=r"the pickle refers to pathlib.Path.touch; only numpy arrays"):
        import_features(cfg, folder, "mmaction2", "test")
    assert not Path("/tmp/actrec-import-ran-code").exists() and not (tmp_path / "imported.h5").exists()


def test_import_and_export_refuse_what_they_would_overwrite_or_misname(order_cache, tmp_path):
    folder = tmp_path / "vf"
    export_cache(order_cache.cache.path, folder)
    with pytest.raises(ActrecError, match="exists; give a new folder"):
        export_cache(order_cache.cache.path, folder)
    with pytest.raises(ActrecError, match=r"cache.path .*cache.h5 exists; import builds a new cache"):
        import_features(order_cache, folder, "video_features", "test")
    cfg = order_cache.updated(cache={"path": str(tmp_path / "new.h5")})
    with pytest.raises(ActrecError, match="--made-by: say what made the features"):
        import_features(cfg, folder, "video_features", "  ")
    twins = tmp_path / "twins.h5"
    with FeatureCacheWriter(twins, {"name": "x"}, ["A", "B"], 2, dtype="float32") as writer:
        writer.add("A/v_same", 0, np.zeros((2, 2), np.float32))
        writer.add("B/v_same", 1, np.zeros((2, 2), np.float32))
    with pytest.raises(ActrecError, match="A/v_same and B/v_same would both be written to v_same_features.npy"):
        export_cache(twins, tmp_path / "twins")
    assert not (tmp_path / "twins").exists()
    assert export_cache(twins, tmp_path / "twins", "mmaction2")["videos"] == 2
