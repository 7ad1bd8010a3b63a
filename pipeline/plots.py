"""Figures written next to a run: training curves and the confusion matrix.

Figures are drawn on the Agg canvas directly (no pyplot), so plotting needs no display and
changes no global matplotlib state.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from pipeline.fileio import atomic_path


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> None:
    """Write atomically, so an interrupted run never leaves a half-written image."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight")


def plot_curves(history: list[dict], path: str | Path, title: str = "") -> None:
    """Loss and accuracy per epoch, train and validation, side by side."""
    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(10, 4))
    loss_ax, acc_ax = fig.subplots(1, 2)
    for ax, metric in ((loss_ax, "loss"), (acc_ax, "acc")):
        for split, style in (("train", "-o"), ("val", "-s")):
            values = [row.get(f"{split}_{metric}", float("nan")) for row in history]
            if np.isfinite(values).any():
                ax.plot(epochs, values, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel("accuracy" if metric == "acc" else "cross-entropy loss")
        ax.grid(alpha=0.3)
        ax.legend()
    acc_ax.set_ylim(0, 1.02)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: list[str], path: str | Path, title: str = "") -> None:
    """Row-normalised confusion matrix (true class down, predicted across); sized so 101 names stay legible."""
    n = len(class_names)
    totals = matrix.sum(axis=1, keepdims=True)
    normalised = matrix / np.maximum(totals, 1)
    side = max(6.0, 0.22 * n + 3)   # about 25 inches for UCF-101's 101 classes: 0.22 in (16 pt) per row
    fontsize = 10 if n <= 20 else 7 if n <= 50 else 6
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    image = ax.imshow(normalised, cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks(range(n), labels=class_names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), labels=class_names, fontsize=fontsize)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if n <= 20:  # counts are readable only on small matrices
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=fontsize - 1,
                            color="white" if normalised[i, j] > 0.5 else "black")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="share of the true class")
    if title:
        ax.set_title(title)
    save_figure(fig, path, dpi=100 if n <= 20 else 120)
