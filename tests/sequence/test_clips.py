"""The one clip source: the DataLoader and the device-resident features give the same batches, in the same order."""

import numpy as np
import torch

from pipeline.cache.reader import FeatureCache
from pipeline.sequence.clips import DeviceClips, LoaderClips, clip_source
from pipeline.sequence.datasets import EvalClips, TrainClips
from tests.orderdata import order_config, write_order_dataset
from tests.sequence.test_resident import with_flip_features


def test_both_sources_give_the_same_batches(tmp_path):
    cfg = order_config(tmp_path, "embed.flip=true")
    write_order_dataset(cfg, groups=3)
    with_flip_features(cfg)
    cache = FeatureCache(cfg.cache.path)
    rows = list(range(len(cache)))
    labels = [int(cache.labels[row]) for row in rows]
    train_set = TrainClips(cache, rows, labels, length=6, seed=1, flip=True)
    eval_set = EvalClips(cache, rows[::2], labels[::2], length=6, clips=3)
    cpu = torch.device("cpu")
    loader, resident = clip_source("memory", cache, rows, True, cpu), clip_source("device", cache, rows, True, cpu)
    assert isinstance(loader, LoaderClips) and isinstance(resident, DeviceClips)
    order = np.random.default_rng(0).permutation(len(rows))
    for epoch in (0, 1):
        train_set.set_epoch(epoch)
        a, b = list(loader.train_batches(train_set, order, 5)), list(resident.train_batches(train_set, order, 5))
        assert [len(y) for _, y in a] == [5] * (len(rows) // 5) + ([len(rows) % 5] if len(rows) % 5 else [])
        for (xa, ya), (xb, yb) in zip(a, b, strict=True):
            assert xa.shape == xb.shape == (len(ya), 6, cache.dim) and xa.dtype == xb.dtype == torch.float32
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert torch.equal(torch.cat([y for _, y in a]), torch.tensor(labels)[order])
    a, b = list(loader.eval_batches(eval_set, 2)), list(resident.eval_batches(eval_set, 2))
    for (xa, ya), (xb, yb) in zip(a, b, strict=True):
        assert xa.shape[1:] == (3, 6, cache.dim) and torch.equal(xa, xb) and torch.equal(ya, yb)
    assert torch.cat([y for _, y in a]).tolist() == labels[::2]
