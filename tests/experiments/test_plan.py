"""Sweep planning: grids and runs files parsed, counted, checked and named before anything is written."""

import logging
import time

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.experiments.plan import (
    comparable_settings,
    expand_grid,
    grid_size,
    parse_grid,
    parse_runs_file,
    plan_sweep,
)
from pipeline.fileio import safe_name
from tests.helpers import PROJECT_ROOT, tiny_overrides

CONFIG = PROJECT_ROOT / "configs" / "synthetic.yaml"


@pytest.fixture
def sets(tmp_path):
    return tiny_overrides(tmp_path)


def sweep_cli(sets, *args):
    return CliRunner().invoke(cli, ["sweep", "-c", str(CONFIG), *args] + [a for s in sets for a in ("--set", s)])


def test_grid_is_the_cross_product_and_runs_files_list_runs(tmp_path):
    axes = parse_grid(["model.hidden_dim=8,16", "train.lr=1e-3, 3e-4", "model.name=bilstm"])
    assert grid_size(axes) == 4
    assert [v.values for v in expand_grid(axes)] == [
        {"model.hidden_dim": h, "train.lr": lr, "model.name": "bilstm"} for h in ("8", "16") for lr in ("1e-3", "3e-4")]
    runs = tmp_path / "runs.txt"
    runs.write_text("# demo\nmodel.name=meanpool\n\n--set model.name=bilstm model.attention=false  # no attention\n")
    variants = parse_runs_file(runs)
    assert [v.values for v in variants] == [{"model.name": "meanpool"},
                                            {"model.name": "bilstm", "model.attention": "false"}]
    assert variants[1].where == f"line 4 of {runs}"
    with pytest.raises(ActrecError, match="hidden_dim is given twice"):
        parse_grid(["model.hidden_dim=8", "model.hidden_dim=16"])


def test_a_key_set_twice_on_one_runs_line_is_refused_with_its_line_number(tmp_path):
    runs = tmp_path / "runs.txt"
    runs.write_text("model.name=tcn\nmodel.name=meanpool model.name=bilstm\n")
    with pytest.raises(ActrecError, match=r"line 2: model.name is set twice \(model.name=meanpool and "
                                          r"model.name=bilstm\)"):
        parse_runs_file(runs)


def test_runs_equal_once_parsed_are_refused_naming_both_lines(tmp_path, sets):
    runs = tmp_path / "runs.txt"
    runs.write_text("train.lr=0.001\nmodel.name=tcn\ntrain.lr=1e-3\n")
    with pytest.raises(ActrecError, match=r"line 1 of .*runs.txt and line 3 of .*runs.txt are the same run "
                                          r"\(train.lr=0.001 vs train.lr=1e-3"):
        plan_sweep(CONFIG, sets, runs_file=runs, name="dup", root=tmp_path / "sweeps")
    with pytest.raises(ActrecError, match="are the same run"):
        plan_sweep(CONFIG, sets, grid=["train.lr=0.001,1e-3"], name="dup", root=tmp_path / "sweeps")
    assert not (tmp_path / "sweeps").exists()


@pytest.mark.parametrize("name", ["../escaped", "/abs/path", "..", ".", "a/b", "", "x" * 201, "sp ace", "new\nline"])
def test_a_sweep_name_that_is_not_one_folder_name_is_refused_before_anything_is_written(tmp_path, sets, name,
                                                                                        monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = sweep_cli(sets, "--grid", "model.name=meanpool,tcn", "--name", name)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert "--name" in result.stderr and "one folder name" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_safe_name_accepts_plain_names_and_generated_run_names_stay_one_component(tmp_path, sets):
    assert safe_name("demo_2.v-1", "--name") == "demo_2.v-1"
    folder, runs = plan_sweep(CONFIG, sets, grid=["eval.checkpoint=../../x/y.pt,/abs/b.pt"], name="ok",
                              root=tmp_path / "sweeps")
    assert [run.dir.parent for run in runs] == [folder, folder]
    assert [run.name for run in runs] == ["checkpoint=..-..-x-y.pt", "checkpoint=-abs-b.pt"]


def test_keys_that_change_the_features_or_the_validation_or_test_set_cannot_vary(tmp_path, sets):
    for key, value in [("embed.backbone", "resnet18,resnet50"), ("data.val_fraction", "0.1,0.2"),
                       ("data.seed", "0,1"), ("data.split", "1,2"), ("data.format", "ucf101,hmdb51"),
                       ("embed.splits", "configured,all"), ("data.random_test_fraction", "0.1,0.2")]:
        with pytest.raises(ActrecError, match=f"{key} cannot vary in a sweep: it changes the "
                                              f"(features|validation or test set)"):
            plan_sweep(CONFIG, sets, grid=[f"{key}={value}"], name="bad", root=tmp_path / "sweeps")
    for key in ("run.dir", "cache.path", "sweep.max_runs"):
        with pytest.raises(ActrecError, match=f"{key} cannot vary in a sweep"):
            plan_sweep(CONFIG, sets, grid=[f"{key}=1,2"], name="bad", root=tmp_path / "sweeps")


def test_bad_keys_and_values_are_refused_naming_the_run(tmp_path, sets):
    with pytest.raises(ActrecError, match="unknown key 'model.hiden_dim'"):
        plan_sweep(CONFIG, sets, grid=["model.hiden_dim=8,16"], name="bad", root=tmp_path / "sweeps")
    with pytest.raises(ActrecError, match="--grid run model.name=lstm: .*model.name: 'lstm' is not allowed"):
        plan_sweep(CONFIG, sets, grid=["model.name=bilstm,lstm"], name="bad", root=tmp_path / "sweeps")
    result = sweep_cli(sets, "--grid", "train.lr=0.1,fast")
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "train.lr" in result.stderr and "'fast'" in result.stderr


def test_a_huge_grid_is_counted_and_refused_at_once_and_a_big_one_plans_in_linear_time(tmp_path, sets):
    grid = [f"model.{key}={','.join(str(v) for v in range(1, 11))}"
            for key in ("hidden_dim", "latent_dim", "layers")] + [
        f"train.{key}={','.join(str(v) for v in range(1, 11))}" for key in ("epochs", "batch_size", "seed")]
    started = time.perf_counter()
    with pytest.raises(ActrecError, match=r"the --grid has 1,000,000 runs, more than sweep.max_runs=1000"):
        plan_sweep(CONFIG, sets, grid=grid, name="huge", root=tmp_path / "sweeps")
    assert time.perf_counter() - started < 0.5
    started = time.perf_counter()
    _, runs = plan_sweep(CONFIG, sets, grid=grid[:3], name="big", root=tmp_path / "sweeps")
    seconds = time.perf_counter() - started
    assert len(runs) == 1000 and len({run.dir for run in runs}) == 1000
    assert seconds < 10, f"planning 1000 runs took {seconds:.1f} s"
    with pytest.raises(ActrecError, match="sweep.max_runs=999"):
        plan_sweep(CONFIG, sets + ["sweep.max_runs=999"], grid=grid[:3], name="big", root=tmp_path / "sweeps")
    assert not (tmp_path / "sweeps").exists()


def test_comparable_settings_read_values_as_parsed(sets):
    from pipeline.config import load_config

    first, second = (load_config(CONFIG, sets + [f"train.lr={lr}"]).to_dict() for lr in ("0.001", "1e-3"))
    assert comparable_settings(first) == comparable_settings(second)
    first["train"]["threads"] = 7  # speed settings do not change what a run computes
    assert comparable_settings(first) == comparable_settings(second)
    first["model"]["hidden_dim"] = 9
    assert comparable_settings(first)["model.hidden_dim"] == "9" != comparable_settings(second)["model.hidden_dim"]


def test_runs_that_differ_only_in_keys_their_model_ignores_are_trained_once(tmp_path, sets, caplog):
    grid = ["model.name=meanpool,bilstm", "model.attention=true,false"]
    with caplog.at_level(logging.WARNING, logger="pipeline.experiments.plan"):
        _, runs = plan_sweep(CONFIG, sets, grid=grid, name="ignored", root=tmp_path / "sweeps")
    assert sorted((r.varied["model.name"], r.varied["model.attention"]) for r in runs) == [
        ("bilstm", "false"), ("bilstm", "true"), ("meanpool", "true")]
    assert "model.name=meanpool does not take model.attention" in caplog.text
