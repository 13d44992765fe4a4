"""The headline: a fresh clone's `make run` per benchmark seed, timed, and the table README quotes.

    python benchmarks/headline.py [--seeds 0 1] [--work outputs/headline]
    python benchmarks/headline.py --runs <finished clone> ... [--run-seconds S ...]

Per seed: `git clone` of this repository's HEAD into <work>/seed_<s>, `seed: <s>` in its
params.yaml, then `make run` (the set-up included, as a new user types it), timed; the time and
the machine go to <work>/seed_<s>.json as soon as the seed ends. Read from the run's own files:
each cleaning round's model (round r trains on round r - 1's output; round 1 is noisytail's
recipe on the noisy labels), member resnet18_r3's three steps (full on round 3's output; hires;
balance, with the step it started from), the ensemble; val and test mean class error (the
ensemble's val is the split tau, TTA and weights were tuned on); whether `dvc status` is clean;
round 1's median epoch time. ``--runs`` reads clones that ran `make run` already: their seed
from params.yaml, their time from <clone>.json beside them or ``--run-seconds`` (recorded as
given, not measured here).

The benchmark seed draws the data (class order, noisy samples) and round training; the members
keep their own seeds (params.yaml), so the spread over benchmark seeds is the data's and the
cleaning's, not every initialisation's. The anchors are not re-run: the plain timm recipe and
noisytail's recipe on the true labels come from benchmarks/results/baseline.json (the same seed
draws the same images; its noisy-label recipe row must equal round 1's, which is checked). Every
choice is made on val inside the run; test is only reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import yaml
from common import RESULTS, machine, print_table, write_result

REPO = Path(__file__).resolve().parents[1]
MEMBER = "resnet18_r3"  # the single-model rows: the first member, on round 3's output
ENV = {**os.environ, "DVC_NO_ANALYTICS": "1", "PROFILE": ""}  # a caller's PROFILE: not here


def seeded(text: str, seed: int) -> str:
    """params.yaml's text with its top-level ``seed`` set, nothing else changed."""
    new = re.sub(r"^seed: *\d+ *$", f"seed: {seed}", text, count=1, flags=re.M)
    if yaml.safe_load(new) != {**yaml.safe_load(text), "seed": seed}:
        raise SystemExit("params.yaml: no top-level `seed: <n>` line to set")
    return new


def fresh_run(seed: int, work: Path) -> Path:
    """Clone HEAD, set the benchmark seed, `make run`; <work>/seed_<s>.json records the time."""
    clone, log = work / f"seed_{seed}", work / f"seed_{seed}.log"
    if clone.exists():
        raise SystemExit(f"{clone} exists: remove it, or read a finished one with --runs {clone}")
    params = seeded(subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=REPO, check=True,
                                   capture_output=True, text=True).stdout, seed)  # fmt: skip
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / "params.yaml").write_text(params)
    print(f"seed {seed}: make run in {clone} (log: {log})", flush=True)
    start = time.perf_counter()
    with open(log, "w") as out:
        code = subprocess.run(["make", "run"], cwd=clone, stdout=out, stderr=subprocess.STDOUT,
                              env=ENV).returncode  # fmt: skip
    if code:
        raise SystemExit(f"seed {seed}: make run failed (exit {code}); see {log}")
    timing = {"make_run_seconds": round(time.perf_counter() - start), "machine": machine()}
    (work / f"seed_{seed}.json").write_text(json.dumps(timing, indent=1))
    return clone


def errors(metrics_file: Path) -> dict:
    """Val and test mean class error of a metrics file."""
    metrics = json.loads(metrics_file.read_text())
    missing = [
        split for split in ("val", "test") if "mean_class_error" not in metrics.get(split, {})
    ]
    if missing:
        raise SystemExit(f"{metrics_file}: no {' or '.join(missing)} mean_class_error")
    return {split: metrics[split]["mean_class_error"] for split in ("val", "test")}


def cleanings_before(clone: Path, r: int) -> int:
    """How many rounds before round r changed the data (a round the chance guard held back
    keeps its input; runs from before the guard always cleaned)."""
    reports = [json.loads((clone / f"data/clean/round_{k}/report.json").read_text())
               for k in range(1, r)]  # fmt: skip
    return sum(bool(report.get("cleaned", True)) for report in reports)


def read_run(clone: Path, seconds: float | None) -> tuple[list[dict], dict]:
    """The headline rows of a finished run, and its facts (seed, commit, time, status)."""
    params = yaml.safe_load((clone / "params.yaml").read_text())
    seed, backbone = int(params["seed"]), params["model"]["backbone"]
    rows = []
    for r in range(1, len(params["cleaning"]["rounds"]) + 1):
        what = (f"after {cleanings_before(clone, r)} cleaning(s)" if r > 1
                else "recipe, no cleaning (noisy labels)")  # fmt: skip
        rows.append({"seed": seed, "model": f"round {r} {backbone}", "what": what,
                     **errors(clone / f"metrics/round_{r}.json")})  # fmt: skip
    members = pd.read_csv(clone / "metrics/members.csv")
    steps = members[members["member"] == MEMBER]
    if steps.empty:
        print(f"warning: {clone}: no member {MEMBER}; no member rows", file=sys.stderr)
    for _, step in steps.iterrows():
        start = f", from {step['start']}" if isinstance(step["start"], str) else ""
        rows.append({"seed": seed, "model": f"{MEMBER} {step['step']}",
                     "what": f"{step['recipe']}{start}", "val": step["val_mean_class_error"],
                     "test": step["test_mean_class_error"]})  # fmt: skip
    size = members["member"].nunique()
    rows.append({"seed": seed, "model": "ensemble", "what": f"{size} members, tuned on val",
                 **errors(clone / "metrics/ensemble.json")})  # fmt: skip

    dvc = clone / ".venv/bin/dvc"
    command = [str(dvc)] if dvc.exists() else [sys.executable, "-m", "dvc"]
    status = subprocess.run([*command, "status", "--json"], cwd=clone, capture_output=True,
                            text=True, env=ENV)  # fmt: skip
    up_to_date = status.returncode == 0 and json.loads(status.stdout or "{}") == {}
    if not up_to_date:
        print(f"warning: {clone}: dvc status is not clean; its rows may not be this commit's",
              file=sys.stderr)  # fmt: skip
    timing_file = clone.parent / f"{clone.name}.json"
    timing = json.loads(timing_file.read_text()) if timing_file.is_file() else {}
    done = json.loads((clone / "models/round_1/done.json").read_text())
    commit = subprocess.run(["git", "log", "-1", "--format=%h %s"], cwd=clone,
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    facts = {
        "seed": seed, "commit": commit[:80],
        "make_run_seconds": timing.get("make_run_seconds", seconds),
        "seconds_from": timing_file.name if timing else "given" if seconds else None,
        "ran_on": timing.get("machine"),
        "round_1_median_epoch_seconds": round(statistics.median(
            h["epoch_seconds"] for h in done["history"]), 1),
        "dvc_status_clean": up_to_date,
    }  # fmt: skip
    return rows, facts


def anchors(rows: list[dict]) -> tuple[list[dict], dict]:
    """baseline.json's rows for the runs' seeds (its noisy-label recipe row checked against
    round 1's, the same training on the same images), and the machine they were measured on."""
    baseline = json.loads((RESULTS / "baseline.json").read_text())
    out = []
    for row in rows:
        summary = baseline["summary"].get(str(row["seed"]))
        if not row["model"].startswith("round 1") or summary is None:
            continue
        if abs(summary["ours_noisy"] - row["test"]) > 0.01:
            print(f"warning: seed {row['seed']}: round 1 {row['test']} but baseline.json's "
                  f"recipe on the noisy labels {summary['ours_noisy']}: not the same training "
                  f"(another CPU kind, or recipe)", file=sys.stderr)  # fmt: skip
        for key, model in (("ours_noisy", "noisytail recipe (noisy labels)"),
                           ("plain_noisy", "plain timm recipe (noisy labels)"),
                           ("plain_oracle", "plain timm recipe (true labels)"),
                           ("ours_oracle", "noisytail recipe (true labels)")):  # fmt: skip
            out.append({"seed": row["seed"], "model": model, "what": "baseline.json",
                        "test": summary[key]})  # fmt: skip
    return out, baseline["machine"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--work", default="outputs/headline")
    parser.add_argument("--runs", nargs="+", default=[], help="finished clones to read")
    parser.add_argument("--run-seconds", type=float, nargs="+", default=[],
                        help="the wall time of each --runs clone's `make run`")  # fmt: skip
    parser.add_argument("--name", default="headline", help="results/<name>.json")
    args = parser.parse_args()
    if len(args.run_seconds) > len(args.runs):
        parser.error("more --run-seconds than --runs")

    if args.runs:
        clones = [Path(run).resolve() for run in args.runs]
    else:
        clones = [fresh_run(seed, Path(args.work).resolve()) for seed in args.seeds]
    seconds = args.run_seconds + [None] * (len(clones) - len(args.run_seconds))
    rows, facts = [], []
    for clone, s in zip(clones, seconds):
        run_rows, run_facts = read_run(clone, s)
        rows += run_rows
        facts.append(run_facts)
    anchor_rows, anchor_machine = anchors(rows)
    print_table(rows + anchor_rows)
    print_table([{k: v for k, v in f.items() if k != "ran_on"} for f in facts])
    write_result(args.name, rows, runs=facts, anchors=anchor_rows,
                 anchors_machine=anchor_machine)  # fmt: skip


if __name__ == "__main__":
    main()
