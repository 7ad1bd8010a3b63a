"""Tiny real HDF5 caches whose classes differ only in temporal order, and stage-two checks shared by tests."""

from pathlib import Path

import numpy as np
import torch

from pipeline.cache.writer import FeatureCacheWriter
from pipeline.config import load_config
from pipeline.embed.fingerprint import embed_fingerprint
from tests.helpers import PROJECT_ROOT, tiny_overrides

# Two time-reversed pairs, named like the synthetic dataset's so evaluation finds the pairs.
CLASSES = ["BlockMoveRight", "BlockMoveLeft", "TriangleGrow", "TriangleShrink"]
TEST_GROUPS = (7, 8)


def order_config(root: Path, *overrides: str):
    """The tiny test config pointed at ``root``, with small fast training."""
    base = ["train.epochs=2", "train.batch_size=8", "train.lr=0.005", "model.dropout=0.0", "data.val_fraction=0.2"]
    return load_config(PROJECT_ROOT / "configs" / "synthetic.yaml", tiny_overrides(root) + base, list(overrides))


def write_order_dataset(cfg, groups: int = 8, clips: int = 2, dim: int = 6, with_test: bool = True,
                        failed: tuple = (), missing: tuple = ()) -> None:
    """Split files and a feature cache where a pair's two classes have the same frames in opposite order.

    Each frame is a point moving along the pair's direction; the reversed class moves the other way. The
    mean over time is the same for both classes of a pair, so an order-blind model is at chance within a pair.
    Videos named in ``failed`` are recorded as failed to embed, those in ``missing`` left out; the others get
    the same features whatever these two hold.
    """
    splits = Path(cfg.data.splits)
    splits.mkdir(parents=True, exist_ok=True)
    (splits / "classInd.txt").write_text("".join(f"{i + 1} {name}\r\n" for i, name in enumerate(CLASSES)))
    (splits / "classPairs.txt").write_text("BlockMoveRight BlockMoveLeft\nTriangleGrow TriangleShrink\n")
    entries = [(label, g, c) for label in range(len(CLASSES))
               for g in range(1, groups + 1) for c in range(1, clips + 1)]

    def path(label, g, c):
        return f"{CLASSES[label]}/v_{CLASSES[label]}_g{g:02d}_c{c:02d}.avi"

    (splits / "trainlist01.txt").write_text("".join(f"{path(*e)} {e[0] + 1}\r\n" for e in entries
                                                    if e[1] not in TEST_GROUPS))
    (splits / "testlist01.txt").write_text("".join(f"{path(*e)}\r\n" for e in entries if e[1] in TEST_GROUPS))
    rng = np.random.default_rng(0)
    directions = np.eye(dim)[[0, 3]] + 0.5 * np.eye(dim)[[1, 4]]
    Path(cfg.cache.path).parent.mkdir(parents=True, exist_ok=True)
    with FeatureCacheWriter(cfg.cache.path, embed_fingerprint(cfg), CLASSES, dim, dtype="float32") as writer:
        for label, g, c in entries:
            if g in TEST_GROUPS and not with_test:
                continue
            n = int(rng.integers(14, 26))
            t = np.linspace(-1.0, 1.0, n)[:: -1 if label % 2 else 1]
            features = 2.0 * np.outer(t, directions[label // 2]) + rng.normal(0, 0.3, (n, dim))
            name = path(label, g, c)[:-4]
            if name in failed:
                writer.add_failure(name, "DecodeError: corrupt")
            elif name not in missing:
                writer.add(name, label, features.astype(np.float32))


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"]
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for state_a, state_b in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert [str(row["val_loss"]) for row in a["history"]] == [str(row["val_loss"]) for row in b["history"]]  # nan = nan


def interrupt_at_validation(monkeypatch, call: int) -> None:
    """Make the ``call``-th validation raise Ctrl-C, as a user stopping training mid-epoch."""
    from pipeline.sequence import train as loop

    calls = {"n": 0}
    real = loop.validate

    def validate_or_interrupt(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, "validate", validate_or_interrupt)
