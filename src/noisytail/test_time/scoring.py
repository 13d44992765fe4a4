"""The members as tuned and their ensembles, scored from the view caches: the one builder of the
rows that metrics/ensemble_rows.csv, the ablation table and the served model report."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from noisytail.test_time.cache import tta_top_k
from noisytail.test_time.ensemble import ensemble_top_k

Lists = tuple[np.ndarray, np.ndarray]  # N x top classes and probabilities, best first


def member_top_k(caches: Mapping[str, Mapping[str, np.ndarray]], tuned: Mapping,
                 top: int) -> Lists:  # fmt: skip
    """What one member contributes to the ensemble: its top-``top`` at its tuned tau (None: the
    classifier as trained), scale and TTA mode. ``caches``: scale (``f"{s:g}"``) -> cache."""
    return tta_top_k(caches[f"{tuned['scale']:g}"], tuned["tau"], tuned["mode"], top)


def ensemble_rows(
    views: Mapping[str, Mapping[str, Mapping[str, np.ndarray]]],
    tuned: Mapping[str, Mapping],
    plain_scale: str,
    top: int,
    subsets: Mapping[str, Sequence[str]] | None = None,
    k: int = 5,
) -> tuple[dict[str, np.ndarray], Lists]:
    """Each row's best classes: per member as trained (bias, centre view at
    ``plain_scale``), + tau, + tau and TTA; the ensemble with equal and with the tuned weights;
    and an equal-weight ensemble of each named subset of members. Also the tuned ensemble's
    ``k`` best classes and their probabilities."""
    rows, lists = {}, {}
    for m, t in tuned.items():
        centre = views[m][plain_scale]
        rows[f"{m}/as_trained"] = tta_top_k(centre, None, "none", top)[0]
        rows[f"{m}/tau"] = tta_top_k(centre, t["tau"], "none", top)[0]
        lists[m] = member_top_k(views[m], t, top)
        rows[f"{m}/tau+tta"] = lists[m][0]
    rows["ensemble/equal_weights"] = ensemble_top_k(list(lists.values()), k=1, top=top)[0]
    for name, members in (subsets or {}).items():
        rows[name] = ensemble_top_k([lists[m] for m in members], k=1, top=top)[0]
    final = ensemble_top_k(list(lists.values()), [t["weight"] for t in tuned.values()], k=k,
                           top=top)  # fmt: skip
    rows["ensemble"] = final[0]
    return rows, final


def rows_table(report: Mapping[str, Mapping[str, Mapping[str, float]]]) -> pd.DataFrame:
    """``report[row][split]`` (metric -> value) as one table: a line per row and split."""
    return pd.DataFrame([{"row": row, "split": split, **metrics}
                         for row, splits in report.items()
                         for split, metrics in splits.items()])  # fmt: skip


def read_rows(path: str | Path) -> dict[str, dict[str, dict[str, float]]]:
    """The table ``rows_table`` wrote, back as ``report[row][split]``."""
    report: dict[str, dict[str, dict[str, float]]] = {}
    for record in pd.read_csv(path).to_dict("records"):
        row, split = record.pop("row"), record.pop("split")
        report.setdefault(row, {})[split] = {k: v for k, v in record.items() if v == v}
    return report


def headline(report: Mapping[str, Mapping[str, Mapping[str, float]]]) -> dict:
    """What metrics/ensemble.json keeps (a DVC metric: it must fit on a screen): the tuned
    ensemble, per split; every other row is in the rows table."""
    return dict(report["ensemble"])
