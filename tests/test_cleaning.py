"""The cleaning rules on hand-made predictions: exact kept / dropped / relabelled sets."""

import numpy as np
import pandas as pd
import pytest

from noisytail.cleaning.edits import apply_decisions
from noisytail.cleaning.predictions import fold_assignment, merge_out_of_fold
from noisytail.cleaning.reports import clean_retention, detection_report
from noisytail.cleaning.rules import decide, scores
from noisytail.config.cleaning import CleaningConfig
from noisytail.training.recipes import balanced_subset


def predictions(rows):
    """rows: (label, {class: prob}); top-k holds every listed class, best first."""
    table = []
    for i, (label, probs) in enumerate(rows):
        ranked = sorted(probs.items(), key=lambda kv: -kv[1])
        table.append({"sample_id": f"s{i}", "label": label,
                      "topk_index": np.array([c for c, _ in ranked]),
                      "topk_prob": np.array([p for _, p in ranked]),
                      "label_prob": probs.get(label, 0.0)})  # fmt: skip
    return pd.DataFrame(table)


# s0-s2 agree with their label; s3-s6 disagree with falling confidence in their label.
HAND_MADE = predictions([
    (0, {0: 0.9, 1: 0.1}),
    (0, {0: 0.6, 2: 0.4}),
    (1, {1: 0.8, 0: 0.2}),
    (1, {0: 0.55, 1: 0.45}),
    (1, {0: 0.7, 1: 0.3}),
    (2, {0: 0.95, 2: 0.05}),
    (2, {1: 0.6, 2: 0.4}),
])  # fmt: skip


def actions(config, table=HAND_MADE, classes=3):
    decided = decide(scores(table, classes, config.prior_correction), config)
    return {a: [int(s[1:]) for s in decided.loc[decided["action"] == a, "sample_id"]]
            for a in ("keep", "drop", "relabel")}  # fmt: skip


def test_top1_rule_drops_disagreeing_low_confidence():
    config = CleaningConfig(
        per_class=False, rule="top1", threshold=0.65, prior_correction=0, min_per_class=0
    )
    assert actions(config) == {"keep": [0, 1, 2, 4, 5], "drop": [3, 6], "relabel": []}


def test_label_probability_rule():
    config = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.35, prior_correction=0, min_per_class=0
    )
    assert actions(config) == {"keep": [0, 1, 2, 3, 6], "drop": [4, 5], "relabel": []}


def test_lowest_fraction_of_disagreeing():
    config = CleaningConfig(per_class=False, rule="lowest_fraction", fraction=0.5,
                            prior_correction=0, min_per_class=0)  # fmt: skip
    assert actions(config)["drop"] == [4, 5]  # the two lowest label probabilities of s3-s6


def test_class_floor_gives_back_the_most_confident():
    config = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.5, prior_correction=0, min_per_class=1
    )
    # threshold 0.5 would drop s3-s6, leaving class 2 with nothing: s6 (0.4 > 0.05) comes back
    assert actions(config) == {"keep": [0, 1, 2, 6], "drop": [3, 4, 5], "relabel": []}
    config = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.5, prior_correction=0, min_per_class=2
    )
    assert actions(config)["drop"] == [4]  # class 1 gets s3 back, class 2 both of its samples


def test_relabelling_confident_disagreements():
    config = CleaningConfig(per_class=False, rule="label_prob", threshold=0.5, prior_correction=0,
                            min_per_class=0, relabel_threshold=0.7)  # fmt: skip
    decided = decide(scores(HAND_MADE, 3), config)
    assert actions(config) == {"keep": [0, 1, 2], "drop": [3, 6], "relabel": [4, 5]}
    kept = apply_decisions(HAND_MADE[["sample_id", "label"]], decided)
    assert kept["sample_id"].tolist() == ["s0", "s1", "s2", "s4", "s5"]
    assert kept["label"].tolist() == [0, 0, 1, 0, 0]
    assert kept["original_label"].tolist() == [0, 0, 1, 1, 2]


def test_per_class_thresholds_are_relative_to_the_class_mean():
    # class 1 mean label prob = (0.8 + 0.45 + 0.3) / 3 = 0.517; class 2 mean = 0.225
    config = CleaningConfig(rule="label_prob", threshold=1.0, per_class=True, prior_correction=0,
                            min_per_class=0)  # fmt: skip
    assert actions(config)["drop"] == [3, 4, 5]  # s6: 0.4 / 0.225 > 1 stays


def test_prior_correction_rescues_a_tail_sample():
    head = [(0, {0: 0.9, 1: 0.1})] * 8
    tail = [(1, {1: 0.9, 0: 0.1}), (1, {0: 0.6, 1: 0.4})]  # the second looks like the head
    table = predictions(head + tail)
    plain = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.5, prior_correction=0, min_per_class=0
    )
    assert actions(plain, table, 2)["drop"] == [9]
    corrected = CleaningConfig(per_class=False, rule="label_prob", threshold=0.5,
                               prior_correction=1, min_per_class=0)  # fmt: skip
    # priors 0.8 / 0.2: 0.4 / 0.2 = 2 against 0.6 / 0.8 = 0.75 -> class 1 wins, kept
    assert actions(corrected, table, 2)["drop"] == []
    assert scores(table, 2, 1.0)["label_score"].iloc[9] == pytest.approx(2 / 2.75)


def test_unknown_rule_is_named():
    with pytest.raises(ValueError, match="cleaning.rule"):
        decide(scores(HAND_MADE, 3), CleaningConfig(per_class=False, rule="magic"))


def test_detection_report_against_the_truth():
    config = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.35, prior_correction=0, min_per_class=0
    )
    decided = decide(scores(HAND_MADE, 3), config)  # drops s4, s5
    truth = np.array([0, 0, 1, 0, 0, 0, 2])  # s3, s4, s5 are noisy
    report = detection_report(decided, truth, ("a", "b", "c"))
    assert report["precision"] == 1.0
    assert report["recall"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(0.8)
    assert report["residual_noise"] == pytest.approx(1 / 5)  # s3 kept with a wrong label
    assert report["clean_lost"] == 0 and report["clean_kept_share"] == 1.0
    assert report["per_class"].to_dict("records") == [  # b keeps s2 (clean) and s3 (truly a)
        {"class": "a", "clean_kept_share": 1.0, "residual_noise": 0.0, "clean_lost": 0},
        {"class": "b", "clean_kept_share": 1.0, "residual_noise": 0.5, "clean_lost": 0},
        {"class": "c", "clean_kept_share": 1.0, "residual_noise": 0.0, "clean_lost": 0},
    ]
    # were s5 truly c, dropping it would lose one of class c's two clean samples
    lost = detection_report(decided, np.array([0, 0, 1, 0, 0, 2, 2]), ("a", "b", "c"))
    assert lost["per_class"].iloc[2].to_dict() == {
        "class": "c",
        "clean_kept_share": 0.5,
        "residual_noise": 0.0,
        "clean_lost": 1,
    }


def test_clean_retention_counts_originally_clean_samples():
    original = pd.DataFrame({"sample_id": list("abcd"), "label": [0, 0, 1, 1],
                             "true_label": [0, 1, 1, 1]})  # fmt: skip
    kept = original.iloc[[0, 1, 2]].assign(original_label=[0, 0, 1])
    retention = clean_retention(kept, original, ("x", "y"))
    assert retention["per_class"].tolist() == [1.0, 0.5]
    assert retention["clean_kept_share"] == pytest.approx(2 / 3)


def test_balanced_subset_takes_top_k_per_class():
    rows = pd.DataFrame({"sample_id": list("abcdef"), "label": [0, 0, 0, 1, 1, 2]})
    subset = balanced_subset(rows, np.array([0.1, 0.9, 0.5, 0.2, 0.8, 0.3]), 2)
    assert subset["sample_id"].tolist() == ["b", "c", "d", "e", "f"]


def test_out_of_fold_bookkeeping():
    labels = np.repeat([0, 1, 2], [10, 5, 3])
    fold = fold_assignment(labels, 3, seed=0)
    assert set(np.bincount(fold)) <= {6}  # stratified: every fold gets a share of every class
    for c in range(3):
        assert np.ptp(np.bincount(fold[labels == c], minlength=3)) <= 1
    ids = np.array([f"s{i}" for i in range(len(labels))])
    parts = [pd.DataFrame({"sample_id": ids[fold == k], "label_prob": float(k)}) for k in range(3)]
    merged = merge_out_of_fold(parts, fold, ids)
    assert merged["sample_id"].tolist() == ids.tolist()
    np.testing.assert_array_equal(merged["label_prob"].to_numpy(), fold)
    with pytest.raises(ValueError, match="fold model 1 must predict exactly the samples of fold 1"):
        merge_out_of_fold([parts[0], parts[0], parts[2]], fold, ids)


def test_cleaned_manifest_keeps_the_other_splits(tmp_path):
    from noisytail.cleaning.edits import cleaned_manifest
    from noisytail.data.manifest import Manifest

    table = HAND_MADE[["sample_id", "label"]].assign(path="x.png", split="train")
    val = pd.DataFrame({"sample_id": ["v0"], "label": [2], "path": "v.png", "split": "val"})
    manifest = Manifest(pd.concat([table, val], ignore_index=True), ("a", "b", "c"), tmp_path)
    config = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.35, prior_correction=0, min_per_class=0
    )
    cleaned = cleaned_manifest(manifest, decide(scores(HAND_MADE, 3), config))
    assert cleaned.split("train")["sample_id"].tolist() == ["s0", "s1", "s2", "s3", "s6"]
    assert cleaned.split("val")[["sample_id", "label", "original_label"]].values.tolist() == [
        ["v0", 2, 2]
    ]


def test_judge_all_gives_a_dropped_sample_back(tmp_path):
    from noisytail.cleaning.edits import cleaned_manifest
    from noisytail.cleaning.rules import judged_samples
    from noisytail.data.manifest import Manifest

    table = HAND_MADE[["sample_id", "label"]].assign(path="x.png", split="train")
    original = Manifest(table, ("a", "b", "c"), tmp_path)
    round_input = original.with_table(table[~table["sample_id"].isin(["s3", "s5"])])
    assert judged_samples(CleaningConfig(judge="kept"), round_input, original) is round_input
    judged = judged_samples(CleaningConfig(judge="all"), round_input, original)
    assert judged is original
    # this round's model trusts s3's label again (s5 stays out)
    config = CleaningConfig(
        per_class=False, rule="label_prob", threshold=0.35, prior_correction=0, min_per_class=0
    )
    cleaned = cleaned_manifest(judged, decide(scores(HAND_MADE, 3), config))
    assert cleaned.split("train")["sample_id"].tolist() == ["s0", "s1", "s2", "s3", "s6"]
    with pytest.raises(ValueError, match="cleaning.judge"):
        judged_samples(CleaningConfig(judge="some"), round_input, original)


def test_a_round_entry_overrides_the_cleaning_settings():
    from noisytail.config import ConfigError
    from noisytail.config.cleaning import round_config

    section = {
        "threshold": 0.8,
        "neighbours": 10,
        "rounds": [
            {"round": 1, "input": "a", "output": "b"},
            {"round": 2, "input": "b", "output": "c", "threshold": 0.5, "judge": "kept"},
        ],
    }  # fmt: skip
    first, second = round_config(section, 1), round_config(section, "2")
    assert (first.threshold, first.judge, first.neighbours) == (0.8, "all", 10)
    assert (second.threshold, second.judge, second.neighbours) == (0.5, "kept", 10)
    assert round_config(section).threshold == 0.8  # no round: the common settings
    with pytest.raises(ConfigError, match="no entry for round 3"):
        round_config(section, 3)
    section["rounds"][1]["treshold"] = 0.4
    with pytest.raises(ConfigError, match=r"round 2: unknown parameter\(s\) \['treshold'\]"):
        round_config(section, 2)


def test_val_is_judged_by_the_training_statistics_without_a_floor():
    """A val class of one image and one of four: the wrong-looking ones are dropped (judged
    on its own, a one-image class scores its own mean, 1.0, and the floor of 5 kept them)."""
    from noisytail.cleaning.rules import judge_val

    config = CleaningConfig(
        rule="label_prob", threshold=0.5, per_class=True, prior_correction=0.0, min_per_class=5
    )
    training = pd.DataFrame({"label": [0, 0, 1, 1, 2, 2], "label_score": [0.9] * 6})
    val_rows = predictions([
        (0, {1: 0.9, 0: 0.1}),  # class 0's only val image, predicted 1 with 0.9: wrong
        (1, {1: 0.9, 0: 0.1}),
        (1, {1: 0.8, 2: 0.2}),
        (1, {1: 0.7, 2: 0.3}),
        (1, {2: 0.95, 1: 0.05}),  # wrong
    ])  # fmt: skip
    val = val_rows[["sample_id", "label"]]
    decided = judge_val(val, val_rows, 3, config, training)
    assert decided["judged"].all()
    assert decided.loc[decided["action"] == "drop", "sample_id"].tolist() == ["s0", "s4"]
    kept_whole = judge_val(val, None, 3, config, training)  # a val split of the data's own
    assert not kept_whole["judged"].any() and (kept_whole["action"] == "keep").all()


def test_detection_counts_only_the_verified_samples():
    """true_label -1 (not verified) is neither noisy nor clean: the report reads the rest."""
    decided = pd.DataFrame({"label": [0, 0, 1, 1], "new_label": [0, 0, 1, 1],
                            "action": ["keep", "drop", "keep", "drop"]})  # fmt: skip
    report = detection_report(decided, np.array([0, 1, -1, -1]), ("a", "b"))
    assert report["samples"] == 2 and report["noise_rate_before"] == 0.5
    assert report["precision"] == 1.0 and report["recall"] == 1.0
