"""Cleaning galleries: the right tiles, in the right order, with the right captions."""

import numpy as np
import pandas as pd
import pytest
from conftest import save_image
from PIL import Image

from noisytail.cleaning.gallery import (
    DECISION_COLUMNS,
    class_tiles,
    file_name,
    gallery_classes,
    tile_caption,
    with_truth,
    write_gallery,
)
from noisytail.cli import main
from noisytail.data.manifest import Manifest, write_manifest

CLASSES = ("T-shirt/top", "Bag")
# sample, given label, prediction, its confidence, the given label's score, action, true label
ROUND = [
    ("d1", 0, 1, 0.9, 0.05, "drop", 1),  # dropped, truly mislabelled: right
    ("d2", 0, 1, 0.7, 0.20, "drop", 0),  # dropped, but clean: wrong
    ("d3", 0, 1, 0.6, 0.10, "drop", 1),
    ("k1", 0, 0, 0.8, 0.80, "keep", 0),
    ("k2", 0, 1, 0.5, 0.30, "keep", 1),  # kept, but mislabelled: wrong
    ("k3", 0, 0, 0.6, 0.60, "keep", 0),
    ("r1", 0, 1, 0.99, 0.01, "relabel", 1),  # relabelled to the truth: right
    ("r2", 0, 1, 0.95, 0.02, "relabel", 0),  # relabelled away from the truth: wrong
    ("b1", 1, 1, 0.9, 0.90, "keep", 1),
]


@pytest.fixture
def round_(tmp_path):
    rows = []
    for sample, label, *_, truth in ROUND:
        save_image(tmp_path / "img" / f"{sample}.png", size=(12, 12), mode="L")
        rows.append({"sample_id": sample, "path": f"{sample}.png", "label": label,
                     "split": "train", "true_label": truth})  # fmt: skip
    manifest = Manifest(pd.DataFrame(rows), CLASSES, (tmp_path / "img").resolve())
    decisions = pd.DataFrame(
        [(s, label, pred, conf, score, action) for s, label, pred, conf, score, action, _ in ROUND],
        columns=["sample_id", "label", "pred", "confidence", "label_score", "action"],
    )
    decisions["new_label"] = np.where(decisions["action"] == "relabel", decisions["pred"],
                                      decisions["label"])  # fmt: skip
    return manifest, decisions


def test_tiles_in_section_order_with_right_and_wrong_marked(round_):
    manifest, decisions = round_
    tiles = class_tiles(with_truth(decisions, manifest), 0, per_section=2)
    assert tiles["sample_id"].tolist() == ["d1", "d3", "k2", "k3", "r1", "r2"]
    assert (
        tiles["section"].tolist()
        == ["dropped"] * 2 + ["kept, nearest the threshold"] * 2 + ["relabelled"] * 2
    )
    assert tiles["correct"].tolist() == [True, True, False, True, True, False]
    everything = class_tiles(with_truth(decisions, manifest), 0, per_section=24)
    assert everything["sample_id"].tolist() == ["d1", "d3", "d2", "k2", "k3", "k1", "r1", "r2"]


def test_captions_name_given_and_predicted_class_score_and_verdict(round_):
    manifest, decisions = round_
    tiles = list(class_tiles(with_truth(decisions, manifest), 0, 24).itertuples())
    assert tile_caption(tiles[0], CLASSES) == "T-shirt/top -> Bag\nscore 0.05 right"
    assert tile_caption(tiles[2], CLASSES) == "T-shirt/top -> Bag\nscore 0.20 WRONG"
    no_truth = list(class_tiles(decisions, 0, 24).itertuples())
    assert tile_caption(no_truth[0], CLASSES) == "T-shirt/top -> Bag\nscore 0.05"


def test_gallery_files_are_valid_pngs(round_, tmp_path):
    manifest, decisions = round_
    written = write_gallery(decisions, manifest, tmp_path / "gallery", "1", per_section=3)
    assert [p.name for p in written] == ["overview.png", "T-shirt_top.png", "Bag.png"]
    for path in written:
        with Image.open(path) as image:
            image.verify()
            assert image.format == "PNG" and image.size[0] > 300


def test_many_classes_draw_those_that_lost_the_most(capsys):
    labels = np.repeat(np.arange(120), 10)
    action = np.array(["keep"] * len(labels), dtype=object)
    lost = {7: 9, 50: 8, 99: 1}  # class: samples dropped of its 10
    for c, n in lost.items():
        action[np.flatnonzero(labels == c)[:n]] = "drop"
    decisions = pd.DataFrame({"label": labels, "action": action})
    chosen, capped = gallery_classes(decisions, 120, max_classes=3)
    assert capped and chosen == [7, 50, 99]
    assert gallery_classes(decisions, 120, max_classes=200) == (list(range(120)), False)


def test_file_names_are_safe():
    assert file_name("T-shirt/top") == "T-shirt_top"
    assert file_name("a b:c") == "a_b_c"
    assert file_name("../..") == "class"


def test_cli_draws_one_class_and_names_a_wrong_one(round_, tmp_path, capsys):
    manifest, decisions = round_
    (tmp_path / "clean" / "round_2").mkdir(parents=True)
    decisions[list(DECISION_COLUMNS)].to_parquet(tmp_path / "clean/round_2/decisions.parquet")
    manifest_file = write_manifest(manifest, tmp_path / "manifest.parquet")
    common = ["--round", "2", "--clean-dir", str(tmp_path / "clean"), "--manifest",
              str(manifest_file), "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(["gallery", "--class", "Bag", *common]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "out" / "Bag.png")
    assert main(["gallery", "--class", "Shoe", *common]) == 2
    assert "no class 'Shoe' in the manifest" in capsys.readouterr().err
    assert main(["gallery", "--class", "Bag", *common[:2], "--clean-dir", "nowhere"]) == 2
    assert "round_2/decisions.parquet does not exist" in capsys.readouterr().err
