"""`actrec tune` as the terminal shows it: a space that cannot work refused at the plan, a failing trial one line
(terminal, leaderboard, study), the final line naming the first error, Ctrl-C without Optuna's tracebacks. Real
studies in SQLite, real training, the command in a process of its own where the terminal is what is tested."""

import logging
import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
from optuna.trial import TrialState

from pipeline.experiments.tune import parse_space, plan_tune
from tests.experiments.test_sweep import read_leaderboard
from tests.experiments.test_tune import BASE, CONFIG, load_study, tune
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.orderdata import order_config, write_order_dataset


@pytest.fixture
def tune_args(tmp_path, monkeypatch):
    """CLI arguments of a tiny order-dataset config (cache written), run from tmp_path (as test_tune's)."""
    write_order_dataset(order_config(tmp_path))
    monkeypatch.chdir(tmp_path)
    return ["-c", str(CONFIG)] + [a for s in tiny_overrides(tmp_path) + BASE for a in ("--set", s)]


TRANSFORMER = ["--set", "model.name=transformer", "--set", "model.latent_dim=16"]


@pytest.mark.parametrize("space", [["model.heads=int:3:3"], ["model.heads=cat:3,5,6"],
                                   ["model.heads=int:3:3", "train.lr=float:1e-3:1e-2"]])
def test_a_space_whose_every_point_fails_the_models_checks_is_refused_at_the_plan(tune_args, tmp_path, space):
    result = tune(tune_args, *TRANSFORMER, "--name", "heads", *[a for p in space for a in ("--param", p)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "every point of the search space fails" in result.stderr
    assert "model.latent_dim=16 is not a multiple of model.heads=3" in result.stderr
    assert not (tmp_path / "runs").exists()


def test_a_space_where_only_some_points_fail_is_planned_with_one_warning(tune_args, caplog):
    sets = [tune_args[i + 1] for i, arg in enumerate(tune_args) if arg == "--set"]
    with caplog.at_level(logging.WARNING, logger="pipeline"):
        spec = plan_tune(str(CONFIG), sets + ["model.name=transformer", "model.latent_dim=16"],
                         parse_space(["model.heads=int:2:13"]), "some", 2, None, "median")
    assert spec.name == "some"
    [record] = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert "2 of 3 checked points of the search space fail" in record.getMessage()


def run_tune(tmp_path, *args, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "TQDM_DISABLE": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "tune", *args], env=env, cwd=tmp_path, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


@pytest.mark.slow
def test_a_failing_trial_is_one_line_on_the_terminal_in_the_leaderboard_and_the_study(tune_args, tmp_path):
    # A stale folder where trial 0 will train: its last.pt is no checkpoint. The plan cannot tell; the trial fails.
    stale = tmp_path / "runs" / "tune" / "x" / "trial-0000" / "checkpoints"
    stale.mkdir(parents=True)
    (stale / "last.pt").write_text("not a checkpoint")
    process = run_tune(tmp_path, *tune_args, "--set", "train.epochs=1", "--param", "train.lr=float:1e-3:1e-2",
                       "--trials", "1", "--name", "x")
    _, err = process.communicate(timeout=180)
    assert process.returncode == 2, err
    assert "Traceback" not in err and "Trial 0 failed" not in err, err
    [trial] = load_study(tmp_path / "runs" / "tune" / "x", "x").trials
    error = trial.user_attrs["error"]
    assert trial.state == TrialState.FAIL and "last.pt is not a checkpoint" in error and "\n" not in error
    assert [line for line in err.splitlines() if "trial 0 failed" in line] == [
        f"warning: trial 0 failed (recorded; the study goes on): {error}"]
    assert read_leaderboard(tmp_path / "runs" / "tune" / "x")[0]["error"] == error
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: no trial of study x finished (1 failed; the first, trial 0: ") and error in last


@pytest.mark.slow
def test_ctrl_c_during_a_trial_is_one_line_without_optunas_traceback(tune_args, tmp_path):
    process = run_tune(tmp_path, *tune_args, "--set", "train.epochs=200", "--param", "train.lr=float:1e-3:1e-2",
                       "--trials", "2", "--name", "c")
    last_pt = tmp_path / "runs" / "tune" / "c" / "trial-0000" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last_pt.exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)  # as Ctrl-C in the terminal, mid-trial
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "Trial 0 failed" not in err, err
    assert err.strip().splitlines()[-1] == "interrupted; finished work is kept, run the command again to resume"
    [trial] = optuna.load_study(study_name="c", storage=f"sqlite:///{tmp_path}/runs/tune/c/study.db").trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"]
