"""Sweeps: real training runs on one tiny HDF5 cache in local worker processes and on a Dask LocalCluster
(loopback), checked before anything is written, with a leaderboard ranked by validation accuracy."""

import json
import os
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.experiments.sweep import run_sweep
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
    import csv

    with open(folder / "leaderboard.csv") as f:
        return list(csv.DictReader(f))


def cli_args(sweep_sets) -> list[str]:
    return ["sweep", "-c", str(CONFIG)] + [a for s in sweep_sets for a in ("--set", s)]


def _row(rows: list[dict], model: str) -> dict:
    return next(row for row in rows if row["model.name"] == model)


@pytest.mark.slow
def test_sweep_runs_in_parallel_ranks_by_validation_and_exits_non_zero_with_a_failed_run(tmp_path, sweep_sets,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs.txt"
    runs.write_text(f"model.name=meanpool\nmodel.name=bilstm\nmodel.name=tcn eval.checkpoint={tmp_path}/missing.pt\n")
    result = CliRunner().invoke(cli, cli_args(sweep_sets) + ["--runs", str(runs), "--jobs", "2", "--name", "demo"])
    folder = tmp_path / "runs" / "sweeps" / "demo"
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1] == (f"error: 1 of 3 runs failed (their errors are in "
                                                      f"{Path('runs/sweeps/demo/leaderboard.md')}); fix the cause "
                                                      f"and run the same command again to run them")
    rows = read_leaderboard(folder)
    assert [row["model.name"] for row in rows[:2]] == sorted(["meanpool", "bilstm"],
                                                             key=lambda m: -float(_row(rows, m)["val_top1"]))
    failed = _row(rows, "tcn")
    assert rows[-1] is failed and "missing.pt" in failed["error"] and failed["test_top1"] == ""
    for row in rows[:2]:
        run_dir = tmp_path / row["run_dir"]
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert float(row["test_top1"]) == pytest.approx(metrics["top1"]) and row["epochs"] == "2"
        assert run_dir.parent == folder and (run_dir / "checkpoints" / "best.pt").exists()
    records = [json.loads((tmp_path / row["run_dir"] / "sweep.json").read_text()) for row in rows]
    assert os.getpid() not in {record["pid"] for record in records}  # trained in worker processes
    assert (folder / "leaderboard.png").stat().st_size > 0
    report = CliRunner().invoke(cli, ["report", str(folder)])
    assert report.exit_code == 0 and f"| 1 | {rows[0]['model.name']} |" in report.output
    assert "missing.pt" in report.output


@pytest.mark.slow
def test_finished_runs_are_skipped_and_a_run_with_cut_metrics_is_evaluated_again(tmp_path, sweep_sets):
    grid = ["model.name=meanpool,tcn"]
    run_sweep(CONFIG, sweep_sets, grid, name="again", jobs=2, root=tmp_path / "sweeps")
    folder = tmp_path / "sweeps" / "again"
    rows = read_leaderboard(folder)
    meanpool, tcn = (Path(_row(rows, model)["run_dir"]) for model in ("meanpool", "tcn"))
    stamps = {path: path.stat().st_mtime_ns for path in (meanpool / "metrics.json", tcn / "checkpoints" / "last.pt",
                                                          tcn / "sweep.json")}
    cut = tcn / "metrics.json"
    cut.write_text(cut.read_text()[:100])
    result = run_sweep(CONFIG, sweep_sets, grid, name="again", jobs=2, root=tmp_path / "sweeps")
    assert json.loads(cut.read_text())["model"] == "tcn"  # evaluated again
    assert (tcn / "checkpoints" / "last.pt").stat().st_mtime_ns == stamps[tcn / "checkpoints" / "last.pt"]
    assert (meanpool / "metrics.json").stat().st_mtime_ns == stamps[meanpool / "metrics.json"]  # not run again
    assert result["failed"] == 0 and [row["status"] for row in result["rows"]] == ["done", "done"]


def test_a_missing_or_incomplete_cache_is_refused_once_before_anything_is_written(tmp_path, sweep_sets):
    cfg = order_config(tmp_path)
    train_video = (Path(cfg.data.splits) / "trainlist01.txt").read_text().split()[0][:-4]
    Path(cfg.cache.path).unlink()
    write_order_dataset(cfg, missing=(train_video,))
    with pytest.raises(ActrecError, match=f"lacks 1 of the 48 training videos of split 1 \\(e.g. {train_video}\\); "
                                          f"run `actrec embed`"):
        run_sweep(CONFIG, sweep_sets, ["model.name=meanpool,tcn"], name="holed", root=tmp_path / "sweeps")
    Path(cfg.cache.path).unlink()
    result = CliRunner().invoke(cli, cli_args(sweep_sets) + ["--grid", "model.name=meanpool,tcn"])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "tiny.h5" in result.stderr
    assert not (tmp_path / "sweeps").exists() and not (tmp_path / "runs").exists()


def test_an_unreachable_dask_scheduler_is_refused_before_anything_is_written(tmp_path, sweep_sets, monkeypatch):
    pytest.importorskip("dask.distributed")
    monkeypatch.chdir(tmp_path)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    result = CliRunner().invoke(cli, cli_args(sweep_sets) + ["--grid", "model.name=meanpool,tcn", "--backend", "dask",
                                                             "--scheduler", f"tcp://127.0.0.1:{port}"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines()[-1].startswith(f"error: --scheduler tcp://127.0.0.1:{port}: cannot connect")
    assert not (tmp_path / "runs").exists()
    with pytest.raises(ActrecError, match="--backend dask needs --scheduler"):
        run_sweep(CONFIG, sweep_sets, ["model.name=meanpool"], name="bad", backend="dask", root=tmp_path / "sweeps")


@pytest.mark.slow
def test_sweep_on_a_dask_local_cluster_and_gpu_training_refused_without_gpu_workers(tmp_path, sweep_sets,
                                                                                    monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.chdir(tmp_path)  # the workers start here too: runs/sweeps/ is written under tmp_path
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster:
        args = cli_args(sweep_sets) + ["--grid", "model.name=meanpool,bilstm", "--backend", "dask",
                                       "--scheduler", cluster.scheduler_address, "--name", "dask"]
        on_gpu = CliRunner().invoke(cli, args + ["--set", "train.device=cuda"])
        assert on_gpu.exit_code == 2 and "Traceback" not in on_gpu.stderr
        assert "the runs train on cuda but no dask worker offers a GPU" in on_gpu.stderr.splitlines()[-1]
        assert not (tmp_path / "runs").exists()
        result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    rows = read_leaderboard(tmp_path / "runs" / "sweeps" / "dask")
    assert sorted(row["model.name"] for row in rows) == ["bilstm", "meanpool"]
    assert all(row["error"] == "" and 0 <= float(row["test_top1"]) <= 1 for row in rows)
    assert "| 1 |" in result.output
    records = [json.loads((tmp_path / row["run_dir"] / "sweep.json").read_text()) for row in rows]
    assert os.getpid() not in {record["pid"] for record in records}  # trained in the cluster's worker processes


@pytest.mark.slow
def test_a_dask_worker_offering_a_gpu_it_cannot_see_is_refused(tmp_path, sweep_sets, monkeypatch):
    distributed = pytest.importorskip("dask.distributed")
    monkeypatch.chdir(tmp_path)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None, resources={"GPU": 1}) as cluster:
        result = CliRunner().invoke(cli, cli_args(sweep_sets) + [
            "--grid", "model.name=meanpool,tcn", "--backend", "dask", "--scheduler", cluster.scheduler_address,
            "--set", "train.device=auto"])
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert "offers GPU=1 and sees 0 GPU(s)" in result.stderr.splitlines()[-1] and not (tmp_path / "runs").exists()


def test_local_runs_get_a_gpu_each_as_the_only_one_they_see(monkeypatch, tmp_path):
    import torch

    from pipeline.experiments.execute import local_gpus, local_jobs, worker_environment
    from pipeline.experiments.plan import plan_sweep

    _, runs = plan_sweep(CONFIG, tiny_overrides(tmp_path) + ["train.device=auto"], grid=["model.name=tcn,meanpool"],
                         name="gpus", root=tmp_path / "sweeps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # no GPU here: what torch would report
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert local_gpus(runs) == ["3", "5"] and local_jobs(None, ["3", "5"], 2) == 2 and local_jobs(4, ["3"], 2) == 1
    with worker_environment("5"):
        assert os.environ["CUDA_VISIBLE_DEVICES"] == "5" and os.environ["TQDM_DISABLE"] == "1"
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3,5" and "TQDM_DISABLE" not in os.environ
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    _, on_cuda = plan_sweep(CONFIG, tiny_overrides(tmp_path) + ["train.device=cuda"], grid=["model.name=tcn"],
                            name="gpus", root=tmp_path / "sweeps")
    with pytest.raises(ActrecError, match="train on cuda .* but torch sees no GPU here"):
        local_gpus(on_cuda)


def test_sweep_on_a_local_ray_cluster(tmp_path, sweep_sets):
    ray = pytest.importorskip("ray")  # optional: `pip install -e '.[cluster]'`
    try:
        run_sweep(CONFIG, sweep_sets, ["model.name=meanpool,tcn"], name="ray", jobs=2, backend="ray",
                  root=tmp_path / "sweeps")
    finally:
        ray.shutdown()
    rows = read_leaderboard(tmp_path / "sweeps" / "ray")
    assert sorted(row["model.name"] for row in rows) == ["meanpool", "tcn"]
    assert all(row["error"] == "" and 0 <= float(row["test_top1"]) <= 1 for row in rows)


def test_make_demo_shows_the_sweep_and_stops_on_its_failure():
    """The demo's sweep is neither hidden nor ignored: its output reaches the user and its exit status stops make."""
    makefile = (PROJECT_ROOT / "Makefile").read_text()
    recipe = makefile.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    (line,) = [line for line in recipe.splitlines() if "$(ACTREC) sweep " in line]
    assert ">" not in line and "||" not in line and not line.lstrip().startswith("-")
