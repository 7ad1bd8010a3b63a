"""Device-resident training (cache.load=device): the same clips, batches and weights as the DataLoader path,
gathered on the device. Checked on the CPU, where both paths must agree bit for bit."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.cache.reader import FeatureCache
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.embed.fingerprint import embed_fingerprint
from pipeline.sequence import resident
from pipeline.sequence.checkpoint import load_checkpoint
from pipeline.sequence.evaluate import evaluate
from pipeline.sequence.train import train
from tests.orderdata import assert_same_training_state, interrupt_at_validation, order_config, write_order_dataset

KEYS = ["train.epochs=2", "train.schedule=cosine", "model.dropout=0.3", "train.batch_size=5", "eval.clips=3"]


def with_flip_features(cfg) -> None:
    """Rewrite ``cfg``'s cache with mirrored features (here: negated), as `embed.flip=true` caches have."""
    plain = FeatureCache(cfg.cache.path)
    sequences = [plain.sequence(i) for i in range(len(plain))]
    Path(cfg.cache.path).unlink()
    with FeatureCacheWriter(cfg.cache.path, embed_fingerprint(cfg), plain.class_names, plain.dim, flip=True,
                            dtype="float16") as writer:
        for name, label, features in zip(plain.names, plain.labels, sequences):
            writer.add(name, int(label), features, flip_features=-features[:, ::-1])


def paired_configs(tmp_path, *keys):
    memory = order_config(tmp_path / "memory", *KEYS, "embed.flip=true", "cache.load=memory", *keys)
    write_order_dataset(memory)
    with_flip_features(memory)
    shared = [f"cache.path={memory.cache.path}", f"data.splits={memory.data.splits}"]
    device = order_config(tmp_path / "device", *KEYS, "embed.flip=true", "cache.load=device", *keys, *shared)
    return memory, device


def test_device_resident_training_gives_the_weights_of_the_dataloader_path(tmp_path, caplog):
    memory, device = paired_configs(tmp_path)
    train(memory)
    with caplog.at_level("INFO", logger="pipeline"):
        train(device)
    assert "clips gathered there, no DataLoader" in caplog.text
    a = load_checkpoint(Path(memory.run.dir) / "checkpoints" / "last.pt")
    b = load_checkpoint(Path(device.run.dir) / "checkpoints" / "last.pt")
    assert_same_training_state(a, b)
    for row_a, row_b in zip(a["history"], b["history"]):
        assert row_a["train_acc"] == row_b["train_acc"]
        assert row_a["train_loss"] == pytest.approx(row_b["train_loss"], rel=1e-6)
    # Evaluation on device-resident test features scores the test list as the DataLoader path does.
    on_device, in_memory = evaluate(device), evaluate(memory)
    assert on_device["top1"] == in_memory["top1"] and on_device["clip_top1"] == in_memory["clip_top1"]
    assert on_device["confusion_matrix"] == in_memory["confusion_matrix"]


def test_interrupted_device_resident_run_resumes_exactly(tmp_path, monkeypatch):
    memory, device = paired_configs(tmp_path, "train.epochs=3")
    train(memory)
    interrupt_at_validation(monkeypatch, call=2)
    with pytest.raises(KeyboardInterrupt):
        train(device)
    monkeypatch.undo()
    last = Path(device.run.dir) / "checkpoints" / "last.pt"
    assert load_checkpoint(last)["epoch"] == 1
    train(device, resume=True)
    assert_same_training_state(load_checkpoint(Path(memory.run.dir) / "checkpoints" / "last.pt"),
                               load_checkpoint(last))


def test_auto_puts_features_on_a_gpu_only_when_they_fit_its_free_share(monkeypatch):
    cache = SimpleNamespace(lengths=np.array([100, 50]), dim=2048, dtype="float16")
    need = resident.ResidentFeatures.nbytes(cache, [0, 1, 1], flip=True)
    assert need == 150 * 2048 * 2 * 2
    gpu = torch.device("cuda")
    # The free memory decides, whatever the total: a GPU mostly held by other runs gets no features.
    for free, expected in ((2 * need, True), (2 * need - 1, False)):
        monkeypatch.setattr(torch.cuda, "mem_get_info", lambda _, f=free: (f, 100 * need))
        assert resident.choose_placement("auto", cache, [0, 1], True, gpu) is expected
    assert not resident.choose_placement("auto", cache, [0, 1], True, torch.device("cpu"))
    assert not resident.choose_placement("memory", cache, [0, 1], True, gpu)
    assert resident.choose_placement("device", cache, [0, 1], True, torch.device("cpu"))
