"""The whole method as classes and images grow: `dvc repro` of profiles/scale.yaml on SKU-LT-N,
stage by stage, in a scratch clone per size.

Per stage: wall seconds, the peak resident memory of its process tree (sampled every 0.2 s,
the DataLoader workers and faiss threads included), the peak of its proportional set size (PSS,
sampled every second: pages the forked DataLoader workers share with their parent split among
them, where the RSS sum counts them per process; a near-lower bound, as pages shared with
processes outside the tree are split with those too) and the size of what it writes. Then per
stage kind (train, predict, clean, ...): its growth exponent in N between two sizes of the same
class count (``log(t2 / t1) / log(N2 / N1)``: 1 is linear, N log N between 100k and 500k is
about 1.13) and the factor that classes cost at a fixed N. The training and prediction passes
(train, predict, evaluate, member_*, member_views) grow as N times the model's cost by nature;
the goals are on the others. Per size also how often tau brings a class from outside the raw
top-10 into the tuned top-10 (``tau_moved_in``, read from the run's tuned.yaml): what a view
cache of only the ensemble's top-10 would have got wrong. And per size the accuracy the run
reached (``quality``: each round's test mean class error, round 1 on the noisy labels being the
plain baseline, the cleaning's precision / recall against the kept truth, the ensemble's error).

    python benchmarks/pipeline_scale.py [--sizes 100000x50030 500000x50030 100000x500 ...]

Resumable: a size's finished stages are kept in <work>/<size>/stages.json and not re-run; a
stage killed half-way resumes inside (the training stages checkpoint every epoch).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import yaml
from common import print_table, write_result

REPO = Path(__file__).resolve().parents[1]
PASSES = ("train", "predict", "evaluate", "member_full", "member_hires", "member_balance",
          "member_views")  # fmt: skip
DEFAULT_SIZES = ("100000x50030", "500000x50030", "100000x500", "100000x5000")


def kind(stage: str) -> str:
    return stage.split("@")[0]


def tree_memory(process: psutil.Process, proportional: bool = False) -> int:
    """Resident bytes of a process and all its descendants: summed RSS, or summed PSS (shared
    pages split among their sharers; reading it walks every mapping, so it is sampled less)."""
    try:
        tree = [process, *process.children(recursive=True)]
    except psutil.Error:  # the stage exited between two samples
        return 0
    total = 0
    for proc in tree:
        try:
            total += proc.memory_full_info().pss if proportional else proc.memory_info().rss
        except psutil.Error:
            continue
    return total


def run_measured(
    command: list[str], cwd: Path, env: dict, log: Path
) -> tuple[float, float, float, int]:
    """Run ``command``; its seconds, peak tree RSS and PSS (GB) and return code."""
    started = time.perf_counter()
    with log.open("a") as out:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    watched, peak, peak_pss, done = psutil.Process(process.pid), 0, 0, threading.Event()

    def sample() -> None:
        nonlocal peak, peak_pss
        tick = 0
        while not done.is_set():
            peak = max(peak, tree_memory(watched))
            if tick % 5 == 0:
                peak_pss = max(peak_pss, tree_memory(watched, proportional=True))
            tick += 1
            done.wait(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = process.wait()
    done.set()
    sampler.join()
    return time.perf_counter() - started, peak / 1e9, peak_pss / 1e9, code


def disk_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


def stages_in_order(repo: Path) -> list[tuple[str, list[str]]]:
    """The stages of the clone's pipeline, dependencies first, and the paths each writes."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc:
        graph = dvc.index.graph  # edges: stage -> a stage it depends on
        # names, not addressing: addressing is relative to this process's directory
        order = nx.lexicographical_topological_sort(graph.reverse(), key=lambda s: s.name)
        return [(s.name, [o.def_path for o in s.outs]) for s in order]


def scratch(work: Path, size: str, images: int, classes: int) -> Path:
    repo = work / size / "repo"
    if not (repo / ".git").is_dir():
        subprocess.run(["git", "clone", "-q", str(REPO), str(repo)], check=True)
        params = yaml.safe_load((REPO / "profiles" / "scale.yaml").read_text())
        sku = params["benchmark"]["sku_lt_n"]
        sku.update(images=images, classes=classes)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return repo


def measure(work: Path, size: str, env: dict) -> list[dict]:
    images, classes = (int(x) for x in size.split("x"))
    repo = scratch(work, size, images, classes)
    record = work / size / "stages.json"
    rows = json.loads(record.read_text()) if record.is_file() else []
    finished = {r["stage"] for r in rows}
    for stage, outs in stages_in_order(repo):
        if stage in finished:
            continue
        print(f"{size}: {stage}", flush=True)
        command = [sys.executable, "-m", "dvc", "repro", "--single-item", stage]
        seconds, peak, peak_pss, code = run_measured(command, repo, env, work / size / "repro.log")
        if code != 0:
            raise SystemExit(f"{size}: stage {stage} failed; see {work / size / 'repro.log'}")
        rows.append(
            {
                "n": images,
                "classes": classes,
                "stage": stage,
                "seconds": round(seconds, 1),
                "peak_gb": round(peak, 2),
                "peak_pss_gb": round(peak_pss, 2),
                "writes_mb": round(sum(disk_bytes(repo / o) for o in outs) / 1e6, 1),
            }
        )
        record.write_text(json.dumps(rows, indent=1))
        print_table(rows[-1:])
    return rows


def tau_moves(repo: Path) -> dict:
    """Per member, from the size's tuned.yaml: the share of val images whose tuned top-10 holds
    a class from outside the raw top-10 (at the tau used, and at the best trial's tau)."""
    tuned_file = repo / "tuned.yaml"
    if not tuned_file.is_file():
        return {}
    tuned = yaml.safe_load(tuned_file.read_text())
    return {name: {"tau": tuned["members"][name]["tau"],
                   "moved_in": decision.get("tau_moved_in"),
                   "moved_in_at_tuned": decision.get("tau_moved_in_at_tuned")}
            for name, decision in tuned.get("decisions", {}).items()
            if name in tuned["members"]}  # fmt: skip


def quality(repo: Path) -> dict:
    """From the size's run: per cleaning round its model's test mean class error and the
    cleaning against the kept truth; the ensemble's test error. Round 1 trains on the noisy
    labels: the plain baseline of the same run."""

    def read(path: Path) -> dict:
        return json.loads(path.read_text()) if path.is_file() else {}

    rounds = {}
    for report in sorted((repo / "data" / "clean").glob("round_*/report.json")):
        name = report.parent.name
        cleaning = read(report)
        error = read(repo / "metrics" / f"{name}.json").get("test", {}).get("mean_class_error")
        rounds[name] = {
            "test_mean_class_error": error,
            **{k: cleaning.get(k) for k in ("precision", "recall", "residual_noise")},
        }
    ensemble = read(repo / "metrics" / "ensemble.json").get("test", {}).get("mean_class_error")
    return {"rounds": rounds, "ensemble_test_mean_class_error": ensemble}


def by_kind(rows: list[dict]) -> dict[str, dict]:
    """Per stage kind: seconds summed over its stages (rounds, members), peak the largest."""
    kinds: dict[str, dict] = {}
    for r in rows:
        k = kinds.setdefault(kind(r["stage"]), {"seconds": 0.0, "peak_gb": 0.0, "writes_mb": 0.0,
                                                "pss": []})  # fmt: skip
        k["seconds"] += r["seconds"]
        k["peak_gb"] = max(k["peak_gb"], r["peak_gb"])
        k["writes_mb"] += r["writes_mb"]
        k["pss"].append(r.get("peak_pss_gb"))  # (rows recorded before PSS was sampled: None)
    for k in kinds.values():  # a peak over some of a kind's stages only would mislead
        pss = k.pop("pss")
        if None not in pss:
            k["peak_pss_gb"] = max(pss)
    return kinds


def timed_at(kinds: dict, stage_kind: str, *sizes: str) -> bool:
    """Whether the stage kind ran, and took measurable time, at each of ``sizes``."""
    return all(stage_kind in kinds[s] and kinds[s][stage_kind]["seconds"] > 0 for s in sizes)


def extremes(sizes: dict, fixed: int) -> list[tuple[str, str]]:
    """Per value of one coordinate of "NxC" (``fixed``: 0 for N, 1 for C), the smallest and the
    largest size along the other, where there are two or more."""
    groups: dict[int, list[str]] = {}
    for size in sizes:
        groups.setdefault(int(size.split("x")[fixed]), []).append(size)
    pairs = []
    for group in groups.values():
        group = sorted(group, key=lambda s: int(s.split("x")[1 - fixed]))
        if len(group) >= 2:
            pairs.append((group[0], group[-1]))
    return pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", nargs="+", default=list(DEFAULT_SIZES),
                        help="training images x classes")  # fmt: skip
    parser.add_argument("--work", default="outputs/pipeline_scale")
    args = parser.parse_args()

    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONUNBUFFERED": "1",
           "NOISYTAIL_CACHE_DIR": str(work / "decode-cache"),
           # the stages' `python` is this interpreter (its environment has the stack)
           "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}  # fmt: skip
    measured = {}
    for size in args.sizes:
        rows = measure(
            work,
            size,
            {
                **env,
                "PYTHONPATH": str(work / size / "repo" / "src"),
                "MLFLOW_TRACKING_URI": f"sqlite:///{work / size / 'mlflow.db'}",
            },
        )
        measured[size] = rows

    kinds = {size: by_kind(rows) for size, rows in measured.items()}
    summary: dict = {"sizes": {}, "exponent_in_n": {}, "class_factor": {}}
    for size, per_kind in kinds.items():
        n, classes = (int(x) for x in size.split("x"))
        summary["sizes"][size] = {"n": n, "classes": classes,
                                  "stages": {k: {"seconds": round(v["seconds"], 1),
                                                 **{m: round(v[m], 2) for m in
                                                    ("peak_gb", "peak_pss_gb") if m in v}}
                                             for k, v in per_kind.items()},
                                  "tau_moved_in": tau_moves(work / size / "repo"),
                                  "quality": quality(work / size / "repo")}  # fmt: skip
    for small, large in extremes(kinds, fixed=1):  # growth in N at a fixed class count
        ratio = int(large.split("x")[0]) / int(small.split("x")[0])
        summary["exponent_in_n"][f"{small}->{large}"] = {
            k: round(math.log(kinds[large][k]["seconds"] / kinds[small][k]["seconds"])
                     / math.log(ratio), 2)
            for k in kinds[small] if timed_at(kinds, k, small, large)
        }  # fmt: skip
    for few, many in extremes(kinds, fixed=0):  # the cost of classes at a fixed N
        summary["class_factor"][f"{few}->{many}"] = {
            k: round(kinds[many][k]["seconds"] / kinds[few][k]["seconds"], 2)
            for k in kinds[few] if timed_at(kinds, k, few, many)
        }  # fmt: skip
    table = [{"size": size, "stage": k, **{m: round(v[m], 2) for m in v}}
             for size, per_kind in kinds.items() for k, v in per_kind.items()]  # fmt: skip
    print_table(table)
    print(json.dumps({k: summary[k] for k in ("exponent_in_n", "class_factor")}, indent=1))
    write_result(
        "pipeline_scale",
        [r for rows in measured.values() for r in rows],
        summary=summary,
        passes=list(PASSES),
    )


if __name__ == "__main__":
    main()
