"""DVC stage `clean`: one cleaning round. Reads the predictions of the model trained on the
round's input manifest, for the samples it judges (``cleaning.judge``: all original training
samples, or the round's own); writes the cleaned manifest, the decisions, report.json, plots,
the per-class galleries of what it dropped, kept and relabelled, and an MLflow run. A val split
cut from the given labels is judged too (val_decisions.parquet: the cleaned val tuning uses).
A round whose model is too near chance on val keeps its input unchanged (cleaning.guard).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, replace
from pathlib import Path

import pandas as pd

from noisytail.cleaning.edits import cleaned_manifest
from noisytail.cleaning.gallery import DECISION_COLUMNS, write_gallery
from noisytail.cleaning.guard import (
    carried_val_decisions,
    check_evidence,
    evidence_runs,
    keep_round_input,
)
from noisytail.cleaning.reports import (
    clean_retention,
    decision_counts,
    detection_report,
    val_detection,
)
from noisytail.cleaning.rules import judge_predictions, judge_val, judged_samples
from noisytail.config.cleaning import round_config
from noisytail.config.params import load_checked_params
from noisytail.data.manifest import ManifestError, read_manifest, write_manifest
from noisytail.errors import report_expected_errors
from noisytail.plots import confidence_histogram
from noisytail.prediction import read_embeddings, read_predictions
from noisytail.tracking import RunTracker


def headline(report: dict) -> dict:
    """The few numbers `dvc metrics show` lists for a round (report_full.json has them all)."""
    keep = {"kept": report["kept"], "dropped": report["dropped"], "val_dropped": report["val"][
        "dropped"], "cleaned": report["evidence"]["cleans"]}  # fmt: skip
    truth = report.get("truth", {})
    keep.update({k: truth[k] for k in ("precision", "recall", "f1", "residual_noise")
                 if k in truth})  # fmt: skip
    return keep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", required=True, help="the round's input manifest")
    parser.add_argument("--predictions", required=True, help="predictions of its training split")
    parser.add_argument("--out", required=True, help="folder for the cleaned manifest and report")
    parser.add_argument("--round", default="")
    parser.add_argument("--original", required=True, help="manifest before the first round")
    parser.add_argument("--model", required=True, help="the round's model folder (done.json)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    config = round_config(params.get("cleaning"), args.round)
    original = read_manifest(args.original)
    round_input = read_manifest(args.manifest)
    manifest = judged_samples(config, round_input, original)
    train = manifest.split("train")
    predictions = read_predictions(args.predictions, embedding=False)
    if predictions["sample_id"].tolist() != train["sample_id"].tolist():
        judged = args.original if config.judge == "all" else args.manifest
        raise ManifestError(f"{args.predictions} does not predict the training split of {judged} "
                         f"(cleaning.judge: {config.judge}); re-run the predict stage")  # fmt: skip
    # before the neighbour search: does the model that predicted know enough to clean with?
    runs = evidence_runs(config, args.model, Path(args.predictions).parent)
    val_classes = original.split("val")["label"].nunique()
    evidence = check_evidence(runs, val_classes, config.min_val_gain)
    print(evidence.explain(args.round))
    # a guarded round still scores (for the report and galleries), without the neighbour search
    scoring = config if evidence.cleans else replace(config, neighbours=0)

    embeddings = read_embeddings(args.predictions) if scoring.uses_neighbours else None
    _, decided = judge_predictions(predictions, manifest.num_classes, scoring, embeddings)
    if not evidence.cleans:
        decided = keep_round_input(decided, round_input.split("train"))
    cleaned = cleaned_manifest(manifest, decided)
    kept = cleaned.split("train")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # report.json is a DVC metric: a handful of numbers, whatever the number of classes; the
    # per-class detail goes to per_class.csv (a table)
    per_class = decision_counts(decided, manifest.classes).reset_index(names="class")
    report = {"kept": int(len(kept)), "dropped": int((decided["action"] == "drop").sum()),
              "relabelled": int((decided["action"] == "relabel").sum()),
              "evidence": evidence.report()}  # fmt: skip
    if "true_label" in train:  # benchmarks only: how good were the decisions?
        truth = detection_report(decided, train["true_label"].to_numpy(), manifest.classes)
        since = clean_retention(kept, original.split("train"), manifest.classes)
        detail = truth["per_class"].drop(columns="class")
        per_class = pd.concat([per_class, detail], axis=1).assign(
            clean_kept_since_first_round=since["per_class"]
        )
        report["truth"] = {k: round(v, 4) if isinstance(v, float) else v
                           for k, v in truth.items() if k != "per_class"}  # fmt: skip
        report["truth"]["since_first_round"] = {
            k: round(v, 4) for k, v in since.items() if k != "per_class"
        }
    val_file = Path(args.predictions).with_name("val.parquet")  # a val cut from the given labels
    val_predictions = read_predictions(val_file, embedding=False) if val_file.is_file() else None
    if evidence.cleans:
        val_decided = judge_val(original.split("val"), val_predictions, original.num_classes,
                                config, decided)  # fmt: skip
    else:  # the last round's val decisions are what tuning reads: carry the input round's
        previous = Path(args.manifest).parent / "val_decisions.parquet"
        val_decided = carried_val_decisions(previous, original.split("val"))
    report["val"] = {"judged": int(val_decided["judged"].sum()),
                     "dropped": int((val_decided["action"] != "keep").sum())}  # fmt: skip
    if "true_label" in val_decided and val_decided["judged"].any():
        report["val"]["truth"] = val_detection(val_decided)
    write_manifest(cleaned, out / "manifest.parquet")
    val_decided[["sample_id", "label", "judged", "action"]].to_parquet(
        out / "val_decisions.parquet", index=False)  # fmt: skip
    decided[list(DECISION_COLUMNS)].to_parquet(out / "decisions.parquet", index=False)
    gallery = params.get("gallery") or {}
    write_gallery(decided, manifest, out / "gallery", args.round,
                  per_section=gallery.get("per_section", 24),
                  max_classes=gallery.get("max_classes", 50))  # fmt: skip
    (out / "report_full.json").write_text(json.dumps(report, indent=1))
    (out / "report.json").write_text(json.dumps(headline(report), indent=1))  # the DVC metric
    per_class.to_csv(out / "per_class.csv", index=False)
    consistent = (decided["pred"] == decided["label"]).to_numpy()
    confidence_histogram(out / "confidence.png", decided["confidence"].to_numpy(), consistent,
                         f"Round {args.round}: top-1 confidence on the training set")  # fmt: skip

    tracking = params.get("tracking") or {}
    tracker = RunTracker(tracking.get("experiment", "noisytail"), f"round_{args.round}/clean",
                         uri=tracking.get("uri", ""), tags={"dvc_round": args.round})  # fmt: skip
    tracker.log_params({"cleaning": asdict(config), "manifest": args.manifest})
    flat = {k: v for k, v in report.get("truth", {}).items() if isinstance(v, (int, float))}
    tracker.log_metrics({"kept": report["kept"], "dropped": report["dropped"],
                         "relabelled": report["relabelled"], "cleaned": int(evidence.cleans),
                         **flat})  # fmt: skip
    tracker.log_artifact(out / "confidence.png")
    tracker.log_artifact(out / "report_full.json")
    tracker.log_artifacts(out / "gallery", "gallery")
    tracker.end()
    print(f"round {args.round}: kept {report['kept']}, dropped {report['dropped']}, "
          f"relabelled {report['relabelled']}")  # fmt: skip
    if "truth" in report:
        t = report["truth"]
        print(f"  vs truth: precision {t['precision']:.3f} recall {t['recall']:.3f} "
              f"F1 {t['f1']:.3f}, residual noise {t['residual_noise']:.3f}, "
              f"clean lost {t['clean_lost']}")  # fmt: skip


if __name__ == "__main__":
    report_expected_errors(main)
