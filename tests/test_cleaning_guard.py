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
    chance_mean_class_error,
    check_evidence,
    keep_round_input,
    selected_val_error,
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


def test_chance_error_and_the_selected_epoch(tmp_path):
    assert chance_mean_class_error(10) == pytest.approx(90.0)
    assert chance_mean_class_error(50_030) == pytest.approx(100 * 50_029 / 50_030)
    # the weights are the selected epoch's, so is the error the guard reads
    assert selected_val_error(done_file(tmp_path / "a", [80.0, 30.0, 40.0], 2)) == 30.0
    assert selected_val_error(done_file(tmp_path / "b", [])) is None
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "done.json").write_text(json.dumps({"history": [{"epoch": 1}]}))
    assert selected_val_error(tmp_path / "c" / "done.json") is None  # trained without val
    with pytest.raises(FileNotFoundError, match="round_9/done.json: no finished training run"):
        selected_val_error(tmp_path / "round_9" / "done.json")


def test_a_model_near_chance_does_not_clean(tmp_path):
    at_chance = check_evidence(done_file(tmp_path / "a", [99.96]), 50_030, 1.0)
    assert at_chance.gain == pytest.approx(chance_mean_class_error(50_030) - 99.96)
    assert not at_chance.cleans
    assert "keeps its input unchanged" in at_chance.explain("2")
    learnt = check_evidence(done_file(tmp_path / "b", [92.06]), 5_000, 1.0)
    assert learnt.cleans and learnt.gain == pytest.approx(99.98 - 92.06)
    assert "the round cleans" in learnt.explain("1")
    assert check_evidence(done_file(tmp_path / "b", [89.5]), 10, 1.0).cleans is False
    assert check_evidence(done_file(tmp_path / "c", []), 10, 1.0).cleans  # no val: as configured
    assert check_evidence(done_file(tmp_path / "a", [99.96]), 50_030, 0.0).cleans  # guard off
    with pytest.raises(ConfigError, match="cleaning.min_val_gain"):
        CleaningConfig(min_val_gain=-1)


def test_keeping_the_input_undoes_every_decision():
    """judge: all judges s0-s3; the round's input lacks s2 (an earlier round dropped it) and
    relabelled s1: the kept decisions reproduce exactly that input."""
    decided = pd.DataFrame({
        "sample_id": ["s0", "s1", "s2", "s3"], "label": [0, 0, 1, 1],
        "pred": [1, 1, 0, 0], "confidence": 0.9, "label_score": 0.1,
        "action": ["drop", "drop", "keep", "relabel"], "new_label": [0, 0, 1, 0]})  # fmt: skip
    round_train = pd.DataFrame({"sample_id": ["s0", "s1", "s3"], "label": [0, 1, 1]})
    kept = keep_round_input(decided, round_train)
    assert kept["action"].tolist() == ["keep", "keep", "drop", "keep"]
    assert kept["new_label"].tolist() == [0, 1, 1, 1]
    assert kept["label_score"].tolist() == decided["label_score"].tolist()  # scores stay


def run_clean_stage(tmp_path, toy_manifest, val_error):
    """The clean stage on predictions that call ten class-0 samples class 1, confidently, for a
    round model whose val error is ``val_error``; the cleaned manifest and report."""
    original = write_manifest(toy_manifest, tmp_path / "prepared" / "manifest.parquet")
    train = toy_manifest.split("train")
    label = train["label"].to_numpy()
    wrong = np.zeros(len(label), dtype=bool)
    wrong[np.flatnonzero(label == 0)[:10]] = True
    pred = np.where(wrong, 1, label)  # confident and wrong on ten of class 0
    top = np.stack([pred, (pred + 1) % 3], axis=1)
    prob = np.tile([0.95, 0.05], (len(train), 1))
    write_predictions(pd.DataFrame({
        "sample_id": train["sample_id"].to_numpy(), "label": label,
        "topk_index": matrix_column(top), "topk_prob": matrix_column(prob),
        "label_prob": np.where(pred == label, 0.95, 0.0)}),
        tmp_path / "predictions" / "train.parquet")  # fmt: skip
    done_file(tmp_path / "model", [val_error])
    rounds = [{"round": 1, "input": "data/prepared", "output": "data/clean/round_1"}]
    cleaning = {"rounds": rounds, "neighbours": 0, "min_per_class": 0, "prior_correction": 0,
                "min_val_gain": 1.0}  # fmt: skip
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"cleaning": cleaning,
                                                          "tracking": {"uri": "off"}}))  # fmt: skip
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines/clean.py"),
         "--params", str(tmp_path / "params.yaml"), "--manifest", str(original),
         "--original", str(original), "--round", "1",
         "--predictions", str(tmp_path / "predictions" / "train.parquet"),
         "--out", str(tmp_path / "out"), "--model", str(tmp_path / "model")],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "out" / "report_full.json").read_text())
    return read_manifest(tmp_path / "out" / "manifest.parquet"), report, result.stdout


def test_the_clean_stage_cleans_with_a_model_that_learnt(tmp_path, toy_manifest):
    cleaned, report, log = run_clean_stage(tmp_path, toy_manifest, val_error=20.0)
    assert report["evidence"]["cleans"] and report["dropped"] == 10
    assert (cleaned.split("train")["label"] == 0).sum() == 20
    assert "the round cleans" in log


def test_the_clean_stage_keeps_its_input_with_a_model_at_chance(tmp_path, toy_manifest):
    cleaned, report, log = run_clean_stage(tmp_path, toy_manifest, val_error=66.0)
    assert not report["evidence"]["cleans"] and report["dropped"] == 0
    before = toy_manifest.split("train")[["sample_id", "label"]].reset_index(drop=True)
    assert cleaned.split("train")[["sample_id", "label"]].reset_index(drop=True).equals(before)
    assert "keeps its input unchanged" in log
    decisions = pd.read_parquet(tmp_path / "out" / "decisions.parquet")
    assert (decisions["action"] == "keep").all()
