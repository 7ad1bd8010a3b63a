"""One epoch of training and the scoring of clips: the optimiser step, the learning rate, validation.

``Run`` is what a training run works with; ``train.py`` builds, resumes and checkpoints it, this module moves
its weights. Every batch comes from the run's ``ClipSource`` (clips.py), whatever the features' placement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from pipeline.config import Config
from pipeline.sequence.clips import ClipSource
from pipeline.sequence.datasets import EvalClips, TrainClips
from pipeline.sequence.metrics import topk_accuracy, video_scores
from pipeline.sequence.optim import OPTIMIZERS, SCHEDULES


@dataclass(frozen=True)
class Outputs:
    """The files a phase of training writes in ``run.dir``: its resumable checkpoint, the best one on validation
    (None: the phase does not validate), its history and curves."""
    last: str
    best: str | None
    history: str
    curves: str
    trained_on: str  # which videos the phase trains on, as its checkpoints record it


SELECTION = Outputs("last.pt", "best.pt", "history.csv", "curves.png", "training")
REFIT = Outputs("refit.pt", None, "refit_history.csv", "refit_curves.png", "training+validation")


@dataclass
class Run:
    """What one training run works with: the model and its optimiser on a device, and the progress so far.

    ``state`` holds the completed epoch count, the best validation result and the history; it is what a
    checkpoint records besides the weights, so a resumed run picks up exactly here.
    """
    cfg: Config
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    amp_dtype: torch.dtype | None
    clips: ClipSource
    state: dict = field(default_factory=lambda: {"epoch": 0, "best_val_acc": -1.0, "best_val_loss": math.inf,
                                                 "best_epoch": 0, "history": []})
    loss_fn: nn.Module = field(default_factory=nn.CrossEntropyLoss)
    outputs: Outputs = SELECTION

    @property
    def dir(self) -> Path:
        return Path(self.cfg.run.dir)


def build_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    plugin = OPTIMIZERS.get(cfg.train.optimizer, "train.optimizer")
    return plugin.build(model.parameters(), lr=cfg.train.lr, **plugin.values(cfg.train))


def learning_rate(cfg: Config, progress: float) -> float:
    """The rate at ``progress`` epochs into training (``train.schedule``)."""
    return SCHEDULES.build(cfg.train.schedule, cfg.train.lr, progress, cfg.train.epochs)


def clip_order(order_seed, n: int) -> np.ndarray:
    """The order an epoch visits its ``n`` clips in, drawn from ``order_seed`` (train.seed, epoch)."""
    return np.random.default_rng(list(order_seed)).permutation(n)


def train_epoch(run: Run, train_set: TrainClips, epoch: int) -> tuple[float, float]:
    """One pass over the training clips of ``epoch`` from the run's clip source; mean loss and accuracy.

    Loss and accuracy are summed on the device, so a step never waits for the GPU to report back.
    """
    cfg, device = run.cfg, run.device
    run.model.train()
    train_set.set_epoch(epoch)
    steps = math.ceil(len(train_set) / cfg.train.batch_size)
    total_loss = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    order = clip_order((cfg.train.seed, epoch), len(train_set))
    bar = tqdm(run.clips.train_batches(train_set, order, cfg.train.batch_size), total=steps,
               desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="batch", leave=False, dynamic_ncols=True)
    for step, (clips, labels) in enumerate(bar):
        loss, logits = train_step(run, clips, labels, learning_rate(cfg, epoch + step / steps))
        total_loss += loss.double() * len(labels)
        correct += (logits.argmax(dim=1) == labels).sum()
    return float(total_loss) / len(train_set), int(correct) / len(train_set)


def train_step(run: Run, clips: torch.Tensor, labels: torch.Tensor, lr: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimiser step on a batch already on the device; the (detached) loss and the logits."""
    cfg, model, optimizer, scaler, amp_dtype = run.cfg, run.model, run.optimizer, run.scaler, run.amp_dtype
    for group in optimizer.param_groups:
        group["lr"] = lr
    with torch.autocast(run.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits = model(clips)
        loss = run.loss_fn(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if cfg.train.grad_clip > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss.detach(), logits.detach()


@torch.no_grad()
def predict_clips(model, clips: ClipSource, dataset: EvalClips, batch_size: int, amp_dtype=None,
                  desc: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Logits of every evaluation clip ``[N, K, C]`` and the labels ``[N]`` of the dataset's videos, from
    ``clips`` (many videos per forward)."""
    model.eval()
    logits, labels = [], []
    batches = clips.eval_batches(dataset, videos_per_batch=max(1, batch_size // dataset.clips))
    # disable=None (not False): TQDM_DISABLE, which sweep workers set, still switches the bar off.
    for features, batch_labels in tqdm(batches, desc=desc, unit="batch", leave=False,
                                       disable=True if desc is None else None):
        b, k = features.shape[:2]
        with torch.autocast(clips.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(features.flatten(0, 1))
        logits.append(out.float().reshape(b, k, -1))
        labels.append(batch_labels)
    return torch.cat(logits).cpu().numpy(), torch.cat(labels).cpu().numpy()


def validate(run: Run, dataset: EvalClips) -> tuple[float, float]:
    """Clip-level cross-entropy and video-level accuracy (clip probabilities averaged) on the validation videos."""
    logits, labels = predict_clips(run.model, run.clips, dataset, run.cfg.eval.batch_size, run.amp_dtype)
    loss = nn.functional.cross_entropy(torch.from_numpy(logits).flatten(0, 1),
                                       torch.from_numpy(labels).repeat_interleave(logits.shape[1]))
    return float(loss), topk_accuracy(video_scores(logits), labels, 1)
