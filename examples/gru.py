"""Your own sequence model in your own script: a GRU trained and evaluated on the demo's feature cache.

    make demo                    # once: the synthetic dataset and its cache
    python examples/gru.py       # or: python examples/gru.py CONFIG [SECTION.KEY=VALUE ...]
"""

import sys
from dataclasses import dataclass

from torch import nn

import pipeline
from pipeline.schema import key


class GRU(nn.Module):
    """A bidirectional GRU over the cached features, mean over time, a linear head."""

    @dataclass
    class Config:  # the keys of the config's `model` section while this model is chosen
        hidden_dim: int = key(128, "GRU hidden size per direction", min=1, affects="training")

    def __init__(self, feature_dim, num_classes, length, hidden_dim):
        super().__init__()
        self.gru = nn.GRU(feature_dim, hidden_dim, batch_first=True, bidirectional=True)
        self.head = nn.Linear(2 * hidden_dim, num_classes)

    def forward(self, x):  # [B, T, D] -> [B, num_classes]
        return self.head(self.gru(x)[0].mean(dim=1))


config_path = sys.argv[1] if len(sys.argv) > 1 else "configs/synthetic.yaml"
cfg = pipeline.load_config(config_path, ["run.dir=runs/examples/gru", "train.epochs=8"], sys.argv[2:])
result = pipeline.train(cfg, model=GRU)  # registered as "__main__:GRU"; its Config is the model section's keys
metrics = pipeline.evaluate(result.config)
print(f"| {result.config.model.name} | val top-1 {result.summary['best_val_acc']:.3f} | test top-1 "
      f"{metrics['top1']:.3f} | pair accuracy {metrics.get('pair_accuracy', float('nan')):.3f} |")
