"""The cleaning design chosen on validation: the DVC pipeline's own rounds, run as experiments.

Nothing here re-implements a round. A scratch clone of this repository (at its HEAD commit)
runs `dvc exp run` once per variant of the cleaning settings, up to the rounds' `evaluate`
stages and the full step of one member trained on the last round's data (the same recipe as the
rounds' models, unless the member says otherwise); the variants share one DVC cache, so a stage
whose inputs a variant leaves alone (prepare, round 1's model, often round 2's) is restored from
DVC's run cache instead of re-run. Then per variant and round it reads what the stages wrote:
the model's val and test mean class error (`metrics/round_<r>.json`), the round's detection
against the kept truth (`data/clean/round_<r>/report_full.json`), and the final data's model.

The choice is made on val only (FMNIST-LT-N's val is clean): a variant replaces the default
when its final model's val mean class error is lower by more than the paired noise of the val
set (noisytail.test_time.selection). Test is reported. Beside them, trained in the same run:
CE-noisy (round 1's model), CE-oracle (the same pipeline on `benchmark.eta=0`: the same samples with
their true labels) and the plain timm recipe of benchmarks/baseline.py on the noisy labels.

    python benchmarks/cleaning_rounds.py [--variants default judge_kept ...] [--seed 0]

Resumable: each variant's figures are kept in <work>/results/<variant>_seed<s>.json once read,
and each variant's workspace (<work>/<variant>) keeps what its stages finished.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import yaml
from accelerate import Accelerator
from baseline import plain_recipe
from common import print_table, write_result

from noisytail.config import flatten
from noisytail.config.members import member_plan
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.transforms import eval_transform
from noisytail.models.network import load_network
from noisytail.prediction import model_view, predict_top_k
from noisytail.test_time.selection import compare_on_val

REPO = Path(__file__).resolve().parents[1]


def thresholds(*values: float) -> Callable[[dict], None]:
    """Round r drops below ``values[r - 1]`` (the rounds' own overrides replaced)."""

    def edit(params: dict) -> None:
        for entry, value in zip(params["cleaning"]["rounds"], values, strict=True):
            entry["threshold"] = value

    return edit


def cleaning(**settings) -> Callable[[dict], None]:
    return lambda params: params["cleaning"].update(settings)


# Each variant changes one design choice of the default (params.yaml as it is).
VARIANTS: dict[str, Callable[[dict], None]] = {
    "default": lambda params: None,
    "threshold_0.5": thresholds(0.5, 0.5, 0.5),
    "threshold_0.8": thresholds(0.8, 0.8, 0.8),
    "judge_kept": cleaning(judge="kept"),
    "no_neighbours": cleaning(neighbour_weight=0.0),
    "early_predictions": cleaning(predictions="early"),
    "out_of_fold": cleaning(predictions="out_of_fold"),  # 2 fold models a round: 3x the time
    # relabel a disagreeing sample predicted at least this confidently, instead of dropping it
    # (off by default: 1.01); the lever the pretrained profile's noise cost points at
    "relabel_0.5": cleaning(relabel_threshold=0.5),
    "relabel_0.7": cleaning(relabel_threshold=0.7),
}
DEFAULT_VARIANTS = ("default", "threshold_0.5", "threshold_0.8", "judge_kept", "no_neighbours",
                    "early_predictions")  # fmt: skip


def run(args: list[str], cwd: Path, env: dict) -> None:
    print("+", " ".join(args), flush=True)
    subprocess.run(args, cwd=cwd, env=env, check=True)


def scratch_workspace(work: Path, name: str, env: dict) -> Path:
    """The workspace of one variant: the default's is a clone of this repository's HEAD; every
    other variant starts from a copy of the finished default workspace, so that `dvc exp run`
    re-runs only the stages the variant changes (the training stages keep persistent outputs,
    which DVC's run cache does not restore)."""
    repo = work / name
    if (repo / ".git").is_dir():
        return repo
    if name == "default":
        run(["git", "clone", "-q", str(REPO), str(repo)], work, env)
        cache = str((work / "cache").resolve())  # one DVC cache for every variant's copy
        run([sys.executable, "-m", "dvc", "cache", "dir", cache], repo, env)
    else:
        shutil.copytree(work / "default", repo, symlinks=True)
    return repo


def changes(base: dict, edited: dict) -> dict:
    """The dotted keys whose values differ (what `dvc params diff` would show)."""
    before, after = flatten(base), flatten(edited)
    keys = sorted(set(before) | set(after))
    return {k: after.get(k) for k in keys if before.get(k) != after.get(k)}


def val_predictions(model_file: Path, manifest_file: Path) -> list[int]:
    """Top-1 on val at the model's own view (for the paired comparison of variants)."""
    model, _ = load_network(model_file)
    manifest = read_manifest(manifest_file)
    size, view = model_view(model)
    channels = model.config.in_chans
    dataset = ImageDataset.from_manifest(manifest, "val", eval_transform(size, channels, view),
                                         channels=channels)  # fmt: skip
    table = predict_top_k(model, dataset, Accelerator(cpu=True), top_k=1, workers=0)
    return [int(i[0]) for i in table["topk_index"]]


def read_variant(repo: Path, rounds: int, member: str) -> dict:
    """What the stages of one experiment wrote: per round model metrics and detection."""
    result: dict = {"rounds": []}
    for r in range(1, rounds + 1):
        model = json.loads((repo / f"metrics/round_{r}.json").read_text())
        entry = {"round": r, "model": model}
        report = repo / f"data/clean/round_{r}/report_full.json"
        if report.is_file():
            entry["cleaning"] = json.loads(report.read_text())
        result["rounds"].append(entry)
    final = repo / f"metrics/members/{member}/full.json"
    if final.is_file():
        result["final_model"] = json.loads(final.read_text())
        weights = repo / f"models/members/{member}/full/model.safetensors"
        result["final_val_pred"] = val_predictions(weights, repo / "data/prepared/manifest.parquet")
    return result


def run_experiment(name: str, repo: Path, params: dict, targets: list[str], env: dict) -> float:
    """`dvc exp run --name <name> <targets>` on ``params`` in the clone; its seconds."""
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    started = time.perf_counter()
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "exp", "remove", name], cwd=repo, env=env, capture_output=True)
    run([*dvc, "exp", "run", "--name", name, *targets], repo, env)
    return time.perf_counter() - started


def variant_params(base: dict, name: str, seed: int) -> dict:
    params = json.loads(json.dumps(base))  # a deep copy
    params["seed"] = seed
    if name == "oracle":  # the same samples with their true labels (no flip is drawn at eta 0)
        params["benchmark"]["eta"] = 0.0
    else:
        VARIANTS[name](params)
    return params


def rounds_recipe(params: dict, member: str) -> bool:
    """Whether ``member``'s full step trains the rounds' own recipe on the last round's data."""
    rounds = len(params["cleaning"]["rounds"])
    plan = member_plan(params, member)
    plain = member_plan({**params, "members": {"plain": {"round": rounds}}}, "plain")
    return plan.round == rounds and (plan.model, plan.augment, plan.steps["full"], plan.seed) == (
        plain.model, plain.augment, plain.steps["full"], plain.seed)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS),
                        choices=list(VARIANTS))  # fmt: skip
    parser.add_argument("--seed", type=int, default=0, help="benchmark draw and training seed")
    parser.add_argument(
        "--member",
        default="resnet18_r3",
        help="the member whose full step trains on the last round's data",
    )
    parser.add_argument("--work", default="outputs/cleaning_rounds")
    parser.add_argument("--name", default="cleaning_rounds", help="results/<name>.json")
    args = parser.parse_args()

    work = Path(args.work).resolve()
    (work / "results").mkdir(parents=True, exist_ok=True)
    env = {
        **os.environ,
        "DVC_NO_ANALYTICS": "1",
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(work / "default" / "src"),  # the clone's code, not this checkout's
        "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
        "GIT_AUTHOR_NAME": "benchmark",
        "GIT_AUTHOR_EMAIL": "benchmark@localhost",
        "GIT_COMMITTER_NAME": "benchmark",
        "GIT_COMMITTER_EMAIL": "benchmark@localhost",
    }
    default_repo = scratch_workspace(work, "default", env)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=default_repo, capture_output=True,
                            text=True, check=True).stdout.strip()  # fmt: skip
    base = yaml.safe_load(
        subprocess.run(
            ["git", "show", "HEAD:params.yaml"],
            cwd=default_repo,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    rounds = len(base["cleaning"]["rounds"])

    figures: dict[str, dict] = {}
    for name in dict.fromkeys(["default", *args.variants, "oracle"]):  # the default first
        cached = work / "results" / f"{name}_seed{args.seed}.json"
        if cached.is_file():
            figures[name] = json.loads(cached.read_text())
            continue
        params = variant_params(base, name, args.seed)
        repo = scratch_workspace(work, name, env)
        if name == "oracle":  # round 1's model is CE-oracle
            seconds = run_experiment(name, repo, params, ["evaluate@0"], env)
            found = {"rounds": [{"round": 1, "model": json.loads(
                (repo / "metrics/round_1.json").read_text())}]}  # fmt: skip
        else:
            targets = ["evaluate", f"member_full@{args.member}"]
            seconds = run_experiment(name, repo, params, targets, env)
            found = read_variant(repo, rounds, args.member)
        found.update(
            seconds=round(seconds),
            changes=changes(variant_params(base, "default", args.seed), params),
        )
        if name == "default":  # the plain recipe on the very same noisy data
            manifest = read_manifest(repo / "data/prepared/manifest.parquet")
            report, _ = plain_recipe(manifest, base["train"]["epochs"], args.seed)
            found["plain_noisy"] = {"test": {k: round(v, 3) for k, v in report.items()}}
        cached.write_text(json.dumps(found))
        figures[name] = found

    default = figures["default"]
    val = read_manifest(default_repo / "data/prepared/manifest.parquet").split("val")
    target = val["label"].to_numpy()
    num_classes = int(target.max()) + 1
    rows, verdicts = [], {}
    for name in args.variants:
        f = figures[name]
        final = f.get("final_model", {})
        last = f["rounds"][-1].get("cleaning", {}).get("truth", {})
        row = {"variant": name,
               "changes": ", ".join(f"{k}={v}" for k, v in f["changes"].items()) or "-",
               "final_val_mce": final.get("val", {}).get("mean_class_error"),
               "final_test_mce": final.get("test", {}).get("mean_class_error")}  # fmt: skip
        for entry in f["rounds"]:
            r, model = entry["round"], entry["model"]
            row[f"model{r}_val"] = model.get("val", {}).get("mean_class_error")
            row[f"model{r}_test"] = model.get("test", {}).get("mean_class_error")
            row[f"round{r}_f1"] = entry.get("cleaning", {}).get("truth", {}).get("f1")
        row.update(last_precision=last.get("precision"), last_recall=last.get("recall"),
                   last_residual_noise=last.get("residual_noise"),
                   last_clean_kept=last.get("since_first_round", {}).get("clean_kept_share"),
                   minutes=round(f["seconds"] / 60, 1))  # fmt: skip
        if name != "default" and "final_val_pred" in f:
            comparison = compare_on_val(f["final_val_pred"], default["final_val_pred"], target,
                                        num_classes, base["tuning"]["keep_z"])  # fmt: skip
            verdicts[name] = {"difference": round(comparison.difference, 3),
                              "standard_error": round(comparison.standard_error, 3),
                              "wins": comparison.candidate_wins}  # fmt: skip
            row["val_vs_default"] = comparison.describe()
        rows.append(row)
    print_table([{k: r.get(k, "") for k in rows[0]} for r in rows])
    winners = [n for n, v in verdicts.items() if v["wins"]]
    chosen = min(winners, key=lambda n: verdicts[n]["difference"]) if winners else "default"
    final_default = default["final_model"]
    summary = {
        "chosen_on_val": chosen,
        "verdicts": verdicts,
        "plain_noisy_test": default["plain_noisy"]["test"]["mean_class_error"],
        "ce_noisy": default["rounds"][0]["model"],
        "ce_oracle": figures["oracle"]["rounds"][0]["model"],
        "final_default": final_default,
        "final_model_is_the_rounds_recipe": rounds_recipe(
            variant_params(base, "default", args.seed), args.member
        ),
        "commit": commit,
    }
    print(json.dumps({k: summary[k] for k in ("chosen_on_val", "verdicts")}, indent=1))
    for name in figures:
        figures[name].pop("final_val_pred", None)
    write_result(args.name, rows, seed=args.seed, summary=summary, variants=figures)


if __name__ == "__main__":
    main()
