"""Sweeps: a grid of real training runs on one tiny HDF5 cache, through joblib (local processes and a Dask
LocalCluster on loopback), with a leaderboard ranked by validation accuracy."""

import csv
import json
import os
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.experiments.sweep import parse_grid, parse_runs_file, plan_sweep, run_sweep
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.orderdata import order_config, write_order_dataset

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"
BASE = ["train.epochs=2", "train.batch_size=8", "train.lr=0.005", "model.dropout=0.0", "data.val_fraction=0.2",
        "train.threads=1", "eval.threads=1"]


@pytest.fixture
def sweep_sets(tmp_path):
    """--set overrides of a tiny order-dataset config whose cache and split files are written."""
    write_order_dataset(order_config(tmp_path))
    return tiny_overrides(tmp_path) + BASE


def read_leaderboard(folder: Path) -> list[dict]:
    with open(folder / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def test_grid_is_the_cross_product_and_runs_files_list_runs(tmp_path):
    grid = parse_grid(["model.hidden_dim=8,16", "train.lr=1e-3, 3e-4", "model.name=bilstm"])
    assert grid == [{"model.hidden_dim": h, "train.lr": lr, "model.name": "bilstm"}
                    for h in ("8", "16") for lr in ("1e-3", "3e-4")]
    runs = tmp_path / "runs.txt"
    runs.write_text("# demo\nmodel.name=meanpool\n\n--set model.name=bilstm model.attention=false  # no attention\n")
    assert parse_runs_file(runs) == [{"model.name": "meanpool"}, {"model.name": "bilstm", "model.attention": "false"}]
    with pytest.raises(ActrecError, match="hidden_dim is given twice"):
        parse_grid(["model.hidden_dim=8", "model.hidden_dim=16"])


def test_bad_grid_is_refused_before_any_run_naming_the_key_or_value(tmp_path, sweep_sets):
    with pytest.raises(ActrecError, match="unknown key 'model.hiden_dim'"):
        plan_sweep(CONFIG, sweep_sets, parse_grid(["model.hiden_dim=8,16"]), "bad", root=tmp_path / "sweeps")
    with pytest.raises(ActrecError, match="model.name: 'lstm' is not allowed"):
        plan_sweep(CONFIG, sweep_sets, parse_grid(["model.name=bilstm,lstm"]), "bad", root=tmp_path / "sweeps")
    with pytest.raises(ActrecError, match="embed.backbone cannot vary in a sweep"):
        plan_sweep(CONFIG, sweep_sets, parse_grid(["embed.backbone=resnet18,resnet50"]), "bad",
                   root=tmp_path / "sweeps")
    with pytest.raises(ActrecError, match="--backend dask needs --scheduler"):
        run_sweep(CONFIG, sweep_sets, parse_grid(["model.name=meanpool"]), "bad", backend="dask",
                  root=tmp_path / "sweeps")
    assert not (tmp_path / "sweeps").exists()
    result = CliRunner().invoke(cli, ["sweep", "-c", str(CONFIG), "--grid", "train.lr=0.1,fast"]
                                + [a for s in sweep_sets for a in ("--set", s)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "train.lr" in result.stderr and "'fast'" in result.stderr


def test_sweep_runs_in_parallel_ranks_by_validation_and_records_a_failed_run(tmp_path, sweep_sets):
    variants = [{"model.name": "meanpool"}, {"model.name": "bilstm"},
                {"model.name": "tcn", "eval.checkpoint": str(tmp_path / "missing.pt")}]
    result = run_sweep(CONFIG, sweep_sets, variants, name="demo", jobs=2, root=tmp_path / "sweeps")
    folder = tmp_path / "sweeps" / "demo"
    rows = read_leaderboard(folder)
    assert [row["model.name"] for row in rows[:2]] == sorted(["meanpool", "bilstm"],
                                                             key=lambda m: -float(_row(rows, m)["val_top1"]))
    assert float(rows[0]["val_top1"]) >= float(rows[1]["val_top1"])
    failed = _row(rows, "tcn")
    assert rows[-1] is failed and "missing.pt" in failed["error"] and failed["test_top1"] == ""
    for row in rows[:2]:
        run_dir = Path(row["run_dir"])
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert float(row["test_top1"]) == pytest.approx(metrics["top1"]) and row["epochs"] == "2"
        assert run_dir.parent == folder and (run_dir / "checkpoints" / "best.pt").exists()
    assert (folder / "leaderboard.png").stat().st_size > 0
    assert [r["status"] for r in result["rows"]] == ["done", "done", "failed"]
    report = CliRunner().invoke(cli, ["report", str(folder)])
    assert report.exit_code == 0 and f"| 1 | {rows[0]['model.name']} |" in report.output
    assert "missing.pt" in report.output


def test_finished_runs_are_skipped_and_an_interrupted_sweep_resumes(tmp_path, sweep_sets, monkeypatch):
    import pipeline.sequence.evaluate

    real_evaluate = pipeline.sequence.evaluate.evaluate
    calls = []

    def interrupted(cfg):
        calls.append(cfg.run.dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_evaluate(cfg)

    monkeypatch.setattr(pipeline.sequence.evaluate, "evaluate", interrupted)
    grid = parse_grid(["model.name=meanpool,tcn"])
    with pytest.raises(KeyboardInterrupt):
        run_sweep(CONFIG, sweep_sets, grid, name="resume", jobs=1, root=tmp_path / "sweeps")
    folder = tmp_path / "sweeps" / "resume"
    assert [row["error"] for row in read_leaderboard(folder)] == ["", "not run yet"]  # written on the way out
    first = Path(read_leaderboard(folder)[0]["run_dir"]) / "checkpoints" / "last.pt"
    stamp = first.stat().st_mtime_ns
    run_sweep(CONFIG, sweep_sets, grid, name="resume", jobs=1, root=tmp_path / "sweeps")
    assert len(calls) == 3  # the finished run was not evaluated again
    assert first.stat().st_mtime_ns == stamp
    assert all(row["error"] == "" and row["epochs"] == "2" for row in read_leaderboard(folder))


def test_sweep_on_a_dask_local_cluster(tmp_path, sweep_sets, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.chdir(tmp_path)  # the workers start here too: runs/sweeps/ is written under tmp_path
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        args = ["sweep", "-c", str(CONFIG), "--grid", "model.name=meanpool,bilstm", "--backend", "dask",
                "--scheduler", cluster.scheduler_address, "--name", "dask"]
        result = CliRunner().invoke(cli, args + [a for s in sweep_sets for a in ("--set", s)])
    assert result.exit_code == 0, result.output
    rows = read_leaderboard(tmp_path / "runs" / "sweeps" / "dask")
    assert sorted(row["model.name"] for row in rows) == ["bilstm", "meanpool"]
    assert all(row["error"] == "" and 0 <= float(row["test_top1"]) <= 1 for row in rows)
    assert all((tmp_path / row["run_dir"] / "metrics.json").exists() for row in rows)
    assert "| 1 |" in result.output
    records = [json.loads((tmp_path / row["run_dir"] / "sweep.json").read_text()) for row in rows]
    assert os.getpid() not in {record["pid"] for record in records}  # trained in the cluster's worker processes


def _row(rows: list[dict], model: str) -> dict:
    return next(row for row in rows if row["model.name"] == model)


def test_leaderboard_ranks_by_validation_accuracy_then_loss_never_by_test(tmp_path, sweep_sets):
    from pipeline.experiments.sweep import settings_of, write_leaderboard
    from pipeline.fileio import write_json

    folder, runs = plan_sweep(CONFIG, sweep_sets, parse_grid(["train.lr=0.1,0.01,0.001,0.0001"]), "rank",
                              root=tmp_path / "sweeps")
    results = [(0.8, 0.5, 0.99), (0.9, 0.7, 0.10), (0.9, 0.3, 0.20), None]  # val acc, val loss, test acc
    for run, result in zip(runs, results):
        if result:
            write_json(run.dir / "sweep.json", {"status": "done", "settings": settings_of(run.config), "epochs": 2,
                                                "val_top1": result[0], "val_loss": result[1], "seconds": 1.0,
                                                "test_top1": result[2], "mean_class_accuracy": result[2]})
    rows = write_leaderboard(folder, runs)
    assert [row["train.lr"] for row in rows] == ["0.001", "0.01", "0.1", "0.0001"]
    assert rows[-1]["status"] == "pending" and rows[-1]["error"] == "not run yet"
    text = (folder / "leaderboard.md").read_text()
    assert text.index("| 1 | 0.001 |") < text.index("| 2 | 0.01 |") < text.index("| 3 | 0.1 |")
    assert "| - | 0.0001 |" in text and (folder / "leaderboard.png").stat().st_size > 0


def test_sweep_on_a_local_ray_cluster(tmp_path, sweep_sets):
    ray = pytest.importorskip("ray")  # optional: `pip install -e '.[cluster]'`
    try:
        run_sweep(CONFIG, sweep_sets, parse_grid(["model.name=meanpool,tcn"]), "ray", jobs=2, backend="ray",
                  root=tmp_path / "sweeps")
    finally:
        ray.shutdown()
    rows = read_leaderboard(tmp_path / "sweeps" / "ray")
    assert sorted(row["model.name"] for row in rows) == ["meanpool", "tcn"]
    assert all(row["error"] == "" and 0 <= float(row["test_top1"]) <= 1 for row in rows)


def test_gpu_slots_give_concurrent_runs_different_gpus(tmp_path, monkeypatch):
    import torch

    from pipeline.experiments.sweep import gpu_slot

    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)  # no GPU here: record the pinning instead
    with gpu_slot(tmp_path, 2) as first, gpu_slot(tmp_path, 2) as second:
        assert {first, second} == {0, 1} and current == [first, second]
    with gpu_slot(tmp_path, 2) as again:  # released on exit: the first GPU is free again
        assert again == 0
    with gpu_slot(tmp_path, 0) as none:
        assert none is None
