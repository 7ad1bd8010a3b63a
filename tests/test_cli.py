"""The command line: library messages reach the user through logging, which --quiet and --verbose control."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from tests.helpers import PROJECT_ROOT, tiny_overrides


def synth_args(root) -> list[str]:
    args = ["synth", "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml")]
    for item in tiny_overrides(root):
        args += ["--set", item]
    return args


def test_info_messages_show_by_default_and_quiet_hides_them(tmp_path):
    first = CliRunner().invoke(cli, synth_args(tmp_path))
    assert first.exit_code == 0, first.output
    assert "synthetic dataset: 4 classes, 32 videos" in first.stderr
    again = CliRunner().invoke(cli, ["--quiet"] + synth_args(tmp_path))
    assert again.exit_code == 0 and again.stderr == "" and again.stdout == ""
    verbose = CliRunner().invoke(cli, ["--verbose"] + synth_args(tmp_path))
    assert "already in" in verbose.stderr and "skipping" in verbose.stderr


def test_errors_are_one_line_with_status_2(tmp_path):
    result = CliRunner().invoke(cli, ["train", "-c", str(tmp_path / "missing.yaml")])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot read config")


def test_out_of_memory_is_one_line_naming_the_setting_to_lower(tmp_path, monkeypatch):
    import torch

    import pipeline.sequence.train

    def exhausted(cfg, resume=False, on_epoch=None):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 256.00 TiB")

    monkeypatch.setattr(pipeline.sequence.train, "train", exhausted)
    result = CliRunner().invoke(cli, ["train", "-c", str(PROJECT_ROOT / "configs" / "synthetic.yaml"),
                                      "--set", f"run.dir={tmp_path}/run"])  # its TensorBoard folder too
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert "out of memory in `actrec train`" in result.stderr and "lower train.batch_size" in result.stderr


def test_the_cli_module_leaves_tqdm_unimported_so_log_files_get_throttled_bars():
    """tqdm takes TQDM_MININTERVAL from the environment at import; main() sets it for non-terminals first."""
    import subprocess
    import sys

    code = "import sys, pipeline.cli; print(sorted({'tqdm', 'torch'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True,
                            check=True)
    assert result.stdout.strip() == "[]"


REFUSALS = {
    "embed": ["embed", "-c", "configs/synthetic.yaml", "--set", "embed.bogus=1"],
    "train": ["train", "-c", "configs/synthetic.yaml", "--set", "train.bogus=1"],
    "evaluate": ["evaluate", "-c", "configs/synthetic.yaml", "--set", "eval.bogus=1"],
    "sweep": ["sweep", "-c", "configs/synthetic.yaml", "--grid", "model.bogus=1,2"],
    "predict": ["predict", "README.md", "--checkpoint", "missing.pt"],
}


@pytest.mark.parametrize("command", sorted(REFUSALS))
def test_a_refused_setting_is_one_line_before_torch_is_imported(command):
    """Every command checks its config, paths and options first: a mistake costs no stage import (issue: a
    refusal used to pay seconds and most of a gigabyte of imports)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "from pipeline.cli import main\n"
            f"sys.argv = ['actrec', *{REFUSALS[command]!r}]\n"
            "try:\n"
            "    main()\n"
            "except SystemExit as exc:\n"
            "    print(exc.code, sorted({'torch', 'torchvision', 'cv2', 'h5py'} & set(sys.modules)))\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.stdout.strip() == "2 []", (done.stdout, done.stderr)
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("error: "), done.stderr
