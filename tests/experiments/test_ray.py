"""Sweeps and tunes on a real local Ray cluster that these tests start (2 CPUs, no GPU): runs and trials as Ray
tasks in Ray's own worker processes, a worker killed mid-run (the others go on, the run or trial is recorded
failed and resumes from its last checkpoint on the next run), and GPU training refused where there is no GPU."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.experiments.sweep import run_sweep
from tests.experiments.test_sweep import read_leaderboard
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.orderdata import order_config, write_order_dataset

ray = pytest.importorskip("ray")  # in the test extra; `pip install -e '.[cluster]'`

pytestmark = [pytest.mark.slow, pytest.mark.ray]  # run apart from the xdist workers: see setup.cfg

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"
BASE = ["train.batch_size=8", "model.dropout=0.0", "data.val_fraction=0.2", "train.threads=1", "eval.threads=1",
        "train.lr=0.005", "tune.startup_trials=100", "tune.warmup_epochs=1000"]  # no pruning: every trial trains


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A local Ray cluster of 2 CPUs and no GPU (its own GCS, raylet and worker processes), for this module."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, logging_level="WARNING",
             object_store_memory=80 * 1024 * 1024, _temp_dir=str(tmp_path_factory.mktemp("ray")))
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.fixture
def sets(tmp_path):
    write_order_dataset(order_config(tmp_path))
    return tiny_overrides(tmp_path) + BASE


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def in_thread(func, *args, **kwargs) -> tuple[threading.Thread, dict]:
    outcome = {}

    def body():
        try:
            outcome["result"] = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=body)
    thread.start()
    return thread, outcome


def test_a_sweep_on_ray_goes_on_when_a_worker_is_killed_and_resumes_the_killed_run(cluster, sets, tmp_path):
    root = tmp_path / "sweeps"
    grid = ["model.name=meanpool,tcn"]
    long = sets + ["train.epochs=12"]
    thread, outcome = in_thread(run_sweep, CONFIG, long, grid, None, "k", 2, "ray", cluster, root=root)
    killed = root / "k" / "name=meanpool"
    wait_for(lambda: (killed / "checkpoints" / "last.pt").exists(), what="the first checkpoint")
    record = json.loads((killed / "sweep.json").read_text())
    assert record["status"] == "running" and record["pid"] != os.getpid()  # trains in a Ray worker process
    os.kill(record["pid"], signal.SIGKILL)  # the worker dies mid-run, as under the out-of-memory killer
    thread.join(300)
    result = outcome["result"]
    rows = {row["model.name"]: row for row in result["rows"]}
    assert result["failed"] == 1 and rows["meanpool"]["status"] == "failed"
    assert rows["meanpool"]["error"].startswith("the Ray task failed: ") and "\n" not in rows["meanpool"]["error"]
    assert rows["tcn"]["status"] == "done" and rows["tcn"]["error"] == ""  # the other run went on
    epochs_before = len((killed / "history.csv").read_text().splitlines()) - 1
    assert 1 <= epochs_before < 12

    again = run_sweep(CONFIG, long, grid, name="k", jobs=2, backend="ray", scheduler=cluster, root=root)
    assert again["failed"] == 0 and all(row["status"] == "done" for row in again["rows"])
    history = (killed / "history.csv").read_text().splitlines()[1:]
    assert [int(line.split(",")[0]) for line in history] == list(range(1, 13))  # resumed, not restarted


def test_a_tune_on_ray_goes_on_when_a_worker_is_killed_and_resumes_its_trial(cluster, sets, tmp_path, monkeypatch):
    from optuna.trial import TrialState

    from pipeline.experiments.tune import parse_space, plan_tune, run_tune
    from tests.experiments.test_tune import load_study

    monkeypatch.chdir(tmp_path)
    spec = plan_tune(str(CONFIG), sets + ["train.epochs=12"], parse_space(["train.lr=float:1e-3:1e-2"]), "r", 3,
                     None, "median")
    thread, outcome = in_thread(run_tune, spec, 2, "ray", cluster)
    folder = tmp_path / "runs" / "tune" / "r"
    wait_for(lambda: (folder / "trial-0000" / "checkpoints" / "last.pt").exists(), what="trial 0's checkpoint")
    [trial] = [t for t in load_study(folder, "r").trials if t.number == 0]
    assert trial.user_attrs["pid"] != os.getpid()
    os.kill(trial.user_attrs["pid"], signal.SIGKILL)
    thread.join(300)
    assert "error" not in outcome, outcome
    trials = {t.number: t for t in load_study(folder, "r").trials}
    assert trials[0].state == TrialState.FAIL and "was killed mid-trial" in trials[0].user_attrs["error"]
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 2  # the other worker went on
    retry = next(t for t in trials.values() if t.user_attrs.get("retry_of") == 0)
    assert retry.state == TrialState.WAITING and retry.user_attrs["run_dir"] == trials[0].user_attrs["run_dir"]
    rows = {Path(row["run_dir"]).name: row for row in read_leaderboard(folder)}
    assert rows["trial-0000"]["error"] == trials[0].user_attrs["error"]  # recorded failed, with why

    again = run_tune(spec, 2, "ray", cluster)
    trials = {t.number: t for t in load_study(folder, "r").trials}
    assert trials[retry.number].state == TrialState.COMPLETE
    assert sorted(trials[retry.number].intermediate_values) == list(range(1, 13))  # its epochs, once each
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 3 and again["best"]["test_top1"] is not None


@pytest.mark.parametrize("command", ["sweep", "tune"])
def test_gpu_training_on_a_ray_cluster_without_gpus_is_refused_in_one_line(cluster, sets, tmp_path, monkeypatch,
                                                                           command):
    monkeypatch.chdir(tmp_path)
    args = {"sweep": ["--grid", "model.name=meanpool,tcn"],
            "tune": ["--param", "train.lr=float:1e-3:1e-2", "--name", "g", "--trials", "2"]}[command]
    result = CliRunner().invoke(cli, ["-q", command, "-c", str(CONFIG), *[a for s in sets for a in ("--set", s)],
                                      "--set", "train.device=cuda", "--backend", "ray", "--scheduler", cluster, *args])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "--backend ray: the runs train on cuda but no ray worker offers a GPU" in result.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything was written


def test_cpu_training_on_ray_uses_the_clusters_workers(cluster, sets, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative run dirs: each Ray task works in the sweep's folder
    result = CliRunner().invoke(cli, ["sweep", "-c", str(CONFIG), *[a for s in sets for a in ("--set", s)],
                                      "--grid", "model.name=meanpool,tcn", "--backend", "ray", "--scheduler", cluster])
    assert result.exit_code == 0, result.output
    records = [json.loads(p.read_text()) for p in Path("runs/sweeps").glob("*/*/sweep.json")]
    assert len(records) == 2 and all(r["status"] == "done" and r["pid"] != os.getpid() for r in records)
