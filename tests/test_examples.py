"""Every script in examples/ runs as a user runs it, on a real (tiny) cache, and prints what it says it prints."""

import subprocess
import sys

from pipeline.embed.run import embed
from tests.helpers import PROJECT_ROOT, tiny_overrides


def test_the_gru_example_trains_its_own_model_and_prints_its_leaderboard_row(tiny_dataset_root, tiny_dataset_config,
                                                                             tmp_path):
    embed(tiny_dataset_config)  # the tiny dataset's cache, as `make demo` leaves the synthetic one
    sets = tiny_overrides(tiny_dataset_root) + [f"cache.path={tiny_dataset_config.cache.path}",
                                                f"run.dir={tmp_path / 'gru'}", "train.epochs=2", "eval.threads=1",
                                                "train.threads=1"]
    done = subprocess.run([sys.executable, "examples/gru.py", "configs/synthetic.yaml", *sets], cwd=PROJECT_ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    row = done.stdout.strip().splitlines()[-1]
    assert sorted(p.name for p in (PROJECT_ROOT / "examples").glob("*.py")) == ["gru.py"]  # each example has a test
    assert row.startswith("| __main__:GRU | val top-1 0.") and "| test top-1 " in row and "pair accuracy" in row, row
    assert (tmp_path / "gru" / "checkpoints" / "best.pt").is_file() and (tmp_path / "gru" / "metrics.json").is_file()
