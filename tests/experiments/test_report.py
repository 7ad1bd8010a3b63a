"""Leaderboards and `actrec report`: ranking by validation, records trusted only when whole, means over splits of
comparable runs only; the report layer imports no torch."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import load_config
from pipeline.experiments.plan import comparable_settings, plan_sweep
from pipeline.experiments.report import finished, summarize_runs, write_sweep_leaderboard
from pipeline.fileio import write_json
from tests.helpers import PROJECT_ROOT, tiny_overrides

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"


def write_metrics(run_dir: Path, model: str, split, top1: float, pair=None, config=None) -> None:
    """A metrics.json as `actrec evaluate` writes it and, given ``config`` (--set overrides), the config.yaml."""
    run_dir.mkdir(parents=True, exist_ok=True)
    metrics = {"model": model, "split": split, "top1": top1, "top5": 1.0, "mean_class_accuracy": top1,
               "clip_top1": top1, "leaks_groups": split == "random", "confusion_matrix": [[1]]}
    if pair is not None:
        metrics["pair_accuracy"] = pair
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    if config is not None:
        cfg = load_config(CONFIG, [f"model.name={model}", f"data.split={split}", *config]).to_dict()
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))


def record_done(run, val_top1, val_loss, test_top1) -> None:
    write_json(run.dir / "sweep.json", {"status": "done", "settings": comparable_settings(run.config), "epochs": 2,
                                        "val_top1": val_top1, "val_loss": val_loss, "seconds": 1.0,
                                        "test_top1": test_top1, "mean_class_accuracy": test_top1})
    write_metrics(run.dir, "bilstm", 1, test_top1)


def test_leaderboard_ranks_by_validation_accuracy_then_loss_never_by_test(tmp_path):
    folder, runs = plan_sweep(CONFIG, tiny_overrides(tmp_path), grid=["train.lr=0.1,0.01,0.001,0.0001"],
                              name="rank", root=tmp_path / "sweeps")
    results = [(0.8, 0.5, 0.99), (0.9, 0.7, 0.10), (0.9, 0.3, 0.20), None]  # val acc, val loss, test acc
    for run, result in zip(runs, results):
        if result:
            record_done(run, *result)
    rows = write_sweep_leaderboard(folder, runs)
    assert [row["train.lr"] for row in rows] == ["0.001", "0.01", "0.1", "0.0001"]
    assert rows[-1]["status"] == "pending" and rows[-1]["error"] == "not run yet"
    text = (folder / "leaderboard.md").read_text()
    assert text.index("| 1 | 0.001 |") < text.index("| 2 | 0.01 |") < text.index("| 3 | 0.1 |")
    assert "| - | 0.0001 |" in text and (folder / "leaderboard.png").stat().st_size > 0


def test_a_run_whose_metrics_were_cut_short_or_whose_settings_changed_is_not_finished(tmp_path):
    folder, runs = plan_sweep(CONFIG, tiny_overrides(tmp_path), grid=["train.lr=0.1,0.01"], name="cut",
                              root=tmp_path / "sweeps")
    for run in runs:
        record_done(run, 0.5, 0.5, 0.5)
    assert all(finished(run) for run in runs)
    metrics = runs[0].dir / "metrics.json"
    metrics.write_text(metrics.read_text()[: len(metrics.read_text()) // 2])  # a kill mid-write, without atomicity
    assert not finished(runs[0]) and finished(runs[1])
    assert [row["status"] for row in write_sweep_leaderboard(folder, runs)] == ["done", "pending"]
    _, again = plan_sweep(CONFIG, tiny_overrides(tmp_path) + ["train.epochs=3"], grid=["train.lr=0.1,0.01"],
                          name="cut", root=tmp_path / "sweeps")
    assert not finished(again[1])  # recorded for other settings


def test_means_over_splits_group_by_every_training_setting_count_each_split_once_and_leave_out_random(tmp_path):
    for split, top1 in ((1, 0.80), (2, 0.70), (3, 0.75)):
        write_metrics(tmp_path / f"bilstm_split{split}", "bilstm", split, top1, pair=0.9, config=[])
    write_metrics(tmp_path / "bilstm_random", "bilstm", "random", 0.99, pair=0.9, config=[])
    write_metrics(tmp_path / "bilstm_split1_again", "bilstm", 1, 0.10, pair=0.9, config=[])
    for split, top1 in ((1, 0.40), (2, 0.60)):  # the same model with another learning rate: another mean
        write_metrics(tmp_path / f"lr_split{split}", "bilstm", split, top1, config=["train.lr=0.01"])
    write_metrics(tmp_path / "meanpool_split1", "meanpool", 1, 0.5, pair=0.5, config=[])
    names = ["bilstm_split1", "bilstm_split2", "bilstm_split3", "bilstm_random", "bilstm_split1_again",
             "lr_split1", "lr_split2", "meanpool_split1"]
    dirs = [tmp_path / name for name in names] + [tmp_path / "bilstm_split2"]  # one named twice
    summary = summarize_runs(dirs)
    assert len(summary["runs"]) == 8
    first, second = summary["means"]
    assert first["splits"] == ["1", "2", "3"] and first["mean_top1"] == pytest.approx(0.75)
    assert [Path(d).name for d in first["run_dirs"]] == ["bilstm_split1", "bilstm_split2", "bilstm_split3"]
    assert [Path(d).name for d in first["left_out"]] == ["bilstm_random", "bilstm_split1_again"]
    assert second["splits"] == ["1", "2"] and second["mean_top1"] == pytest.approx(0.5)

    result = CliRunner().invoke(cli, ["report", *map(str, dirs)])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    mean_row = next(line for line in lines if line.startswith("mean 1 "))
    assert "bilstm" in mean_row and "0.7500" in mean_row and "0.9000" in mean_row
    assert ("note: mean 1: the runs bilstm_split1, bilstm_split2, bilstm_split3 (same training settings, one per "
            "split); not counted again: bilstm_random, bilstm_split1_again") in lines
    assert "never averaged" in result.output and not any(line.startswith("mean 3") for line in lines)


def test_runs_without_a_config_are_grouped_by_model_and_backbone(tmp_path):
    for split in (1, 2):
        write_metrics(tmp_path / f"a{split}", "bilstm", split, 0.5 + split / 10)
    (mean,) = summarize_runs([tmp_path / "a1", tmp_path / "a2"])["means"]
    assert mean["mean_top1"] == pytest.approx(0.65)


def test_report_on_a_run_without_metrics_fails_cleanly(tmp_path):
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "run `actrec evaluate`" in result.output


def test_report_refuses_a_foreign_metrics_file(tmp_path):
    (tmp_path / "metrics.json").write_text("[1, 2]")
    result = CliRunner().invoke(cli, ["report", str(tmp_path)])
    assert result.exit_code == 2 and "not a metrics.json written by `actrec evaluate`" in result.output


def test_report_shows_how_many_test_videos_had_no_features(tmp_path):
    write_metrics(tmp_path / "a", "bilstm", "1", 0.5)
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    metrics.update(num_videos=3783, num_failed=2)
    (tmp_path / "a" / "metrics.json").write_text(json.dumps(metrics))
    result = CliRunner().invoke(cli, ["report", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    header, _, row = result.output.splitlines()[:3]
    assert "videos" in header and "failed" in header
    assert row.split()[4:6] == ["3783", "2"] and "counts them as wrong answers" in result.output


def test_planning_reporting_and_the_leaderboard_import_no_torch(tmp_path):
    """The report layer runs where torch is not installed (a laptop reading a cluster's runs)."""
    write_metrics(tmp_path / "a1", "bilstm", 1, 0.5, config=[])
    code = (f"import sys\n"
            f"from pipeline.experiments.report import report_text\n"
            f"import pipeline.experiments.sweep, pipeline.experiments.plan, pipeline.cli\n"
            f"report_text([{str(tmp_path / 'a1')!r}])\n"
            f"assert 'torch' not in sys.modules, 'torch was imported'\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            env={"PYTHONPATH": str(PROJECT_ROOT), "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
