"""One cleaning round's decision as N grows: neighbour evidence (faiss) + rule + report.

Synthetic data shaped like AliProducts: C = N / 50 classes with long-tailed sizes (Zipf), 512-d
float16 embeddings clustered by true class, 30% of the labels flipped, and synthetic top-10
predictions. Each N runs in its own process, so its peak memory (max RSS) is its own. Recall@30
of the faiss neighbours is measured against exact search for a sample of queries.

    python benchmarks/cleaning_scale.py [--sizes 100000 500000 2500000] [--queries 20000]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import numpy as np
import pandas as pd
from common import print_table, write_result

DIM, NOISE, TOP_K, NEIGHBOURS = 512, 0.3, 10, 30


def synthetic_round(n: int, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, int]:
    """Predictions (top-10, label probability, float16 embedding) and the true labels."""
    rng = np.random.default_rng(seed)
    classes = max(10, n // 50)
    sizes = 1.0 / np.arange(1, classes + 1) ** 0.8  # long tail
    truth = rng.choice(classes, n, p=sizes / sizes.sum())
    centres = rng.normal(size=(classes, DIM)).astype(np.float32)
    embedding = np.empty((n, DIM), dtype=np.float16)
    for start in range(0, n, 100_000):  # in blocks: never an N x 512 float32 array
        block = truth[start : start + 100_000]
        embedding[start : start + len(block)] = centres[block] + 0.8 * rng.normal(
            size=(len(block), DIM)
        ).astype(np.float32)
    label = truth.copy()
    flip = rng.random(n) < NOISE
    label[flip] = rng.integers(0, classes, int(flip.sum()))
    # the model mostly believes the truth, sometimes the (memorised) given label
    first = np.where(rng.random(n) < 0.8, truth, label)
    others = rng.integers(0, classes, (n, TOP_K - 1))
    index = np.concatenate([first[:, None], others], axis=1).astype(np.int32)
    prob = rng.dirichlet(np.r_[8.0, np.ones(TOP_K - 1)], n).astype(np.float32)
    prob = -np.sort(-prob, axis=1)
    in_top = index == label[:, None]
    label_prob = np.where(in_top.any(1), (prob * in_top).max(1), 1e-4).astype(np.float32)
    table = pd.DataFrame({"sample_id": np.arange(n).astype(str), "label": label,
                          "topk_index": list(index), "topk_prob": list(prob),
                          "label_prob": label_prob, "embedding": list(embedding)})  # fmt: skip
    return table, truth, classes


def recall_at_k(embedding: np.ndarray, found: np.ndarray, queries: int, k: int) -> float:
    """Share of each query's exact k nearest neighbours that the approximate search found."""
    import torch
    import torch.nn.functional as F

    from noisytail.neighbours import exact_neighbours  # noqa: F401 (the definition of exact)

    rng = np.random.default_rng(1)
    chosen = np.sort(rng.choice(len(embedding), min(queries, len(embedding)), replace=False))
    hits = 0
    with torch.no_grad():
        for start in range(0, len(chosen), 1024):
            rows = chosen[start : start + 1024]
            q = F.normalize(torch.from_numpy(embedding[rows].astype(np.float32)), dim=1)
            best = (
                torch.full((len(rows), k), -np.inf),
                torch.zeros((len(rows), k), dtype=torch.long),
            )
            for block in range(0, len(embedding), 200_000):
                x = F.normalize(torch.from_numpy(embedding[block : block + 200_000].astype(
                    np.float32)), dim=1)  # fmt: skip
                sim = q @ x.T
                own = torch.from_numpy(rows)[:, None] - block
                valid = (own >= 0) & (own < len(x))
                sim[valid[:, 0], own[valid[:, 0], 0]] = -np.inf
                top = sim.topk(min(k, len(x)), dim=1)
                values = torch.cat([best[0], top.values], 1)
                ids = torch.cat([best[1], top.indices + block], 1)
                keep = values.topk(k, dim=1).indices
                best = values.gather(1, keep), ids.gather(1, keep)
            exact = best[1].numpy()
            hits += sum(len(set(a) & set(e)) for a, e in zip(found[rows, :k], exact))
    return hits / (len(chosen) * k)


def one_size(n: int, queries: int, nprobe: int) -> dict:
    """Build the synthetic round, then time the decision alone (the work a round does)."""
    from noisytail.cleaning import CleaningConfig, decide, detection_report, scores
    from noisytail.neighbours import faiss_neighbours, neighbour_smoothed

    table, truth, classes = synthetic_round(n)
    config = CleaningConfig(neighbours=NEIGHBOURS, neighbour_index="faiss", nprobe=nprobe,
                            per_class=True, prior_correction=0.5, threshold=0.5)  # fmt: skip
    started = time.perf_counter()
    evidence = neighbour_smoothed(table, config.neighbours, config.neighbour_weight,
                                  search="faiss", nprobe=nprobe)  # fmt: skip
    decided = decide(scores(evidence, classes, config.prior_correction), config)
    report = detection_report(decided, truth, tuple(map(str, range(classes))))
    seconds = time.perf_counter() - started
    embedding = np.stack(table["embedding"].to_numpy())
    found = faiss_neighbours(embedding, NEIGHBOURS, nprobe=nprobe)
    recall = recall_at_k(embedding, found, queries, NEIGHBOURS)
    return {
        "n": n,
        "classes": classes,
        "seconds": round(seconds, 1),
        "peak_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "recall_at_30": round(recall, 4),
        "recall_queries": min(queries, n),
        "f1": round(report["f1"], 3),
        "residual_noise": round(report["residual_noise"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 2_500_000])
    parser.add_argument("--queries", type=int, default=20_000, help="recall@30 sample")
    parser.add_argument("--nprobe", type=int, default=32)
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.queries, args.nprobe)))
        return
    rows = []
    for n in args.sizes:
        child = subprocess.run([sys.executable, __file__, "--one", str(n), "--queries",
                                str(args.queries), "--nprobe", str(args.nprobe)],
                               capture_output=True, text=True)  # fmt: skip
        if child.returncode:
            print(child.stderr[-3000:])
            raise SystemExit(f"N = {n} failed")
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print_table(rows[-1:])
    sizes, seconds = np.array([r["n"] for r in rows]), np.array([r["seconds"] for r in rows])
    exponent = float(np.polyfit(np.log(sizes), np.log(seconds), 1)[0]) if len(rows) > 1 else None
    print()
    print_table(rows)
    print(f"time grows as N^{exponent:.2f}" if exponent else "")
    last = rows[-1]
    write_result("cleaning_scale", rows, nprobe=args.nprobe, summary={
        "n": last["n"], "seconds": last["seconds"], "peak_gb": last["peak_gb"],
        "recall_at_30": last["recall_at_30"],
        "exponent": round(exponent, 3) if exponent else None,
    })  # fmt: skip


if __name__ == "__main__":
    main()
