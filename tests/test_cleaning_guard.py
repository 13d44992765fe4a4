"""The chance-level guard: a round whose model is no better than chance on val keeps its input."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO

from noisytail.cleaning.guard import (
    carried_val_decisions,
    chance_mean_class_error,
    check_evidence,
    evidence_runs,
    keep_round_input,
    val_error_at,
)
from noisytail.config import ConfigError
from noisytail.config.cleaning import CleaningConfig
from noisytail.data.manifest import read_manifest, write_manifest
from noisytail.prediction import matrix_column, write_predictions


def done_file(path, errors, selected=None):
    """A training run's done.json with these val errors per epoch."""
    history = [{"epoch": i + 1, "val_mean_class_error": e} for i, e in enumerate(errors)]
    path.mkdir(parents=True, exist_ok=True)
    (path / "done.json").write_text(json.dumps({
        "history": history, "final": history[-1] if history else {},
        "selected_epoch": selected or len(history)}))  # fmt: skip
    return path / "done.json"


def test_chance_error_and_the_epoch_that_predicted(tmp_path):
    assert chance_mean_class_error(10) == pytest.approx(90.0)
    assert chance_mean_class_error(50_030) == pytest.approx(100 * 50_029 / 50_030)
    # the weights are the selected epoch's, or the early snapshot's: so is the error read
    run = done_file(tmp_path / "a", [80.0, 30.0, 40.0], selected=2)
    assert val_error_at(run) == 30.0 and val_error_at(run, 1) == 80.0
    with pytest.raises(ValueError, match="has 3 epochs, not epoch 6"):
        val_error_at(run, 6)
    assert val_error_at(done_file(tmp_path / "b", [])) is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "done.json").write_text(json.dumps({"history": [{"epoch": 1}]}))
    assert val_error_at(tmp_path / "c" / "done.json") is None  # trained without val
    with pytest.raises(FileNotFoundError, match="round_9/done.json: no finished training run"):
        val_error_at(tmp_path / "round_9" / "done.json")


def test_the_guard_reads_the_models_that_predicted(tmp_path):
    model, predictions = tmp_path / "model", tmp_path / "predictions"
    assert evidence_runs(CleaningConfig(), model, predictions) == [(model / "done.json", None)]
    early = CleaningConfig(predictions="early", early_epoch=2)
    assert evidence_runs(early, model, predictions) == [(model / "done.json", 2)]
    folds = evidence_runs(CleaningConfig(predictions="out_of_fold", folds=2), model, predictions)
    assert folds == [(predictions / "folds" / f"fold_{k}" / "done.json", None) for k in (0, 1)]
    done_file(model, [66.0, 20.0])  # 3 classes: chance 66.7
    assert check_evidence(evidence_runs(CleaningConfig(), model, predictions), 3, 1.0).cleans
    # the early snapshot was at chance: the round does not clean, whatever the final model
    at_epoch_1 = CleaningConfig(predictions="early", early_epoch=1)
    assert not check_evidence(evidence_runs(at_epoch_1, model, predictions), 3, 1.0).cleans
    # the worst fold model counts
    done_file(predictions / "folds" / "fold_0", [20.0])
    done_file(predictions / "folds" / "fold_1", [66.0])
    worst = check_evidence(folds, 3, 1.0)
    assert worst.val_mean_class_error == 66.0 and not worst.cleans


def test_a_model_near_chance_does_not_clean(tmp_path):
    at_chance = check_evidence([(done_file(tmp_path / "a", [99.96]), None)], 50_030, 1.0)
    assert at_chance.gain == pytest.approx(chance_mean_class_error(50_030) - 99.96)
    assert not at_chance.cleans
    assert "keeps its input unchanged" in at_chance.explain("2")
    learnt = check_evidence([(done_file(tmp_path / "b", [92.06]), None)], 5_000, 1.0)
    assert learnt.cleans and learnt.gain == pytest.approx(99.98 - 92.06)
    assert "the round cleans" in learnt.explain("1")
    assert not check_evidence([(done_file(tmp_path / "b", [89.5]), None)], 10, 1.0).cleans
    no_val = check_evidence([(done_file(tmp_path / "c", []), None)], 10, 1.0)
    assert no_val.cleans and "cleaning as configured" in no_val.explain("1")
    # 0 switches it off, even for a model worse than chance (classes val lacks, predicted)
    off = check_evidence([(done_file(tmp_path / "d", [100.0]), None)], 50_030, 0.0)
    assert off.gain < 0 and off.cleans and "guard is off" in off.explain("1")
    with pytest.raises(ConfigError, match="cleaning.min_val_gain"):
        CleaningConfig(min_val_gain=-1)


def test_keeping_the_input_undoes_every_decision():
    """judge: all judges s0-s3; the round's input lacks s2 (an earlier round dropped it) and
    relabelled s1: the decisions reproduce exactly that input, reported against the original
    labels as any judge: all round's are."""
    decided = pd.DataFrame({
        "sample_id": ["s0", "s1", "s2", "s3"], "label": [0, 0, 1, 1],
        "pred": [1, 1, 0, 0], "confidence": 0.9, "label_score": 0.1,
        "action": ["drop", "drop", "keep", "relabel"], "new_label": [0, 0, 1, 0]})  # fmt: skip
    round_train = pd.DataFrame({"sample_id": ["s0", "s1", "s3"], "label": [0, 1, 1]})
    kept = keep_round_input(decided, round_train)
    assert kept["action"].tolist() == ["keep", "relabel", "drop", "keep"]
    assert kept["new_label"].tolist() == [0, 1, 1, 1]
    assert kept["label_score"].tolist() == decided["label_score"].tolist()  # scores stay


def test_a_guarded_round_carries_the_previous_val_decisions(tmp_path):
    val = pd.DataFrame({"sample_id": ["v0", "v1", "v2"], "label": [0, 1, 2],
                        "true_label": [0, 1, 1]})  # fmt: skip
    fresh = carried_val_decisions(tmp_path / "absent.parquet", val)
    assert not fresh["judged"].any() and (fresh["action"] == "keep").all()
    pd.DataFrame({"sample_id": ["v0", "v2"], "label": [0, 2], "judged": True,
                  "action": ["keep", "drop"]}).to_parquet(tmp_path / "before.parquet")  # fmt: skip
    carried = carried_val_decisions(tmp_path / "before.parquet", val)
    assert carried["judged"].tolist() == [True, False, True]
    assert carried["action"].tolist() == ["keep", "keep", "drop"]
    assert carried["true_label"].tolist() == [0, 1, 1]


def run_clean_stage(tmp_path, toy_manifest, val_error):
    """Round 2 of a ``judge: all`` chain, on predictions that call ten class-0 samples class 1
    (confidently) and agree elsewhere, for a round model whose val error is ``val_error``.
    Round 1 dropped two class-2 samples, relabelled one class-1 sample to class 2 and dropped
    a val sample. The stage's cleaned manifest, report and val decisions, and round 1's input."""
    original = write_manifest(toy_manifest, tmp_path / "prepared" / "manifest.parquet")
    table = toy_manifest.table.copy()
    train = toy_manifest.split("train")
    gone = train.index[train["label"] == 2][:2]
    relabelled = train.index[train["label"] == 1][0]
    table.loc[relabelled, "label"] = 2
    round_1 = toy_manifest.with_table(table.drop(index=gone))
    round_1_file = write_manifest(round_1, tmp_path / "clean" / "round_1" / "manifest.parquet")
    val = toy_manifest.split("val")
    pd.DataFrame({"sample_id": val["sample_id"], "label": val["label"], "judged": True,
                  "action": ["drop"] + ["keep"] * (len(val) - 1)}).to_parquet(
        tmp_path / "clean" / "round_1" / "val_decisions.parquet")  # fmt: skip

    def write(rows, name, wrong=None):
        label = rows["label"].to_numpy()
        pred = label.copy() if wrong is None else np.where(wrong, 1, label)
        write_predictions(pd.DataFrame({
            "sample_id": rows["sample_id"].to_numpy(), "label": label,
            "topk_index": matrix_column(np.stack([pred, (pred + 1) % 3], axis=1)),
            "topk_prob": matrix_column(np.tile([0.95, 0.05], (len(rows), 1))),
            "label_prob": np.where(pred == label, 0.95, 0.0)}),
            tmp_path / "predictions" / name)  # fmt: skip

    wrong = np.zeros(len(train), dtype=bool)
    wrong[np.flatnonzero(train["label"].to_numpy() == 0)[:10]] = True
    write(train, "train.parquet", wrong)  # the original training split: judge all
    write(val, "val.parquet")  # a held-out val: the round's model judges it too
    done_file(tmp_path / "model", [val_error])
    rounds = [
        {"round": 1, "input": "data/prepared", "output": "data/clean/round_1"},
        {"round": 2, "input": "data/clean/round_1", "output": "data/clean/round_2"},
    ]
    cleaning = {"rounds": rounds, "judge": "all", "neighbours": 0, "min_per_class": 0,
                "prior_correction": 0, "min_val_gain": 1.0}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cleaning": cleaning,
                                                          "tracking": {"uri": "off"}}))  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines/clean.py"),
         "--params", str(tmp_path / "params.yaml"), "--manifest", str(round_1_file),
         "--original", str(original), "--round", "2",
         "--predictions", str(tmp_path / "predictions" / "train.parquet"),
         "--out", str(tmp_path / "out"), "--model", str(tmp_path / "model")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    out = tmp_path / "out"
    report = json.loads((out / "report_full.json").read_text())
    val_decided = pd.read_parquet(out / "val_decisions.parquet")
    return read_manifest(out / "manifest.parquet"), report, val_decided, round_1, result.stdout


def test_the_clean_stage_cleans_with_a_model_that_learnt(tmp_path, toy_manifest):
    cleaned, report, val_decided, _, log = run_clean_stage(tmp_path, toy_manifest, 20.0)
    assert report["evidence"]["cleans"] and "the round cleans" in log
    assert report["dropped"] == 10 and report["relabelled"] == 0  # judged again from the original
    train = cleaned.split("train")
    assert (train["label"] == 0).sum() == 20 and len(train) == len(toy_manifest.split("train")) - 10
    assert report["val"]["judged"] == len(val_decided) == 12 and report["val"]["dropped"] == 0


def test_the_clean_stage_keeps_its_input_with_a_model_at_chance(tmp_path, toy_manifest):
    """3 classes: chance 66.67; a val error of 66.0 is 0.67 below, short of the 1 required."""
    cleaned, report, val_decided, round_1, log = run_clean_stage(tmp_path, toy_manifest, 66.0)
    assert not report["evidence"]["cleans"] and "keeps its input unchanged" in log
    columns = ["sample_id", "label"]
    before = round_1.split("train")[columns].sort_values("sample_id").reset_index(drop=True)
    after = cleaned.split("train")[columns].sort_values("sample_id").reset_index(drop=True)
    assert after.equals(before)  # round 1's drops and relabel, nothing of this model's
    assert report["dropped"] == 2 and report["relabelled"] == 1  # against the original labels
    # tuning reads the last round's val decisions: round 1's, carried
    assert report["val"]["judged"] == 12 and report["val"]["dropped"] == 1
    assert val_decided["action"].tolist() == ["drop"] + ["keep"] * 11
