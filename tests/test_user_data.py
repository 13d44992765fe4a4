"""A user's own data, as a new user meets it: the validation hold-out, tables, image-folder traps
and bad params through the command line (exit status 2 and one `error:` line)."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, save_image

from noisytail.config import ConfigError
from noisytail.config.data import BenchmarkConfig, DataConfig
from noisytail.config.params import check_params, load_params
from noisytail.data.prepare import prepare
from noisytail.data.sources import import_table
from noisytail.progress import progress
from noisytail.training.checkpoints import claim_run_dir, run_identity
from noisytail.training.engine import seed_everything


def long_tail_table(folder, sizes=(500, 50, 20, 5, 1)):
    rows = []
    for c, n in enumerate(sizes):
        for i in range(n):
            rows.append({"path": f"img/{c}_{i}.png", "label": f"class{c}"})
    save_image(folder / "img" / "one.png", size=(8, 8))
    for row in rows:  # one small image, linked under every name: fast to make and to check
        target = folder / row["path"]
        if not target.exists():
            os.link(folder / "img" / "one.png", target)
    pd.DataFrame(rows).to_csv(folder / "list.csv", index=False)
    return folder / "list.csv"


def test_hold_out_spares_the_tail(tmp_path, capsys):
    table = long_tail_table(tmp_path)
    data = DataConfig(source="table", path=str(table), check_workers=2)
    manifest, summary, per_class = prepare(data, BenchmarkConfig(), tmp_path / "out")
    counts = manifest.table.groupby(["label", "split"]).size().unstack(fill_value=0)
    sizes = np.array([500, 50, 20, 5, 1])
    assert (counts["train"].to_numpy() >= 0.8 * sizes - 1).all()
    # a tenth, at least one from every class of 3 or more: val reaches into the tail
    assert counts["val"].tolist() == [50, 5, 2, 1, 0]  # the 1-image class keeps its image
    assert per_class["val_held_out"].tolist() == [50, 5, 2, 1, 0]
    assert manifest.table.loc[manifest.table["split"] == "val", "held_out"].all()
    assert summary["val_held_out"] == {
        "medium": {"classes": 1, "in_val": 1, "images": 50},
        "few": {"classes": 4, "in_val": 3, "images": 8},
    }
    out = capsys.readouterr().out
    assert "few    classes: 8 images from 3 of 4 classes" in out and "cleaned val" in out


def test_integer_labels_keep_their_numeric_order(tmp_path):
    labels = list(range(12)) * 2
    pd.DataFrame({"path": [f"{i}.png" for i in range(24)], "label": labels}).to_csv(
        tmp_path / "t.csv", index=False
    )
    manifest = import_table(tmp_path / "t.csv")
    assert manifest.classes == tuple(str(i) for i in range(12))
    assert manifest.table["label"].tolist() == labels


def test_a_verified_subset_of_true_labels_is_kept_for_reports(tmp_path):
    pd.DataFrame(
        {
            "path": ["a.png", "b.png", "c.png"],
            "label": ["cat", "dog", "cat"],
            "true_label": ["cat", "", "dog"],
        }
    ).to_csv(tmp_path / "t.csv", index=False)
    manifest = import_table(tmp_path / "t.csv")
    assert manifest.table["true_label"].tolist() == [0, -1, 1]  # -1: not verified
    assert not manifest.fully_verified
    pd.DataFrame({"path": ["a.png"], "label": ["cat"], "true_label": ["cow"]}).to_csv(
        tmp_path / "bad.csv", index=False
    )
    with pytest.raises(Exception, match="unknown class in true_label, file lines \\[2\\]"):
        import_table(tmp_path / "bad.csv")


@pytest.fixture
def trap_folder(tmp_path):
    """An image folder with the usual traps."""
    root = tmp_path / "photos"
    for name in ("bags", "café au lait", "single"):
        for i in range(3 if name != "single" else 1):
            save_image(root / name / f"{i}.png", size=(10, 10), seed=i)
    for name in ("bags", "café au lait"):
        for i in range(3, 12):
            save_image(root / name / f"{i}.jpg", size=(10, 10), seed=i)
    (root / "empty").mkdir()
    (root / "bags" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "bags" / "zero.png").write_bytes(b"")
    good = (root / "bags" / "3.jpg").read_bytes()
    (root / "bags" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (root / "café au lait" / "fake.png").write_text("<html>not an image</html>")
    return root


def run_stage(script, tmp_path, params, *extra):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(yaml.safe_dump(params, allow_unicode=True))
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}"}
    env.pop("NOISYTAIL_DEBUG", None)
    return subprocess.run(
        [sys.executable, str(REPO / "pipelines" / script), "--params", str(params_file), *extra],
        capture_output=True, text=True, cwd=tmp_path, env=env,
    )  # fmt: skip


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("error: ")]


def test_bad_images_stop_prepare_with_one_line_naming_each(trap_folder, tmp_path):
    params = {**load_params(REPO / "params.yaml")}
    params["data"] = {**params["data"], "source": "image_folder", "path": str(trap_folder)}
    result = run_stage("prepare.py", tmp_path, params, "--out", str(tmp_path / "prepared"))
    assert result.returncode == 2, result.stderr
    (line,) = error_lines(result)
    assert "Traceback" not in result.stderr
    for name in ("zero.png", "truncated.jpg", "fake.png"):
        assert name in line
    assert ".DS_Store" not in line
    assert f"class folder {trap_folder / 'empty'} is empty: skipped" in result.stdout
    assert not (tmp_path / "prepared" / "manifest.parquet").exists()


def test_the_traps_skipped_leave_a_good_manifest(trap_folder, tmp_path):
    params = {**load_params(REPO / "params.yaml")}
    params["data"] = {**params["data"], "source": "image_folder", "path": str(trap_folder),
                      "on_bad_image": "skip"}  # fmt: skip
    result = run_stage("prepare.py", tmp_path, params, "--out", str(tmp_path / "prepared"))
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "prepared" / "summary.json").read_text())
    assert summary["empty_class_folders_skipped"] == 1
    assert summary["bad_images_skipped"] == 3
    per_class = pd.read_csv(tmp_path / "prepared" / "class_counts.csv").set_index("class")
    assert (per_class["given"] + per_class["val_held_out"]).to_dict() == {
        "bags": 12, "café au lait": 12, "single": 1}  # fmt: skip
    assert per_class.loc["single", "val_held_out"] == 0  # one image: kept for training


BAD_PARAMS = [
    (("train", "epoch"), 3, "train: unknown parameter(s) ['epoch']"),
    (("model", "backbone"), "resnet181", "model.backbone: 'resnet181' is neither a preset"),
    (("cleaning", "threshold"), 1.5, "cleaning.threshold must be in [0.0, 1.0], got 1.5"),
    (("cleaning", "threshold"), -0.1, "cleaning.threshold must be in [0.0, 1.0]"),
    (("cleaning", "rounds"), [], "cleaning.rounds: at least one round is needed"),
    (("train", "sampler"), "cbs2", "train.sampler must be one of ['instance_balanced'"),
    (("model", "pretrained"), "/no/such/weights.pth", "model.pretrained: /no/such/weights.pth"),
    (("augment", "horizontal_flip"), 2, "augment.horizontal_flip must be in [0.0, 1.0]"),
    (("data", "source"), "folder", "data.source must be one of ['fmnist_lt_n'"),
    (("colour",), 1, "params.yaml: unknown parameter(s) ['colour']"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD_PARAMS)
def test_bad_params_are_named_before_any_work(key, value, message):
    params = load_params(REPO / "params.yaml")
    section = params
    for part in key[:-1]:
        section = section[part]
    section[key[-1]] = value
    with pytest.raises(ConfigError) as error:
        check_params(params)
    assert message in str(error.value)


def test_a_broken_round_chain_is_named():
    params = load_params(REPO / "params.yaml")
    params["cleaning"]["rounds"][2]["input"] = "data/clean/round_9"
    with pytest.raises(ConfigError, match="round 3: input 'data/clean/round_9' is not"):
        check_params(params)


def test_bad_params_through_the_command_line(tmp_path):
    params = load_params(REPO / "params.yaml")
    params["train"]["sampler"] = "cbs2"
    result = run_stage("prepare.py", tmp_path, params, "--out", str(tmp_path / "prepared"))
    assert result.returncode == 2
    (line,) = error_lines(result)
    assert "train.sampler must be one of" in line and "'class_balanced'" in line
    assert not (tmp_path / "prepared").exists()  # nothing done


def test_a_run_under_another_process_count_starts_afresh_and_says_why(tmp_path, capsys):
    claim_run_dir(tmp_path, run_identity("abc", processes=1))
    (tmp_path / "checkpoints" / "epoch_0000").mkdir(parents=True)
    claim_run_dir(tmp_path, run_identity("abc", processes=1))
    assert (tmp_path / "checkpoints" / "epoch_0000").exists()  # same run: resumable
    claim_run_dir(tmp_path, run_identity("abc", processes=2))
    assert "processes 1 -> 2 changed since the last run; starting afresh" in capsys.readouterr().out
    assert not (tmp_path / "checkpoints").exists()
    identity = json.loads((tmp_path / "fingerprint").read_text())
    assert identity["torch"] == torch.__version__ and "timm" in identity


def test_progress_bars_only_on_a_terminal():
    assert progress(range(3)).disable  # pytest captures stderr: not a terminal


def test_deterministic_sets_the_torch_flags():
    try:
        seed_everything(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)


def test_logging_the_training_table_prints_no_mlflow_hints(toy_manifest, tmp_path, recwarn):
    from noisytail.data.manifest import manifest_digest
    from noisytail.tracking import RunTracker

    tracker = RunTracker("hints", "x", uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    rows = toy_manifest.split("train")
    tracker.log_dataset(rows, str(tmp_path / "manifest.parquet"), "toy/train",
                        manifest_digest(rows), "1")  # fmt: skip
    tracker.end()
    shown = [w for w in recwarn if issubclass(w.category, UserWarning) and "mlflow" in w.filename]
    assert [str(w.message)[:60] for w in shown] == []  # what a user would see
