"""Tracking: real training runs read back through TensorBoard's own event reader and MLflow's client on a
SQLite store in a temporary folder."""

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from pipeline.cli import cli
from pipeline.experiments.sweep import run_sweep
from pipeline.experiments.tracked import evaluate_run as evaluate
from pipeline.experiments.tracked import train_run as train
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.orderdata import order_config, write_order_dataset

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"
QUIET = ("train.threads=1", "eval.threads=1")


def history(run_dir: Path) -> list[dict]:
    with open(run_dir / "history.csv") as f:
        return list(csv.DictReader(f))


def mlflow_run_id(cfg) -> str:
    return json.loads((Path(cfg.run.dir) / "mlflow.json").read_text())["run_id"]


def scalars(accumulator: EventAccumulator, tag: str) -> dict[int, float]:
    return {event.step: event.value for event in accumulator.Scalars(tag)}


def interrupt_after(epoch: int):
    def on_epoch(row: dict) -> None:
        if row["epoch"] == epoch:
            raise KeyboardInterrupt

    return on_epoch


@pytest.mark.slow
def test_every_run_writes_tensorboard_curves_and_hparams_with_its_final_metrics(tmp_path):
    cfg = order_config(tmp_path, *QUIET, "train.epochs=3")
    write_order_dataset(cfg)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch=interrupt_after(2))  # Ctrl-C once epoch 2's checkpoint is written
    train(cfg, resume=True)  # the curves go on where they stopped
    metrics = evaluate(cfg)
    rows = history(Path(cfg.run.dir))
    events = EventAccumulator(str(Path(cfg.run.dir) / "tb"))
    events.Reload()
    for tag, column in (("train/loss", "train_loss"), ("val/accuracy", "val_acc"), ("lr", "lr")):
        assert scalars(events, tag) == pytest.approx({int(r["epoch"]): float(r[column]) for r in rows})
    best = max(rows, key=lambda r: (float(r["val_acc"]), -float(r["val_loss"])))
    assert list(scalars(events, "hparams/val_top1").values())[-1] == pytest.approx(float(best["val_acc"]))
    assert scalars(events, "hparams/test_top1") == pytest.approx({3: metrics["top1"]})
    content = events.PluginTagToContent("hparams")
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    assert "hparams/test_top1" in {info.name.tag for info in experiment.metric_infos}
    session = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"])
    hparams = session.session_start_info.hparams
    assert hparams["model.name"].string_value == "bilstm" and hparams["train.epochs"].number_value == 3
    assert hparams["train.lr"].number_value == pytest.approx(0.005)


def test_tensorboard_can_be_switched_off(tmp_path):
    cfg = order_config(tmp_path, *QUIET, "train.epochs=1", "track.tensorboard=false")
    write_order_dataset(cfg)
    train(cfg)
    evaluate(cfg)
    assert (Path(cfg.run.dir) / "metrics.json").exists() and not (Path(cfg.run.dir) / "tb").exists()


@pytest.mark.slow
def test_mlflow_gets_params_epoch_metrics_and_artifacts_of_one_run_across_resume_and_evaluation(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    cfg = order_config(tmp_path, *QUIET, f"track.mlflow={uri}", "train.epochs=3")
    write_order_dataset(cfg)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, on_epoch=interrupt_after(2))
    assert MlflowClient(tracking_uri=uri).get_run(mlflow_run_id(cfg)).info.status == "KILLED"
    train(cfg, resume=True)
    metrics = evaluate(cfg)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("tiny")  # track.experiment defaults to data.name
    [run] = client.search_runs([experiment.experiment_id])
    assert run.info.run_id == mlflow_run_id(cfg)
    assert run.data.params["model.name"] == "bilstm" and run.data.params["train.lr"] == "0.005"
    rows = history(Path(cfg.run.dir))
    val_acc = client.get_metric_history(run.info.run_id, "val_acc")
    assert {m.step: m.value for m in val_acc} == pytest.approx({int(r["epoch"]): float(r["val_acc"]) for r in rows})
    assert run.data.metrics["test_top1"] == pytest.approx(metrics["top1"])
    artifacts = {Path(a.path).name for a in client.list_artifacts(run.info.run_id)}
    assert {"metrics.json", "curves.png", "confusion_matrix.png"} <= artifacts
    assert run.data.tags["actrec.checkpoint"] == str(Path(metrics["checkpoint"]).resolve())
    assert run.info.status == "FINISHED"
    assert (tmp_path / "mlartifacts").is_dir()  # beside the database, not in the working folder


@pytest.mark.slow
def test_sweep_and_tune_runs_are_grouped_in_one_mlflow_experiment_each(tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    sets = tiny_overrides(tmp_path) + ["train.epochs=1", "train.batch_size=8", *QUIET, f"track.mlflow={uri}"]
    write_order_dataset(order_config(tmp_path))
    run_sweep(CONFIG, sets, grid=["model.name=meanpool,tcn"], name="grid", root=tmp_path / "sweeps")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["tune", "-c", str(CONFIG), *[a for s in sets for a in ("--set", s)],
                                      "--param", "train.lr=float:1e-3:1e-2", "--trials", "2", "--name", "search",
                                      "--jobs", "2"])
    assert result.exit_code == 0, result.output
    client = MlflowClient(tracking_uri=uri)
    for name, run_dirs in (("sweep/grid", {"name=meanpool", "name=tcn"}), ("tune/search", {"trial-0000",
                                                                                           "trial-0001"})):
        runs = client.search_runs([client.get_experiment_by_name(name).experiment_id])
        assert {Path(run.data.tags["actrec.run_dir"]).name for run in runs} == run_dirs


@pytest.mark.slow
def test_mlflow_logs_to_a_local_folder_store(tmp_path):
    from mlflow.tracking import MlflowClient

    store = tmp_path / "mlruns"
    cfg = order_config(tmp_path, *QUIET, "train.epochs=1", f"track.mlflow={store}", "track.experiment=folder")
    write_order_dataset(cfg)
    train(cfg)
    evaluate(cfg)
    client = MlflowClient(tracking_uri=str(store))
    [run] = client.search_runs([client.get_experiment_by_name("folder").experiment_id])
    assert run.info.run_id == mlflow_run_id(cfg) and "test_top1" in run.data.metrics
    assert "metrics.json" in {Path(a.path).name for a in client.list_artifacts(run.info.run_id)}


@pytest.mark.parametrize("store", [pytest.param("sqlite:///{tmp}/file/mlflow.db", marks=pytest.mark.slow),
                                   "nonsense://store"])
def test_an_mlflow_store_that_cannot_be_opened_is_one_line(tmp_path, store):
    cfg = order_config(tmp_path)
    write_order_dataset(cfg)
    (tmp_path / "file").write_text("a file where the store's folder would be")
    url = store.format(tmp=tmp_path)
    sets = tiny_overrides(tmp_path) + ["train.epochs=1", f"track.mlflow={url}"]
    result = CliRunner().invoke(cli, ["-q", "train", "-c", str(CONFIG), *[a for s in sets for a in ("--set", s)]])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert f"track.mlflow={url}: cannot use this MLflow store" in result.stderr
