"""One cleaning round's decision as N grows: neighbour evidence (faiss) + rule + report.

Synthetic data shaped like AliProducts: C = N / 50 classes with long-tailed sizes (Zipf), 512-d
float16 embeddings clustered by true class in families of classes (shaped after FMNIST-LT-N's
real embeddings, see below), 30% of the labels flipped, and synthetic top-10 predictions. Each N
runs in its own process, so its peak memory (max RSS) is its own. Recall@30 of the neighbours the
round used, and of the IVF's before the refinement (local joins), is measured against exact
search for a sample of queries. Then each FMNIST-LT-N round
is judged from its stored predictions with exact and with faiss neighbours (F1 against truth).

    python benchmarks/cleaning_scale.py [--sizes 100000 500000 2500000] [--queries 20000]
                                        [--nprobe 16] [--refinement 4]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pandas as pd
from common import print_table, write_result

from noisytail.prediction import matrix_column

DIM, NOISE, TOP_K, NEIGHBOURS = 512, 0.3, 10, 30
# Synthetic embeddings shaped like real ones. Measured on FMNIST-LT-N (resnet18 BNNeck,
# data/predictions/round_3/train.parquet, L2-normalised): within a class the covariance's
# eigenvalues fall as j^-1.6 (95% of the variance in 75 of 512 directions), the within-class
# share of the squared norm is 0.61, a class's nearest other class centre is at cosine 0.57-0.73
# (products come in families: shirt / T-shirt / pullover / coat), and 81% of the 30 nearest
# neighbours share the sample's true class. The generator: families of FAMILY classes whose
# centres share SIBLING of their direction; each class varies along RANK directions of its own
# (from a pool shared by all classes) with eigenvalues ~ j^-1.6, plus isotropic noise holding
# ISOTROPIC of the within-class variance (--isotropic 1: isotropic 512-d noise, the worst case
# for any index). With independent class centres instead (no families), a tail-class sample's
# neighbours outside its class are near-ties at cosine ~0 anywhere in the space, and recall@30
# of any inverted-file index falls for those samples (0.54 for classes under 31 images).
WITHIN_SHARE, RANK, DECAY, POOL, ISOTROPIC, FAMILY, SIBLING = 0.61, 32, 1.6, 4096, 0.05, 20, 0.6


def unit_rows(rows: int, rng) -> np.ndarray:
    x = rng.standard_normal((rows, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthetic_embeddings(truth: np.ndarray, classes: int, isotropic: float, rng) -> np.ndarray:
    """float16 N x 512: a unit class centre (in a family) plus structured and isotropic noise
    holding WITHIN_SHARE of the squared norm."""
    within = WITHIN_SHARE / (1 - WITHIN_SHARE)
    families = unit_rows(classes // FAMILY + 1, rng)[np.arange(classes) // FAMILY]
    centres = np.sqrt(SIBLING) * families + np.sqrt(1 - SIBLING) * unit_rows(classes, rng)
    pool = unit_rows(POOL, rng)
    directions = rng.integers(0, POOL, (classes, RANK))
    scale = np.arange(1, RANK + 1, dtype=np.float32) ** (-DECAY / 2)
    scale *= np.sqrt(within * (1 - isotropic) / (scale**2).sum())
    embedding = np.empty((len(truth), DIM), dtype=np.float16)
    for start in range(0, len(truth), 8192):  # in blocks: never an N x 512 float32 array
        block = truth[start : start + 8192]
        weights = rng.standard_normal((len(block), RANK), dtype=np.float32) * scale
        noise = np.einsum("br,brd->bd", weights, pool[directions[block]])
        noise += rng.standard_normal(noise.shape, dtype=np.float32) * np.sqrt(
            within * isotropic / DIM)  # fmt: skip
        embedding[start : start + len(block)] = centres[block] + noise
    return embedding


def synthetic_round(
    n: int, isotropic: float = ISOTROPIC, seed: int = 0
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, int]:
    """Predictions (top-10, label probability), float16 embeddings and the true labels."""
    rng = np.random.default_rng(seed)
    classes = max(10, n // 50)
    sizes = 1.0 / np.arange(1, classes + 1) ** 0.8  # long tail
    truth = rng.choice(classes, n, p=sizes / sizes.sum())
    embedding = synthetic_embeddings(truth, classes, isotropic, rng)
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
                          "topk_index": matrix_column(index), "topk_prob": matrix_column(prob),
                          "label_prob": label_prob})  # fmt: skip
    return table, embedding, truth, classes


def exact_top_k(embedding: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine k nearest neighbours (the query itself left out) of the rows ``queries``,
    scanning the float16 embeddings once in blocks."""
    import torch
    import torch.nn.functional as F

    def unit(rows: np.ndarray) -> torch.Tensor:
        return F.normalize(torch.from_numpy(rows.astype(np.float32)), dim=1)

    query = unit(embedding[queries])
    best = torch.full((len(queries), k), -np.inf), torch.zeros((len(queries), k), dtype=torch.long)
    with torch.no_grad():
        for block in range(0, len(embedding), 50_000):
            x = unit(embedding[block : block + 50_000])
            for first in range(0, len(queries), 4096):
                rows = slice(first, first + 4096)
                similarity = query[rows] @ x.T
                own = torch.from_numpy(queries[rows]) - block
                inside = torch.nonzero((own >= 0) & (own < len(x)))[:, 0]
                similarity[inside, own[inside]] = -np.inf
                top = similarity.topk(min(k, len(x)), dim=1)
                values = torch.cat([best[0][rows], top.values], 1)
                ids = torch.cat([best[1][rows], top.indices + block], 1)
                keep = values.topk(k, dim=1).indices
                best[0][rows], best[1][rows] = values.gather(1, keep), ids.gather(1, keep)
    return best[1].numpy()


def recall_at_k(embedding: np.ndarray, found: list[np.ndarray], queries: int, k: int) -> list:
    """For each neighbour graph in ``found``: the share of each sampled query's exact k nearest
    neighbours it holds (one exact search for all)."""
    chosen = np.sort(np.random.default_rng(1).choice(len(embedding), min(queries, len(embedding)),
                                                     replace=False))  # fmt: skip
    exact = exact_top_k(embedding, chosen, k)
    return [sum(len(set(a) & set(e)) for a, e in zip(graph[chosen, :k], exact))
            / (len(chosen) * k) for graph in found]  # fmt: skip


def peak_gb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def one_size(n: int, queries: int, nprobe: int, refinement: int, isotropic: float) -> dict:
    """Build the synthetic round, then time the decision alone (the work a round does)."""
    import noisytail.cleaning.neighbours as neighbours
    from noisytail.cleaning.reports import detection_report
    from noisytail.cleaning.rules import judge_predictions
    from noisytail.config.cleaning import CleaningConfig

    table, embedding, truth, classes = synthetic_round(n, isotropic)
    config = CleaningConfig(neighbours=NEIGHBOURS, neighbour_index="faiss", nprobe=nprobe,
                            neighbour_refinement=refinement, per_class=True,
                            prior_correction=0.5, threshold=0.5)  # fmt: skip
    # keep the neighbours the round used, and the IVF's before the refinement, which is timed
    search, refine = neighbours.nearest_neighbours, neighbours.refine_neighbours
    used, ivf, refine_seconds = [], [], []
    neighbours.nearest_neighbours = lambda *a, **kw: used.append(search(*a, **kw)) or used[-1]

    def timed_refine(embeddings, graph, *args, **kwargs):
        ivf.append(graph.copy())
        started = time.perf_counter()
        out = refine(embeddings, graph, *args, **kwargs)
        refine_seconds.append(time.perf_counter() - started)
        return out

    neighbours.refine_neighbours = timed_refine
    started = time.perf_counter()
    _, decided = judge_predictions(table, classes, config, embedding)
    report = detection_report(decided, truth, tuple(map(str, range(classes))))
    seconds = time.perf_counter() - started
    peak = peak_gb()  # the decision's peak (with the synthetic data it holds), before recall
    started = time.perf_counter()
    recall, recall_ivf = recall_at_k(embedding, [used[0], ivf[0]], queries, NEIGHBOURS)
    return {
        "n": n,
        "classes": classes,
        "seconds": round(seconds, 1),
        "refine_seconds": round(refine_seconds[0], 1),
        "peak_gb": peak,
        "recall_at_30": round(recall, 4),
        "recall_ivf": round(recall_ivf, 4),
        "recall_queries": min(queries, n),
        "recall_seconds": round(time.perf_counter() - started, 1),
        "f1": round(report["f1"], 3),
        "residual_noise": round(report["residual_noise"], 3),
    }


def fmnist_agreement(rounds: list[int], params_path: str = "params.yaml") -> list[dict]:
    """Each round of FMNIST-LT-N judged from its stored predictions with exact and with faiss
    neighbours (every other setting as in params.yaml): detection F1 of both against the truth."""
    from noisytail.cleaning.reports import detection_report
    from noisytail.cleaning.rules import judge_predictions, judged_samples
    from noisytail.config import load_params
    from noisytail.config.cleaning import round_config
    from noisytail.data.manifest import read_manifest
    from noisytail.prediction import read_embeddings, read_predictions

    params, rows = load_params(params_path), []
    original = read_manifest("data/prepared/manifest.parquet")
    for entry in params["cleaning"]["rounds"]:
        if int(entry["round"]) not in rounds:
            continue
        config = round_config(params["cleaning"], entry["round"])
        manifest = judged_samples(config, read_manifest(f"{entry['input']}/manifest.parquet"),
                                  original)  # fmt: skip
        path = f"data/predictions/round_{entry['round']}/train.parquet"
        predictions, embedding = read_predictions(path, embedding=False), read_embeddings(path)
        truth = manifest.split("train")["true_label"].to_numpy()
        row = {"round": entry["round"], "n": len(predictions)}
        for search in ("exact", "faiss"):
            judged = replace(config, neighbour_index=search)
            _, decided = judge_predictions(predictions, manifest.num_classes, judged, embedding)
            row[f"f1_{search}"] = round(detection_report(decided, truth, manifest.classes)["f1"], 4)
            row[f"dropped_{search}"] = int((decided["action"] == "drop").sum())
        row["f1_difference"] = round(abs(row["f1_faiss"] - row["f1_exact"]), 4)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 500_000, 2_500_000])
    parser.add_argument("--queries", type=int, default=20_000, help="recall@30 sample")
    parser.add_argument("--nprobe", type=int, default=16)
    parser.add_argument("--refinement", type=int, default=4, help="rounds of local joins")
    parser.add_argument("--isotropic", type=float, default=ISOTROPIC,
                        help="share of within-class variance in all 512 directions")  # fmt: skip
    parser.add_argument("--fmnist-rounds", type=int, nargs="*", default=[1, 2, 3],
                        help="FMNIST-LT-N rounds to judge both ways (needs dvc repro)")  # fmt: skip
    parser.add_argument("--one", type=int, default=0, help=argparse.SUPPRESS)  # child process
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one_size(args.one, args.queries, args.nprobe, args.refinement,
                                  args.isotropic)))  # fmt: skip
        return
    rows = []
    for n in args.sizes:
        child = subprocess.run([sys.executable, __file__, "--one", str(n), "--queries",
                                str(args.queries), "--nprobe", str(args.nprobe),
                                "--refinement", str(args.refinement),
                                "--isotropic", str(args.isotropic)],
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
    fmnist = fmnist_agreement(args.fmnist_rounds) if args.fmnist_rounds else []
    if fmnist:
        print("\nFMNIST-LT-N, each round's predictions judged with exact and faiss neighbours")
        print_table(fmnist)
    last = rows[-1]
    write_result("cleaning_scale", rows, nprobe=args.nprobe, refinement=args.refinement,
                 isotropic=args.isotropic,
                 fmnist=fmnist, summary={
        "n": last["n"], "seconds": last["seconds"], "peak_gb": last["peak_gb"],
        "recall_at_30": last["recall_at_30"], "recall_ivf": last["recall_ivf"],
        "exponent": round(exponent, 3) if exponent else None,
    })  # fmt: skip


if __name__ == "__main__":
    main()
