"""Figures of runs (learning curves, predictions, confusion matrix), drawn without torch."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

# Figure objects rather than pyplot: no global figure registry, no GUI backend, nothing to close.
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator


def plot_curves(history: list[dict], path: Path | None = None):
    """Loss and accuracy per epoch, train and validation, like the lab's plots."""
    epochs = [e["epoch"] for e in history]
    fig = Figure(figsize=(10, 4))
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, metric in ((ax_loss, "loss"), (ax_acc, "acc")):
        ax.plot(
            epochs, [e[f"train_{metric}"] for e in history], "o-", ms=3, label=f"train {metric}"
        )
        ax.plot(epochs, [e[f"val_{metric}"] for e in history], "s-", ms=3, label=f"val {metric}")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        ax.set_ylabel("loss" if metric == "loss" else "accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return save(fig, path)


def plot_predictions(images, targets, preds, class_names, path: Path | None = None, n: int = 12):
    """The first n images titled "true: X / pred: Y"; wrong predictions in red."""
    n = min(n, len(images))
    cols = min(n, 6)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(1.9 * cols, 2.3 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        true, pred = class_names[int(targets[i])], class_names[int(preds[i])]
        wrong = int(targets[i]) != int(preds[i])
        ax.imshow(images[i].reshape(28, 28).cpu().numpy(), cmap="binary")
        title = f"true: {true}\npred: {pred}" + (" ✗" if wrong else "")
        ax.set_title(title, fontsize=8, color="red" if wrong else "black")
    fig.tight_layout()
    return save(fig, path)


def plot_confusion(matrix, class_names, path: Path | None = None):
    """Counts of true class (rows) against predicted class (columns)."""
    matrix = np.asarray(matrix)
    k = len(class_names)
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2
    for i in range(k):
        for j in range(k):
            value = int(matrix[i, j])
            color = "white" if value > threshold else "black"
            ax.text(j, i, value, ha="center", va="center", fontsize=7, color=color)
    fig.tight_layout()
    return save(fig, path)


def save(fig, path: Path | None):
    """Write `fig` to `path` when one is given; return it."""
    if path is not None:
        fig.savefig(path, dpi=100)
    return fig
