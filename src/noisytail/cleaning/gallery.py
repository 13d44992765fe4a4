"""See what a cleaning round did: per-class galleries of the images it dropped, kept and relabelled.

A round's decisions (``decisions.parquet``, written by the clean stage: one row per judged
sample with its given label, prediction, scores and action) are all a gallery reads, plus the
images it draws, so it stays cheap at any scale: no pass over the dataset.

Per class, three sections in this order:
- **dropped**: the samples with the lowest evidence for their given label first;
- **kept, nearest the threshold**: the kept samples with the lowest evidence for their label
  (the ones a person would double-check);
- **relabelled**: the most confident relabellings first.
Each tile's caption holds the given label, the prediction and the label score. Where the true
label is known (benchmarks, or a user's verified subset), the tile is framed green when the
decision was right (a dropped or relabelled sample that was mislabelled, a kept one that was
clean) and red when it was wrong.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pandas as pd

from noisytail.data.dataset import BadImageError, load_image
from noisytail.data.manifest import Manifest
from noisytail.plots import class_distribution, plt, save_figure

SECTIONS = (
    ("dropped", "drop", "label_score", True),
    ("kept, nearest the threshold", "keep", "label_score", True),
    ("relabelled", "relabel", "confidence", False),
)  # (title, action, ranked by, ascending)
COLUMNS = 8
DECISION_COLUMNS = ("sample_id", "label", "pred", "confidence", "label_score", "action",
                    "new_label")  # fmt: skip


def class_tiles(decisions: pd.DataFrame, label: int, per_section: int) -> pd.DataFrame:
    """The tiles of one class's gallery in display order, with a ``section`` column and, where
    ``true_label`` is known, ``correct`` (was the decision right?)."""
    mine = decisions[decisions["label"] == label]
    parts = []
    for title, action, key, ascending in SECTIONS:
        rows = mine[mine["action"] == action].sort_values(key, ascending=ascending, kind="stable")
        parts.append(rows.head(per_section).assign(section=title))
    tiles = pd.concat(parts, ignore_index=True)
    if "true_label" in tiles:
        noisy = tiles["label"] != tiles["true_label"]
        tiles["correct"] = np.select(
            [tiles["action"] == "drop", tiles["action"] == "keep"],
            [noisy, ~noisy],
            tiles["new_label"] == tiles["true_label"],
        ).astype(bool)
    return tiles


def gallery_classes(
    decisions: pd.DataFrame, num_classes: int, max_classes: int
) -> tuple[list[int], bool]:
    """The classes to draw: all of them, or (more than ``max_classes``) the ``max_classes`` that
    lost the largest share of their samples to dropping or relabelling. Also: was it capped?"""
    if num_classes <= max_classes:
        return list(range(num_classes)), False
    total = np.bincount(decisions["label"], minlength=num_classes)
    changed = np.bincount(decisions.loc[decisions["action"] != "keep", "label"],
                          minlength=num_classes)  # fmt: skip
    share = np.where(total > 0, changed / np.maximum(total, 1), -1.0)
    return sorted(np.argsort(-share, kind="stable")[:max_classes].tolist()), True


def file_name(name: str) -> str:
    """A class name as a safe file name (``T-shirt/top`` -> ``T-shirt_top``)."""
    return re.sub(r"[^\w.-]+", "_", name).strip("._") or "class"


def tile_caption(tile, classes: tuple[str, ...]) -> str:
    """``given -> predicted``, the label score and, with the truth, whether the call was right."""
    caption = (
        f"{classes[tile.label][:12]} -> {classes[tile.pred][:12]}\nscore {tile.label_score:.2f}"
    )
    if hasattr(tile, "correct"):
        caption += " right" if tile.correct else " WRONG"
    return caption


def draw_class(
    tiles: pd.DataFrame, manifest: Manifest, title: str, path: str | os.PathLike
) -> Path:
    """One class's gallery as a PNG: a block of tiles per section, captions under each tile."""
    classes = manifest.classes
    paths = manifest.table.set_index("sample_id")["path"]
    blocks = [(t, tiles[tiles["section"] == t]) for t, *_ in SECTIONS]
    grid_rows = sum(1 + max(1, -(-len(b) // COLUMNS)) for _, b in blocks)
    fig = plt.figure(figsize=(COLUMNS * 1.45, grid_rows * 1.55 + 0.6))
    if "correct" in tiles:
        title += "\nframe: green = the decision was right, red = wrong (by the true label)"
    fig.suptitle(title, fontsize=11)
    grid = fig.add_gridspec(grid_rows, COLUMNS, height_ratios=[
        h for _, b in blocks for h in [0.25] + [1] * max(1, -(-len(b) // COLUMNS))
    ])  # fmt: skip
    row = 0
    for section, block in blocks:
        header = fig.add_subplot(grid[row, :])
        header.axis("off")
        header.text(0, 0.2, f"{section} ({len(block)} shown)", fontsize=10, weight="bold")
        row += 1
        if block.empty:
            empty = fig.add_subplot(grid[row, :])
            empty.axis("off")
            empty.text(0, 0.5, "none", fontsize=9, color="grey")
        for k, tile in enumerate(block.itertuples()):
            ax = fig.add_subplot(grid[row + k // COLUMNS, k % COLUMNS])
            try:
                ax.imshow(load_image(manifest.resolve(paths[tile.sample_id])), cmap="gray")
            except BadImageError:
                ax.text(0.5, 0.5, "unreadable", ha="center", fontsize=7)
            ax.set_xticks([])
            ax.set_yticks([])
            caption = tile_caption(tile, classes)
            if hasattr(tile, "correct"):
                for spine in ax.spines.values():
                    spine.set_color("tab:green" if tile.correct else "tab:red")
                    spine.set_linewidth(3)
            ax.set_xlabel(caption, fontsize=6.5)
        row += max(1, -(-len(block) // COLUMNS))
    return save_figure(fig, path)


def draw_overview(decisions: pd.DataFrame, classes: tuple[str, ...], title: str,
                  path: str | os.PathLike) -> Path:  # fmt: skip
    """Per class: training images, kept, dropped, relabelled (log scale, tail on the right)."""
    counts = {"training images": np.bincount(decisions["label"], minlength=len(classes))}
    for name, action in (("kept", "keep"), ("dropped", "drop"), ("relabelled", "relabel")):
        counts[name] = np.bincount(decisions.loc[decisions["action"] == action, "label"],
                                   minlength=len(classes))  # fmt: skip
    return class_distribution(path, classes, counts, title)


def with_truth(decisions: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """The decisions with ``true_label`` joined from the manifest, where it has one."""
    if "true_label" not in manifest.table or "true_label" in decisions:
        return decisions
    truth = manifest.table.set_index("sample_id")["true_label"]
    return decisions.assign(true_label=decisions["sample_id"].map(truth).to_numpy())


def write_gallery(
    decisions: pd.DataFrame,
    manifest: Manifest,
    out_dir: str | os.PathLike,
    round_name: str = "",
    per_section: int = 24,
    max_classes: int = 50,
    only: list[str] | None = None,
) -> list[Path]:
    """The overview and one gallery PNG per class (``only`` these, or as ``gallery_classes``
    chooses) in ``out_dir``; returns the files written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    decisions = with_truth(decisions, manifest)
    classes = manifest.classes
    if only:
        unknown = sorted(set(only) - set(classes))
        if unknown:
            raise ValueError(
                f"no class {unknown[0]!r} in the manifest; classes: "
                f"{', '.join(classes[:20])}{' ...' if len(classes) > 20 else ''}"
            )
        chosen, capped = [classes.index(name) for name in only], False
    else:
        chosen, capped = gallery_classes(decisions, len(classes), max_classes)
    if capped:
        print(
            f"{len(classes)} classes: drawing the {max_classes} that lost the largest share "
            f"of their samples (`noisytail gallery --class NAME` draws any other)"
        )
    written = [] if only else [draw_overview(decisions, classes,
                                             f"Round {round_name}: decisions per class",
                                             out_dir / "overview.png")]  # fmt: skip
    names = {}
    for label in chosen:
        name = file_name(classes[label])
        name = f"{name}_{label}" if name in names.values() else name
        names[label] = name
        tiles = class_tiles(decisions, label, per_section)
        title = f"Round {round_name}, class {classes[label]!r}"
        written.append(draw_class(tiles, manifest, title, out_dir / f"{name}.png"))
    return written
