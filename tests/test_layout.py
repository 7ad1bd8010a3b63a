"""The package's layering: stage two and the cache never load stage one's code (torchvision, backbones, decoding)."""

import subprocess
import sys

from tests.helpers import PROJECT_ROOT
from tests.orderdata import order_config, write_order_dataset

STAGE_ONE = ("torchvision", "pipeline.embed", "pipeline.inputs.video", "cv2")


def test_train_and_evaluate_do_not_load_stage_one(tmp_path):
    cfg = order_config(tmp_path, "train.epochs=1")
    write_order_dataset(cfg)  # a real cache, written here: the subprocess only reads it
    sets = ", ".join(repr(f"{k}={v}") for k, v in [("cache.path", cfg.cache.path), ("data.splits", cfg.data.splits),
                                                     ("run.dir", cfg.run.dir), ("train.epochs", 1)])
    code = (f"import sys\n"
            f"sys.argv = ['actrec']\n"
            f"from pipeline.config import load_config\n"
            f"from pipeline.sequence.train import train\n"
            f"from pipeline.sequence.evaluate import evaluate\n"
            f"from tests.helpers import tiny_overrides\n"
            f"cfg = load_config({str(PROJECT_ROOT / 'configs' / 'synthetic.yaml')!r}, "
            f"tiny_overrides({str(tmp_path)!r}) + [{sets}])\n"
            f"train(cfg)\n"
            f"evaluate(cfg)\n"
            f"print(','.join(sorted(m for m in sys.modules if m.startswith({STAGE_ONE!r}))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1:] in ([], [""]), f"stage two loaded {done.stdout.strip()}"
