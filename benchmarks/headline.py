"""The headline: a fresh clone's `make run` per benchmark seed, timed, and the table README quotes.

    python benchmarks/headline.py [--seeds 0 1] [--work outputs/headline]
    python benchmarks/headline.py --runs <finished clone> ... [--run-seconds S ...]

Per seed: `git clone` of this repository's HEAD into <work>/seed_<s>, `seed: <s>` in its
params.yaml, then `make run` (the set-up included, as a new user types it), timed. Read from the
run's own files: each cleaning round's model (round r trains on what round r - 1 kept: round 1
is noisytail's recipe on the noisy labels), member resnet18_r3's three steps (full on round 3's
output, so after three cleanings; hires; balance), the ensemble; val and test mean class error;
whether `dvc status` is clean after the run; round 1's median epoch time (the machine's speed).
``--runs`` reads clones that ran `make run` already (their seed from their params.yaml;
``--run-seconds`` the wall time measured around each).

The anchors are not re-run here: the plain timm recipe and noisytail's recipe on the true labels
come from benchmarks/results/baseline.json (the same seed draws the same images; its machine is
quoted with them). Every choice is made on val inside the run; test is only reported.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from common import RESULTS, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
MEMBER = "resnet18_r3"  # the single-model rows: resnet18 on round 3's data


def fresh_run(seed: int, work: Path) -> tuple[Path, float]:
    """Clone HEAD, set the benchmark seed, `make run`; the clone and the seconds it took."""
    clone = work / f"seed_{seed}"
    if clone.exists():
        raise SystemExit(f"{clone} exists: remove it, or read it with --runs {clone}")
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    params = clone / "params.yaml"
    text = params.read_text()
    if not text.startswith("#") or "\nseed: 0\n" not in text:
        raise SystemExit(f"{params}: no top-level `seed: 0` to set")
    params.write_text(text.replace("\nseed: 0\n", f"\nseed: {seed}\n", 1))
    start = time.perf_counter()
    with open(work / f"seed_{seed}.log", "w") as log:
        subprocess.run(["make", "run"], cwd=clone, stdout=log, stderr=subprocess.STDOUT,
                       check=True)  # fmt: skip
    return clone, time.perf_counter() - start


def errors(metrics_file: Path) -> dict:
    """Val and test mean class error of a metrics file."""
    metrics = json.loads(metrics_file.read_text())
    return {split: metrics[split]["mean_class_error"] for split in ("val", "test") if split in
            metrics}  # fmt: skip


def read_run(clone: Path, seconds: float | None) -> tuple[list[dict], dict]:
    """The headline rows of a finished run, and its facts (seed, commit, time, status)."""
    seed = int(yaml.safe_load((clone / "params.yaml").read_text())["seed"])
    rows = []
    for r in (1, 2, 3):
        # round r's model trains on what round r - 1 kept
        what = f"after {r - 1} cleaning round(s)" if r > 1 else "recipe, no cleaning (noisy labels)"
        rows.append({"seed": seed, "model": f"round {r} resnet18", "what": what,
                     **errors(clone / f"metrics/round_{r}.json")})  # fmt: skip
    members = pd.read_csv(clone / "metrics/members.csv")
    for _, step in members[members["member"] == MEMBER].iterrows():
        rows.append({"seed": seed, "model": f"{MEMBER} {step['step']}", "what": step["recipe"],
                     "val": step["val_mean_class_error"],
                     "test": step["test_mean_class_error"]})  # fmt: skip
    size = f"{members['member'].nunique()} members"
    rows.append({"seed": seed, "model": "ensemble", "what": size,
                 **errors(clone / "metrics/ensemble.json")})  # fmt: skip
    done = json.loads((clone / "models/round_1/done.json").read_text())
    dvc = [str(clone / ".venv/bin/dvc")] if (clone / ".venv/bin/dvc").exists() else [
        sys.executable, "-m", "dvc"]  # fmt: skip
    status = subprocess.run([*dvc, "status"], cwd=clone, capture_output=True, text=True)
    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=clone,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    facts = {
        "seed": seed, "commit": commit[:80], "make_run_seconds": seconds,
        "round_1_median_epoch_seconds": round(statistics.median(
            h["epoch_seconds"] for h in done["history"]), 1),
        "dvc_status": status.stdout.strip().splitlines()[-1:] if status.returncode == 0
        else f"failed: {status.stderr.strip()[-200:]}",
    }  # fmt: skip
    return rows, facts


def anchors(seeds: list[int]) -> tuple[list[dict], dict]:
    """The plain recipe and the true-label rows of baseline.json for these seeds, and the
    machine they were measured on."""
    baseline = json.loads((RESULTS / "baseline.json").read_text())
    rows = []
    for seed in seeds:
        summary = baseline["summary"].get(str(seed))
        if summary is None:
            continue
        for key, model in (("plain_noisy", "plain timm recipe (noisy labels)"),
                           ("plain_oracle", "plain timm recipe (true labels)"),
                           ("ours_oracle", "noisytail recipe (true labels)")):  # fmt: skip
            rows.append({"seed": seed, "model": model, "what": "baseline.json",
                         "test": summary[key]})  # fmt: skip
    return rows, baseline["machine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default="outputs/headline")
    parser.add_argument("--runs", nargs="+", default=[], help="finished clones to read")
    parser.add_argument("--run-seconds", type=float, nargs="+", default=[],
                        help="the wall time of each --runs clone's `make run`")  # fmt: skip
    args = parser.parse_args()

    if args.runs:
        seconds = args.run_seconds + [None] * (len(args.runs) - len(args.run_seconds))
        finished = [(Path(run).resolve(), s) for run, s in zip(args.runs, seconds)]
    else:
        finished = [fresh_run(seed, Path(args.work)) for seed in args.seeds]
    rows, facts = [], []
    for clone, s in finished:
        run_rows, run_facts = read_run(clone, s)
        rows += run_rows
        facts.append(run_facts)
    anchor_rows, anchor_machine = anchors([f["seed"] for f in facts])
    print_table(rows + anchor_rows)
    print_table(facts)
    write_result("headline", rows, runs=facts, anchors=anchor_rows,
                 anchors_machine=anchor_machine)  # fmt: skip


if __name__ == "__main__":
    main()
