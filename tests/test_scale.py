"""Twenty thousand classes through the whole quick-profile `dvc repro`: every stage runs, and
what it writes for people (metrics, plots, the printed table) stays of bounded size."""

import json
import sys

import pandas as pd
import pytest
import yaml
from PIL import Image
from test_pipeline import QUICK, make_project, run

CLASSES, IMAGES = 20_000, 30_000


@pytest.mark.slow  # about 20 minutes on 2 cores: `make test-slow`
def test_twenty_thousand_classes_through_every_stage(tmp_path):
    member = {"resnet_r2": {**QUICK["members"]["resnet_r2"], "train": {"epochs": 1}}}
    root, env = make_project(tmp_path / "scale", source="sku_lt_n", members=member)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["benchmark"] = {"sku_lt_n": {"classes": CLASSES, "images": IMAGES, "head": 400,
                                        "image_size": 16, "val_per_class": 1,
                                        "test_per_class": 1}}  # fmt: skip
    params["model"] = {**params["model"], "in_chans": 3, "image_size": 16}
    params["train"] = {**params["train"], "epochs": 1, "batch_size": 64, "image_size": 16}
    params["hires"] = {**params["hires"], "image_size": 16}
    params["cleaning"]["neighbour_index"] = "faiss"
    params["tuning"] = {**params["tuning"], "top": 10}
    params["test_time"] = {**params["test_time"], "top_k": 20, "scales": [1.0]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = [sys.executable, "-m", "dvc"]
    result = run([*dvc, "repro"], root, env)
    assert len(result.stdout.splitlines()) < 2000  # no line per class

    prepared = pd.read_parquet(root / "data/prepared/manifest.parquet")
    assert prepared.loc[prepared["split"] == "train", "true_label"].nunique() == CLASSES
    shown = run([*dvc, "metrics", "show"], root, env).stdout
    assert len(shown.splitlines()) < 80 and max(map(len, shown.splitlines())) < 400
    for metric in ("data/prepared/summary.json", "data/clean/round_2/report.json",
                   "metrics/ensemble.json", "metrics/members.json"):  # fmt: skip
        assert len((root / metric).read_text()) < 3000, metric
    for plot in ("data/prepared/class_distribution.png", "metrics/ensemble_per_class.png",
                 "data/clean/round_2/gallery/overview.png", "metrics/members.png"):  # fmt: skip
        width, height = Image.open(root / plot).size
        assert width < 2000 and height < 2000, plot
    gallery = list((root / "data/clean/round_2/gallery").glob("*.png"))
    assert len(gallery) <= QUICK["gallery"]["max_classes"] + 1
    assert len(pd.read_csv(root / "data/prepared/class_counts.csv")) == CLASSES
    ensemble = json.loads((root / "metrics/ensemble.json").read_text())
    assert ensemble["test"]["mean_class_error"] < 100
    assert json.loads((root / "metrics/registered.json").read_text())["version"]
