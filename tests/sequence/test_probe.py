"""actrec probe: a linear probe and kNN on pooled cached features equal scikit-learn run directly on the same
features; the run dir is one that report and the web page rank; bad settings are one line."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.experiments.report import report_text
from pipeline.inputs.formats import load_split
from pipeline.sequence.probe import probe
from tests.orderdata import order_config, write_order_dataset

sklearn = pytest.importorskip("sklearn")


@pytest.fixture
def order(tmp_path):
    cfg = order_config(tmp_path / "data", f"cache.path={tmp_path}/cache.h5", f"probe.dir={tmp_path}/probe")
    write_order_dataset(cfg, groups=10, clips=3)
    return cfg


def pooled_directly(cfg, items) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each video's rows, read with h5py from the file itself (not through the package's reader)."""
    with h5py.File(cfg.cache.path, "r") as f:
        names = [n.decode() if isinstance(n, bytes) else n for n in f["index/names"][: int(f["index/count"][0])]]
        where = {name: (int(f["index/offsets"][i]), int(f["index/lengths"][i])) for i, name in enumerate(names)}
        features = np.stack([f["features"][o:o + n].astype(np.float64).mean(axis=0)
                             for o, n in (where[item.name] for item in items)])
    return features, np.array([item.label for item in items])


def predicted_probabilities(run_dir: Path, class_names: list[str]) -> dict[str, np.ndarray]:
    """predictions.csv's top-5 as full probability rows (the other classes' share is below the fifth's)."""
    out = {}
    for row in csv.DictReader(open(run_dir / "predictions.csv")):
        p = np.zeros(len(class_names))
        for k in range(1, 6):
            if row[f"label{k}"]:
                p[class_names.index(row[f"label{k}"])] = float(row[f"probability{k}"])
        out[row["video"]] = p
    return out


def test_the_linear_probe_equals_scikit_learn_run_directly(order):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    metrics = probe(order)
    split = load_split(order, check_videos=False)
    (xt, yt), (xv, yv), (xs, ys) = (pooled_directly(order, items) for items in (split.train, split.val, split.test))

    def fit(c, x, y):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)

    grid = np.geomspace(1e-3, 1e3, 7)
    scores = {c: (fit(c, xt, yt).predict(xv) == yv).mean() for c in grid}
    best = max(grid, key=lambda c: (scores[c], -c))
    final = fit(best, np.concatenate([xt, xv]), np.concatenate([yt, yv]))
    assert metrics["probe"]["chosen"] == {"C": pytest.approx(best)}
    assert metrics["probe"]["validation_top1"] == {f"{c:g}": pytest.approx(s) for c, s in scores.items()}
    expected = final.predict_proba(xs)
    assert metrics["top1"] == pytest.approx((expected.argmax(axis=1) == ys).mean())
    got = predicted_probabilities(Path(order.probe.dir), split.class_names)
    for item, p in zip(split.test, expected):
        top = np.argsort(-p)[:5]
        assert np.allclose(got[item.name][top], p[top], atol=1e-6)


def test_a_probe_on_max_pooled_features_tells_the_pairs_apart_but_not_the_order(order):
    """A pair's two classes hold the same frames in opposite order: max over time keeps which pair (the
    direction's peak), loses which order."""
    metrics = probe(order.updated(probe={"pool": "max"}))
    split = load_split(order, check_videos=False)
    got = predicted_probabilities(Path(order.probe.dir), split.class_names)
    predicted = np.array([got[item.name].argmax() for item in split.test])
    labels = np.array([item.label for item in split.test])
    assert (predicted // 2 == labels // 2).mean() > 0.9  # the right pair
    assert metrics["pair_accuracy"] == pytest.approx(0.5, abs=0.2)  # within it, chance


def test_knn_equals_scikit_learn_and_the_run_is_ranked_beside_trained_ones(order, tmp_path):
    from sklearn.neighbors import KNeighborsClassifier

    result = CliRunner().invoke(cli, ["-q", "probe", "-c", str(write_yaml(order, tmp_path)), "--set",
                                      "probe.method=knn", "--set", "probe.k_max=10"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "probe-knn on the test list" in result.output and "mean-pooled features, k = " in result.output
    metrics = json.loads((Path(order.probe.dir) / "metrics.json").read_text())
    split = load_split(order, check_videos=False)
    (xt, yt), (xv, yv), (xs, ys) = (pooled_directly(order, items) for items in (split.train, split.val, split.test))
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731

    def fit(k, x, y):
        return KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute").fit(unit(x), y)

    scores = {k: (fit(k, xt, yt).predict(unit(xv)) == yv).mean() for k in (1, 3, 5, 10)}
    best = max(scores, key=lambda k: (scores[k], -k))
    assert metrics["probe"]["chosen"] == {"k": best}
    final = fit(best, np.concatenate([xt, xv]), np.concatenate([yt, yv]))
    assert metrics["top1"] == pytest.approx((final.predict(unit(xs)) == ys).mean())
    assert "probe-knn" in report_text([order.probe.dir])


def write_yaml(cfg, tmp_path) -> Path:
    import yaml

    path = tmp_path / "order.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()))
    return path


def test_bad_probe_settings_are_one_line(order):
    with pytest.raises(ActrecError, match=r"probe.c_min=10 is above probe.c_max=1"):
        order.updated(probe={"c_min": 10.0, "c_max": 1.0})
    with pytest.raises(ActrecError, match=r"'probe.k_max' is not a key of probe.method=linear"):
        order.updated(probe={"k_max": 5})
    with pytest.raises(ActrecError, match=r"no validation videos to choose among 7 candidates"):
        probe(order.updated(data={"val_fraction": 0.0}))
    assert not Path(order.probe.dir).exists()


def test_the_web_pages_runs_tab_ranks_a_probe_beside_trained_runs(order):
    from pipeline.serve.runs import find_runs, leaderboard

    metrics = probe(order)
    rows = leaderboard(find_runs([order.probe.dir]))
    assert rows[0]["model"] == "probe-linear" and rows[0]["test top-1"] == pytest.approx(metrics["top1"], abs=1e-4)
    assert rows[0]["best val top-1"] == pytest.approx(max(metrics["probe"]["validation_top1"].values()), abs=1e-4)
