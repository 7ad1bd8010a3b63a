"""One guard for every output path a user names: never an existing checkpoint, feature cache or config (through
symlinks, hard links and by content), never a run's checkpoints folder, always the right suffix."""

import os

import h5py
import pytest
import torch
from click.testing import CliRunner

from benchmarks.__main__ import main as bench_main
from pipeline.cli import cli
from pipeline.errors import ActrecError
from pipeline.fileio import check_output
from tests.helpers import PROJECT_ROOT, tiny_overrides


@pytest.fixture
def run_dir(tmp_path):
    """A run dir as training leaves it: config.yaml and checkpoints/{last,best}.pt (torch.save files)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("run:\n  dir: run\n")
    for name in ("last.pt", "best.pt"):
        torch.save({"epoch": 3, "name": name}, run / "checkpoints" / name)
    return run


def contents(run):
    files = {p.name: p.read_bytes() for p in (run / "checkpoints").iterdir()}
    return files | {"config": (run / "config.yaml").read_bytes()}


def test_the_issue_case_predict_json_onto_last_pt_is_refused_and_last_pt_kept(tmp_path, run_dir):
    video = tmp_path / "clip.mp4"
    video.write_bytes(b"not decoded: refused before")
    before = contents(run_dir)
    for option, target in (("--json", run_dir / "checkpoints" / "last.pt"),
                           ("--json", run_dir / "checkpoints" / "notes.json"),
                           ("--json", run_dir / "config.yaml"),
                           ("--out", run_dir / "checkpoints" / "clip.mp4")):
        best = run_dir / "checkpoints" / "best.pt"
        result = CliRunner().invoke(cli, ["predict", str(video), "--checkpoint", str(best), option, str(target)])
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert option in result.stderr
    assert contents(run_dir) == before
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_the_guard_sees_through_links_renames_and_content(tmp_path, run_dir):
    last = run_dir / "checkpoints" / "last.pt"
    (tmp_path / "link.json").symlink_to(last)
    os.link(last, tmp_path / "hard.json")
    renamed = tmp_path / "renamed.json"
    renamed.write_bytes(last.read_bytes())  # a checkpoint under another name: known by its content
    with h5py.File(tmp_path / "cache.json", "w") as f:
        f.attrs["x"] = 1
    (tmp_path / "my.yaml").write_text("a: 1\n")
    cases = {"link.json": "is a checkpoint", "hard.json": "is a checkpoint", "renamed.json": "is a checkpoint",
             "cache.json": "is a feature cache", "my.yaml": "is a config"}
    for name, words in cases.items():
        with pytest.raises(ActrecError, match=words):
            check_output(tmp_path / name, "--json", (".json", ".yaml"))
    with pytest.raises(ActrecError, match=r"--json out.txt: give a name ending in \.json"):
        check_output("out.txt", "--json", (".json",))
    with pytest.raises(ActrecError, match="lies in a run's checkpoints folder"):
        check_output(run_dir / "checkpoints" / "new.json", "--json", (".json",))
    assert check_output(tmp_path / "fine" / "out.json", "--json", (".json",)) == tmp_path / "fine" / "out.json"
    assert check_output(tmp_path / "cache.json", "CACHE", replaces="a feature cache")  # a join rewrites its cache


def test_bench_merge_cache_and_embed_use_the_same_guard(tmp_path, run_dir):
    last = run_dir / "checkpoints" / "last.pt"
    before = contents(run_dir)
    runner = CliRunner()
    refused = [
        runner.invoke(bench_main, ["--quick", "--only", "disk", "--out", str(run_dir / "checkpoints")]),
        runner.invoke(bench_main, ["--quick", "--only", "disk", "--readme", str(last)]),
        runner.invoke(cli, ["merge-cache", str(last)]),
        runner.invoke(cli, ["embed", "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml"),
                            *[a for s in tiny_overrides(tmp_path) + [f"cache.path={last}"] for a in ("--set", s)]]),
    ]
    for result in refused:
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert "checkpoint" in result.stderr, result.stderr
    assert contents(run_dir) == before
