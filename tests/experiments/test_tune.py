"""actrec tune: an Optuna study over real training runs on a tiny HDF5 cache, in a real SQLite database;
bad input refused with one line before anything is written; a killed study continues on the next run."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from click.testing import CliRunner
from optuna.trial import TrialState

from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.experiments.tune import parse_param, parse_space
from tests.experiments.test_sweep import read_leaderboard
from tests.helpers import PROJECT_ROOT, tiny_overrides
from tests.orderdata import interrupt_at_validation, order_config, write_order_dataset

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"
BASE = ["train.batch_size=8", "model.dropout=0.0", "data.val_fraction=0.2", "train.threads=1", "eval.threads=1",
        "tune.startup_trials=2", "tune.warmup_epochs=1"]


@pytest.fixture
def tune_args(tmp_path, monkeypatch):
    """CLI arguments of a tiny order-dataset config (cache written), run from tmp_path (runs/tune/ lands there)."""
    write_order_dataset(order_config(tmp_path))
    monkeypatch.chdir(tmp_path)
    sets = tiny_overrides(tmp_path) + BASE
    return ["-c", str(CONFIG)] + [a for s in sets for a in ("--set", s)]


def tune(args, *more):
    return CliRunner().invoke(cli, ["tune", *args, *more])


def load_study(folder: Path, name: str):
    return optuna.load_study(study_name=name, storage=f"sqlite:///{folder / 'study.db'}")


def test_params_parse_into_distributions_and_a_space_file_lists_them(tmp_path):
    assert parse_param("model.hidden_dim=int:128:2048:log") == parse_param("model.hidden_dim = int:128:2048:log")
    lr = parse_param("train.lr=float:1e-5:1e-2:log")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 1e-5, 1e-2, True)
    assert parse_param("model.name=cat:bilstm,meanpool").choices == ("bilstm", "meanpool")
    space = tmp_path / "space.txt"
    space.write_text("# the demo space\n--param train.lr=float:1e-4:1e-2:log\n\nmodel.layers=int:1:3  # depth\n")
    assert [p.spec for p in parse_space(["model.name=cat:bilstm,tcn"], space)] == [
        "cat:bilstm,tcn", "float:0.0001:0.01:log", "int:1:3"]
    with pytest.raises(ActrecError, match="line 2 .*train.lr is searched twice"):
        parse_space(["train.lr=float:1e-4:1e-3"], space)


@pytest.mark.parametrize("extra, words", [
    (["--param", "model.hiden_dim=int:8:16"], ["unknown key 'model.hiden_dim'"]),
    (["--param", "model.hidden_dim=normal:8:16"], ["unknown distribution 'normal'"]),
    (["--param", "model.hidden_dim=int:16:8"], ["LOW 16 is above HIGH 8"]),
    (["--param", "train.lr=float:0:1e-2:log"], ["log range must be above 0"]),
    (["--param", "train.lr=float:1e-3:fast"], ["must be numbers"]),
    (["--param", "model.hidden_dim=int:0:8"], ["model.hidden_dim=int:0:8", "0 is not a valid value"]),
    (["--param", "model.name=cat:bilstm,lstm"], ["lstm is not a valid value"]),
    (["--param", "embed.img_dim=int:32:64"], ["embed.img_dim cannot vary in a tune", "changes the features"]),
    (["--param", "data.val_fraction=float:0.1:0.3"], ["data.val_fraction cannot vary in a tune", "validation"]),
    (["--param", "data.split=cat:1,2"], ["data.split cannot vary in a tune"]),
    (["--param", "train.threads=int:1:2"], ["train.threads cannot vary in a tune", "changes nothing"]),
    ([], ["nothing to search"]),
])
def test_bad_params_are_refused_with_one_line_and_nothing_written(tune_args, tmp_path, extra, words):
    result = tune(tune_args, "--name", "bad", *extra)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert all(word in result.stderr for word in words), result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["../escaped", "/abs/path", "a/b", ".", "..", "sp ace", ""])
def test_a_study_name_must_be_one_safe_folder_name(tune_args, tmp_path, name):
    result = tune(tune_args, "--name", name, "--param", "train.lr=float:1e-3:1e-2")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "--name" in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path.parent / "escaped").exists()


@pytest.mark.parametrize("storage", ["sqlite:///{tmp}/no/such/folder/study.db", "nonsense://x", "not a url"])
def test_a_storage_that_cannot_be_opened_is_one_line_and_nothing_written(tune_args, tmp_path, storage):
    url = storage.format(tmp=tmp_path)
    result = tune(tune_args, "--name", "s", "--param", "train.lr=float:1e-3:1e-2", "--storage", url)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and url in result.stderr, result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "no").exists()


def test_a_missing_cache_is_one_line_before_the_study_is_created(tune_args, tmp_path):
    result = tune(tune_args, "--name", "s", "--param", "train.lr=float:1e-3:1e-2", "--set",
                  f"cache.path={tmp_path}/missing.h5")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1 and "missing.h5" in result.stderr
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_tune_prunes_ranks_by_validation_and_tests_only_the_pick(tune_args, tmp_path):
    # A rate of 1e-6 cannot learn in 4 epochs, nor meanpool tell a time-reversed pair apart: the median pruner
    # stops trials that fall behind once two have finished.
    space = ["--param", "train.lr=cat:0.02,0.000001", "--param", "model.name=cat:meanpool,bilstm"]
    result = tune(tune_args, "--set", "train.epochs=4", *space, "--trials", "6", "--name", "study")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "tune" / "study"
    study = load_study(folder, "study")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) >= 6
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned and all(max(t.intermediate_values.values()) < study.best_value for t in pruned)
    rows = read_leaderboard(folder)
    by_dir = {Path(row["run_dir"]).name: row for row in rows}
    for trial in study.trials:
        run_dir = Path(trial.user_attrs["run_dir"])
        assert run_dir.parent == Path("runs/tune/study") and (run_dir / "config.yaml").exists()
        epochs = len(trial.intermediate_values)
        assert int(by_dir[run_dir.name]["epochs"]) == epochs
        assert epochs == 4 if trial.state == TrialState.COMPLETE else epochs < 4
        if trial.state == TrialState.PRUNED:
            assert by_dir[run_dir.name]["error"].startswith("pruned after epoch")
    done = [row for row in rows if row["error"] == ""]
    assert [float(r["val_top1"]) for r in done] == sorted((float(r["val_top1"]) for r in done), reverse=True)
    assert [bool(row["test_top1"]) for row in rows] == [True] + [False] * (len(rows) - 1)
    best = json.loads((folder / "best.json").read_text())
    metrics = json.loads((Path(best["run_dir"]) / "metrics.json").read_text())
    assert best["test_top1"] == pytest.approx(metrics["top1"]) == pytest.approx(float(rows[0]["test_top1"]))
    assert best["val_top1"] == pytest.approx(study.best_value)
    assert f"test top-1 {metrics['top1']:.4f}" in result.stdout
    assert (folder / "leaderboard.png").stat().st_size > 0
    report = CliRunner().invoke(cli, ["report", str(folder)])
    assert report.exit_code == 0 and best["run_dir"] in report.output
    # The same command again: the study has its trials, nothing runs again, the pick is not re-evaluated.
    stamp = (Path(best["run_dir"]) / "metrics.json").stat().st_mtime_ns
    again = tune(tune_args, "--set", "train.epochs=4", *space, "--trials", "6", "--name", "study")
    assert again.exit_code == 0 and len(load_study(folder, "study").trials) == len(study.trials)
    assert (Path(best["run_dir"]) / "metrics.json").stat().st_mtime_ns == stamp
    other = tune(tune_args, "--set", "train.epochs=4", "--param", "train.lr=float:1e-3:1e-2", "--name", "study")
    assert other.exit_code == 2 and "searches" in other.stderr and "another --name" in other.stderr


@pytest.mark.slow
def test_a_killed_tune_continues_and_its_running_trial_resumes_from_its_checkpoint(tune_args, tmp_path):
    args = [*tune_args, "--set", "train.epochs=8", "--param", "train.lr=float:1e-3:1e-2", "--trials", "2",
            "--name", "k"]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "pipeline", "tune", *args], env=env, cwd=tmp_path,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    run_dir = tmp_path / "runs" / "tune" / "k" / "trial-0000"
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists() and process.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed = load_study(tmp_path / "runs" / "tune" / "k", "k").trials[0]
    assert killed.state == TrialState.RUNNING  # as the kill left it
    epochs_before = len((run_dir / "history.csv").read_text().splitlines()) - 1
    assert 1 <= epochs_before < 8

    result = tune(args)
    assert result.exit_code == 0, result.output
    trials = load_study(tmp_path / "runs" / "tune" / "k", "k").trials
    assert trials[0].state == TrialState.FAIL
    retry = next(t for t in trials if t.user_attrs.get("retry_of") == 0)
    assert retry.state == TrialState.COMPLETE and retry.params == trials[0].params
    assert retry.user_attrs["run_dir"] == str(run_dir.relative_to(tmp_path))
    assert sorted(retry.intermediate_values) == list(range(1, 9))
    assert f"resuming {retry.user_attrs['run_dir']}/checkpoints/last.pt" in result.stderr
    assert sum(t.state == TrialState.COMPLETE for t in trials) == 2
    assert len(read_leaderboard(tmp_path / "runs" / "tune" / "k")) == 2


@pytest.mark.slow
def test_ctrl_c_stops_the_study_and_the_next_run_resumes_the_stopped_trial(tune_args, tmp_path, monkeypatch):
    args = [*tune_args, "--set", "train.epochs=3", "--param", "train.lr=float:1e-3:1e-2", "--trials", "1",
            "--name", "c", "--pruner", "halving"]
    interrupt_at_validation(monkeypatch, call=3)  # Ctrl-C in epoch 3 of trial 0, after 2 epochs' checkpoints
    stopped = tune(args)
    assert stopped.exit_code == 130 and "run the command again to resume" in stopped.stderr
    folder = tmp_path / "runs" / "tune" / "c"
    [trial] = load_study(folder, "c").trials
    assert trial.state == TrialState.FAIL and trial.user_attrs["interrupted"]
    assert (folder / "leaderboard.md").exists()  # what finished, written on the way out
    monkeypatch.undo()
    monkeypatch.chdir(tmp_path)
    result = tune(args)
    assert result.exit_code == 0, result.output
    first, retry = load_study(folder, "c").trials
    assert retry.user_attrs["retry_of"] == 0 and retry.params == first.params
    assert retry.state == TrialState.COMPLETE and sorted(retry.intermediate_values) == [1, 2, 3]
    assert "resuming runs/tune/c/trial-0000/checkpoints/last.pt after epoch 2 of 3" in result.stderr
    assert [row["run_dir"] for row in read_leaderboard(folder)] == ["runs/tune/c/trial-0000"]


def test_a_space_over_models_with_different_keys_draws_only_the_keys_the_chosen_model_takes():
    from optuna.trial import FixedTrial

    from pipeline.config import load_config
    from pipeline.experiments.tune import parse_space, suggest

    params = parse_space(["model.attention=cat:true,false", "model.name=cat:meanpool,bilstm"])
    base = load_config(PROJECT_ROOT / "configs" / "synthetic.yaml").to_dict()
    assert suggest(FixedTrial({"model.name": "meanpool"}), params, base) == {"model.name": "meanpool"}
    assert suggest(FixedTrial({"model.name": "bilstm", "model.attention": "false"}), params, base) == {
        "model.name": "bilstm", "model.attention": "false"}
