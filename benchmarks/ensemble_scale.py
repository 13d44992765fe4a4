"""The top-10 ensemble at AliProducts scale: 2.5M samples x 50,030 classes x 8 members.

Synthetic members' top-10 lists (each member's top-1 is the sample's true class 80% of the
time, the rest random classes, probabilities falling off geometrically) are built in memory
(1.6 GB, as predictions loaded from parquet would be), then ensembled in chunks. Reported: the
ensemble's seconds and the process's peak resident memory (inputs included), and, as a check
that the result is right, its top-1 agreement with the true class and with a dense average
computed exactly on a 2,000-sample slice: its top-5 scores and its top-5 classes.

    python benchmarks/ensemble_scale.py [--samples 2500000] [--classes 50030] [--members 8]
"""

from __future__ import annotations

import argparse
import resource
import time

import numpy as np
from common import print_table, write_result

from noisytail.test_time.ensemble import ensemble_top_k


def synthetic_member(truth: np.ndarray, classes: int, seed: int, top: int = 10):
    rng = np.random.default_rng(seed)
    n = len(truth)
    index = rng.integers(0, classes, size=(n, top), dtype=np.int32)
    right = rng.random(n) < 0.8
    index[right, 0] = truth[right]
    decay = 0.5 ** np.arange(top, dtype=np.float32)
    prob = (decay / decay.sum() * rng.uniform(0.6, 1.0, size=(n, 1))).astype(np.float32)
    return index, prob


def dense_check(members, classes: int, rows: int = 2000) -> np.ndarray:
    dense = np.zeros((rows, classes), dtype=np.float64)
    for index, prob in members:
        np.add.at(dense, (np.arange(rows)[:, None], index[:rows]), prob[:rows] / len(members))
    return dense


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--samples", type=int, default=2_500_000)
    parser.add_argument("--classes", type=int, default=50_030)
    parser.add_argument("--members", type=int, default=8)
    parser.add_argument("--chunk", type=int, default=65536)
    args = parser.parse_args()

    truth = np.random.default_rng(0).integers(0, args.classes, args.samples, dtype=np.int32)
    started = time.perf_counter()
    members = [synthetic_member(truth, args.classes, seed) for seed in range(1, args.members + 1)]
    built = time.perf_counter() - started
    input_gb = sum(i.nbytes + p.nbytes for i, p in members) / 1e9

    started = time.perf_counter()
    top, score = ensemble_top_k(members, k=5, top=10, chunk=args.chunk, show_progress=True)
    seconds = time.perf_counter() - started
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # KiB on Linux

    dense = dense_check(members, args.classes)
    exact = -np.sort(-dense, axis=1)[:, :5]
    max_error = float(np.abs(exact - score[: len(dense)]).max())
    # the classes too: the dense average of the classes chosen is the dense top-5 (a tie would
    # let either class be right), and how often they are the very same classes in order
    chosen = np.take_along_axis(dense, top[: len(dense)].astype(np.int64), axis=1)
    classes_right = bool(np.allclose(chosen, exact, rtol=0, atol=1e-6))
    same_classes = float((top[: len(dense)] == np.argsort(-dense, axis=1)[:, :5]).all(1).mean())
    rows = [{
        "samples": args.samples, "classes": args.classes, "members": args.members,
        "chunk": args.chunk, "build_s": round(built, 1), "input_gb": round(input_gb, 2),
        "ensemble_s": round(seconds, 1), "peak_gb": round(peak_gb, 2),
        "top1_is_truth": round(float((top[:, 0] == truth).mean()), 4),
        "max_error_vs_dense": max_error, "classes_match_dense": classes_right,
        "same_classes_share": round(same_classes, 4),
    }]  # fmt: skip
    print_table(rows)
    goals = {"seconds_under_60": seconds < 60, "peak_gb_under_6": peak_gb < 6,
             "classes_match_dense": classes_right}  # fmt: skip
    summary = {"samples": args.samples, "classes": args.classes, "members": args.members,
               "seconds": round(seconds, 1), "peak_gb": round(peak_gb, 2),
               "goals": goals}  # fmt: skip
    write_result("ensemble_scale", rows, summary=summary)


if __name__ == "__main__":
    main()
