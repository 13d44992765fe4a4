"""Plots people would rather look at than read: class distributions, confidence histograms."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: stages run on servers and in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save_figure(fig, path: str | os.PathLike) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def class_distribution(
    path: str | os.PathLike,
    class_names: Sequence[str],
    series: dict[str, Sequence[int]],
    title: str = "Training images per class",
    max_bars: int = 60,
) -> Path:
    """Images per class, classes sorted by the first series (the long tail, left to right): a
    bar per class when there are few, else each series' count against class rank on log-log
    axes (a figure of bounded size at any number of classes)."""
    first = np.asarray(next(iter(series.values())))
    order = np.argsort(-first, kind="stable")
    if len(class_names) > max_bars:
        fig, ax = plt.subplots(figsize=(7, 4))
        rank = np.arange(1, len(order) + 1)
        for name, counts in series.items():
            ax.step(rank, np.maximum(np.asarray(counts)[order], 0.5), where="mid", label=name)
        ax.set_xscale("log")
        ax.set_xlabel(f"class rank (1 = largest of {len(order):,})")
    else:
        width = 0.8 / len(series)
        fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(class_names)), 4))
        for k, (name, counts) in enumerate(series.items()):
            ax.bar(np.arange(len(order)) + k * width, np.asarray(counts)[order], width, label=name)
        ax.set_xticks(np.arange(len(order)) + width * (len(series) - 1) / 2)
        ax.set_xticklabels([class_names[i] for i in order], rotation=45, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel("images (log scale)")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def confidence_histogram(
    path: str | os.PathLike, confidence: np.ndarray, consistent: np.ndarray, title: str
) -> Path:
    """The seed's Figure 1: top-1 confidence, prediction consistent vs inconsistent with label."""
    bins = np.linspace(0, 1, 41)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(confidence[consistent], bins=bins, alpha=0.7, label="prediction == label")
    ax.hist(confidence[~consistent], bins=bins, alpha=0.7, label="prediction != label")
    ax.set_xlabel("top-1 probability")
    ax.set_ylabel("training samples")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend()
    return save_figure(fig, path)


def member_steps(path: str | os.PathLike, rows: Sequence[dict], steps: Sequence[str]) -> Path:
    """Mean class error (left) and few-class accuracy (right) of every member after each of its
    steps, on test (val where the data has no test split): grouped bars, one group a member."""
    members = list(dict.fromkeys(r["member"] for r in rows))
    value = {(r["member"], r["step"]): r for r in rows}
    split = "test" if all("test_mean_class_error" in r for r in rows) else "val"
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.6 * len(members)), 4))
    width = 0.8 / len(steps)
    x = np.arange(len(members))
    for ax, key, label in (
        (axes[0], f"{split}_mean_class_error", f"{split} mean class error (%)"),
        (axes[1], f"{split}_few_accuracy", f"{split} few-class accuracy (%)"),
    ):
        for i, step in enumerate(steps):
            ax.bar(x + (i - (len(steps) - 1) / 2) * width,
                   [value[m, step].get(key, np.nan) for m in members], width,
                   label=step)  # fmt: skip
        ax.set_xticks(x, members, rotation=30, ha="right")
        ax.set_ylabel(label)
    axes[0].legend(title="after step")
    return save_figure(fig, path)


def accuracy_by_frequency(
    path: str | os.PathLike,
    class_names: Sequence[str],
    train_counts: Sequence[int],
    accuracy: dict[str, Sequence[float]],
    max_points: int = 60,
    split: str = "test",
) -> Path:
    """Per-class accuracy on ``split`` against the class's training images (log scale), one
    series per model: where the tail loses, and what each step wins back. With more than
    ``max_points`` classes, the mean accuracy of each frequency bin (powers of two) instead of a
    point a class, so the figure reads the same at 10 or 50,030 classes; class names only up to
    20."""
    counts = np.asarray(train_counts)
    fig, ax = plt.subplots(figsize=(8, 4.5))
    binned = len(counts) > max_points
    if binned:
        bins = np.floor(np.log2(np.maximum(counts, 1))).astype(int)
        edges = np.unique(bins)
        x = 2.0**edges * np.sqrt(2)  # the bin's geometric middle
        members = np.bincount(bins, minlength=edges.max() + 1)[edges]
    for (name, values), marker in zip(accuracy.items(), "os^vD*"):
        values = np.asarray(values, dtype=np.float64)
        if binned:
            known = ~np.isnan(values)
            sums = np.bincount(bins[known], values[known], minlength=edges.max() + 1)[edges]
            seen = np.bincount(bins[known], minlength=edges.max() + 1)[edges]
            mean = np.divide(sums, seen, out=np.full(len(x), np.nan), where=seen > 0)
            ax.plot(x, mean, marker=marker, label=name, alpha=0.8)  # a bin unseen: a gap
        else:
            order = np.argsort(-counts)
            ax.plot(counts[order], values[order], marker=marker, label=name, alpha=0.8)
    if binned:
        for xi, n in zip(x, members):
            ax.annotate(f"{n:,}", (xi, 0), fontsize=7, ha="center", va="bottom",
                        xytext=(0, 2), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("training images of the class (bins; the count: classes in the bin)")
    else:
        if len(counts) <= 20:
            for i in range(len(counts)):
                ax.annotate(class_names[i], (counts[i], 0), fontsize=7, rotation=60, ha="left",
                            va="bottom", xytext=(0, 2), textcoords="offset points")  # fmt: skip
        ax.set_xlabel("training images of the class")
    ax.set_xscale("log")
    ax.set_ylabel(f"{split} accuracy (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    return save_figure(fig, path)
