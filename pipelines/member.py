"""DVC stage `member_<step>`: one step of one ensemble member, then its val and test metrics.

    python pipelines/member.py --member r18_round3 --step full|hires|balance

The member's spec (`members.<name>` in params.yaml, resolved by noisytail.members) names its
round's cleaned data, its model and its settings; each step starts from the previous step's
model (balance: from hires', or from full's where hires made val worse) and resumes from its
last epoch checkpoint when re-run. MLflow: a run per member (opened
by the full step) with a nested run per step; the balance step registers the member's final
model as a version of `noisytail-<member>`.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict

from noisytail.config.members import STEPS, member_plan
from noisytail.config.params import load_checked_params
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.models.network import load_network
from noisytail.prediction import evaluate_splits, model_view
from noisytail.tracking import RunTracker, git_commit
from noisytail.training.engine import make_accelerator
from noisytail.training.recipes import claim_recipe_dir, recipe_fingerprint, run_tracked_recipe
from noisytail.training.step_gate import balance_start

PREPARED = "data/prepared/manifest.parquet"  # val and test: every member scored on the same rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--member", required=True, help="a key of `members:` in params.yaml")
    parser.add_argument("--step", required=True, choices=STEPS)
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    plan = member_plan(params, args.member)
    step, start, chosen_by = args.step, None, {}
    if step == "balance":  # on val: a step that made val worse is not built on
        start, chosen_by = balance_start(plan)
        print(f"{plan.name}/balance starts from {start} (val MCE full {chosen_by['full']:.2f}, "
              f"hires {chosen_by['hires']:.2f})")  # fmt: skip
    config = plan.step_config(step, start)
    recipe = plan.recipe(step, start=start)
    manifest = read_manifest(plan.manifest_path, required_splits=("train", "val"))
    out = plan.step_dir(step)

    accelerator = make_accelerator(config)
    fingerprint = recipe_fingerprint(recipe, plan.model, config, plan.augment, manifest, plan.seed)
    claim_recipe_dir(out, fingerprint, accelerator)  # before the trackers read their run ids
    tracking, main_process = params.get("tracking") or {}, accelerator.is_main_process
    experiment, uri = tracking.get("experiment", "noisytail"), tracking.get("uri", "")
    # The member's run: opened by the full step, continued (never re-recorded) by the others.
    member_run = RunTracker(
        experiment, f"member/{plan.name}", uri=uri, enabled=main_process,
        tags={"member": plan.name, "dvc_round": str(plan.round), "kind": "member"},
        resume_file=plan.step_dir("full") / "member_run_id", record=step == "full",
    )  # fmt: skip
    member_run.log_params({"member": plan.name, "round": plan.round, "seed": plan.seed,
                           "balance": plan.balance, "model": asdict(plan.model)})  # fmt: skip
    step_run = RunTracker(
        experiment, f"member/{plan.name}/{step}", uri=uri, enabled=main_process,
        tags={"member": plan.name, "step": step, "recipe": recipe.name},
        resume_file=out / "mlflow_run_id", nested=True,
    )  # fmt: skip
    dataset = (str(plan.manifest_path), f"round_{plan.round}/train", str(plan.round))
    run_tracked_recipe(
        recipe, plan.model, config, plan.augment, manifest, out, seed=plan.seed,
        tracker=step_run, accelerator=accelerator, fingerprint=fingerprint,
        dataset=dataset if step == "full" else None,
    )  # fmt: skip

    # Val and test at the step's own image size and crop (saved with the model).
    model, _ = load_network(out / "model.safetensors")
    prepared = read_manifest(PREPARED)
    size, view = model_view(model)
    metrics = evaluate_splits(model, prepared, size, accelerator, workers=config.workers,
                              augment=view)  # fmt: skip
    if main_process:
        path = plan.metrics_path(step)
        path.parent.mkdir(parents=True, exist_ok=True)
        started = {"start": start, "start_chosen_by_val": chosen_by} if start else {}
        record = {"member": plan.name, "step": step, "recipe": recipe.name, "image_size": size}
        path.write_text(json.dumps({**record, **started, **metrics}, indent=1))
        nan = float("nan")  # no few-shot classes: no few-shot accuracy
        print(f"{plan.name}/{step}: " + ", ".join(
            f"{split} MCE {m['mean_class_error']:.2f} (few {m.get('few_accuracy', nan):.1f})"
            for split, m in metrics.items()))  # fmt: skip
    flat = {f"{split}_{k}": v for split, m in metrics.items() for k, v in m.items()}
    step_run.log_metrics(flat)
    member_run.log_metrics({f"{step}.{k}": v for k, v in flat.items()})
    if step == STEPS[-1]:  # the member's final model: its figures under one name for every
        member_run.log_metrics(flat)  # member, so the UI charts the members side by side
        version = step_run.register(
            f"noisytail-{plan.name}", "model",
            {"dvc_round": str(plan.round), "git_commit": git_commit() or "",
             "params_digest": plan.digest(start=start, config=asdict(config)),
             "member": plan.name, "start": start or ""},
        )  # fmt: skip
        if version is not None:  # the version this run trained: what the ensemble ships
            registered = {"name": f"noisytail-{plan.name}", "version": version}
            (out / "registered.json").write_text(json.dumps(registered))
    step_run.end()
    member_run.end()


if __name__ == "__main__":
    report_expected_errors(main)
