"""Every bad-input case: a clear error listing every bad row, or (skip) dropped and reported."""

import pandas as pd
import pytest
import torch
from conftest import save_image

from noisytail.config.data import BenchmarkConfig, DataConfig
from noisytail.data.dataset import (
    BadImageError,
    ImageDataset,
    apply_bad_image_policy,
    find_bad_images,
)
from noisytail.data.manifest import ManifestError
from noisytail.data.prepare import prepare
from noisytail.data.sources import import_image_folder


@pytest.fixture
def broken_folder(image_folder):
    (image_folder / "bag" / "zero.png").write_bytes(b"")
    good = (image_folder / "coat" / "1.jpg").read_bytes()
    (image_folder / "coat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (image_folder / "shoe" / "notes.txt").write_text("not an image")
    (image_folder / "shoe" / "fake.png").write_text("<html>also not an image</html>")
    return image_folder


def test_every_bad_image_is_found(broken_folder):
    bad = find_bad_images(import_image_folder(broken_folder), workers=2)
    reasons = dict(zip(bad["path"], bad["reason"]))
    assert set(reasons) == {"bag/zero.png", "coat/truncated.jpg", "shoe/notes.txt", "shoe/fake.png"}
    assert reasons["bag/zero.png"] == "zero-byte file"
    assert reasons["coat/truncated.jpg"].startswith("not a readable image")


def test_missing_file_is_found(image_folder):
    manifest = import_image_folder(image_folder)
    (image_folder / "bag" / "0.png").unlink()
    bad = find_bad_images(manifest, workers=1)
    assert bad[["path", "reason"]].values.tolist() == [["bag/0.png", "file not found"]]


def test_error_policy_lists_every_bad_row(broken_folder, tmp_path):
    manifest = import_image_folder(broken_folder)
    bad = find_bad_images(manifest)
    with pytest.raises(ManifestError) as error:
        apply_bad_image_policy(manifest, bad, "error", tmp_path / "bad.csv")
    message = str(error.value)
    assert message.startswith("4 bad image(s)")
    for name in ("zero.png", "truncated.jpg", "notes.txt", "fake.png"):
        assert name in message
    assert len(pd.read_csv(tmp_path / "bad.csv")) == 4


def test_skip_policy_drops_and_reports(broken_folder, tmp_path):
    manifest = import_image_folder(broken_folder)
    kept = apply_bad_image_policy(manifest, find_bad_images(manifest), "skip", tmp_path / "bad.csv")
    assert len(kept.table) == len(manifest.table) - 4
    assert find_bad_images(kept).empty
    assert sorted(pd.read_csv(tmp_path / "bad.csv")["path"]) == [
        "bag/zero.png", "coat/truncated.jpg", "shoe/fake.png", "shoe/notes.txt"
    ]  # fmt: skip


def test_prepare_stops_before_training_on_bad_images(broken_folder, tmp_path):
    tiny = {"val_fraction": 0.25, "val_min_class": 2}  # classes of 4-6 images: one held out
    data = DataConfig(source="image_folder", path=str(broken_folder), **tiny)
    with pytest.raises(ManifestError, match="4 bad image"):
        prepare(data, BenchmarkConfig(), tmp_path / "out")
    manifest, summary, _ = prepare(
        DataConfig(source="image_folder", path=str(broken_folder), on_bad_image="skip", **tiny),
        BenchmarkConfig(), tmp_path / "out",
    )  # fmt: skip
    assert summary["bad_images_skipped"] == 4
    assert summary["split_sizes"]["val"] == 3  # one per class held out


def test_unknown_policy_is_an_error(image_folder, tmp_path):
    manifest = import_image_folder(image_folder)
    with pytest.raises(ValueError, match="data.on_bad_image"):
        apply_bad_image_policy(manifest, find_bad_images(manifest), "ignore", tmp_path / "b.csv")


def test_dataset_error_names_sample_and_file_inside_a_worker(tmp_path):
    save_image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG garbage")
    rows = pd.DataFrame(
        {"sample_id": ["ok", "bad"], "path": ["ok.png", "broken.png"], "label": [0, 1]}
    )
    loader = torch.utils.data.DataLoader(ImageDataset(rows, tmp_path), batch_size=1, num_workers=1)
    with pytest.raises(BadImageError, match=r"sample 'bad': .*broken.png: not a readable image"):
        list(loader)


def test_clean_stage_names_predictions_of_other_samples(toy_manifest, tmp_path):
    """Predictions of round 1's samples fed to a round that judges every original sample: the
    stage stops, names the file and the setting, and writes nothing."""
    import subprocess
    import sys

    import yaml
    from conftest import REPO

    from noisytail.data.manifest import write_manifest

    original = write_manifest(toy_manifest, tmp_path / "prepared" / "manifest.parquet")
    train = toy_manifest.split("train")
    round_input = toy_manifest.with_table(toy_manifest.table.drop(index=train.index[:3]))
    write_manifest(round_input, tmp_path / "round_1" / "manifest.parquet")
    kept = round_input.split("train")
    predictions = tmp_path / "predictions.parquet"
    pd.DataFrame({"sample_id": kept["sample_id"], "label": kept["label"]}).to_parquet(predictions)
    rounds = [{"round": 1, "input": "data/prepared", "output": "data/clean/round_1"}]
    (tmp_path / "params.yaml").write_text(
        yaml.safe_dump({"cleaning": {"judge": "all", "rounds": rounds}})
    )
    result = subprocess.run(
        [sys.executable, str(REPO / "pipelines/clean.py"),
         "--params", str(tmp_path / "params.yaml"),
         "--manifest", str(tmp_path / "round_1" / "manifest.parquet"), "--original",
         str(original), "--predictions", str(predictions), "--out", str(tmp_path / "out"),
         "--model", str(tmp_path / "models" / "round_1")],
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 2
    assert f"{predictions} does not predict the training split of {original}" in result.stderr
    assert "cleaning.judge: all" in result.stderr
    assert not (tmp_path / "out").exists()
