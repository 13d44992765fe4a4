import pandas as pd
import pytest

from noisytail.data.manifest import (
    Manifest,
    ManifestError,
    manifest_digest,
    read_manifest,
    validate,
    write_manifest,
)

CLASSES = ("a", "b", "c")


def table(**overrides):
    base = {
        "sample_id": ["s0", "s1", "s2", "s3"],
        "path": ["0.png", "1.png", "2.png", "3.png"],
        "label": [0, 1, 2, 0],
        "split": ["train", "train", "train", "val"],
    }
    base.update(overrides)
    return pd.DataFrame(base)


def test_valid_table_passes_and_round_trips(tmp_path):
    manifest = Manifest(table(), CLASSES, tmp_path / "images")
    path = write_manifest(manifest, tmp_path / "m" / "manifest.parquet")
    back = read_manifest(path)
    pd.testing.assert_frame_equal(back.table, manifest.table)
    assert back.classes == CLASSES
    assert back.image_root == (tmp_path / "images").resolve()
    assert manifest_digest(back.table) == manifest_digest(manifest.table)


def test_duplicate_ids_are_named():
    with pytest.raises(ManifestError, match=r"duplicate sample_id in 2 row\(s\): s1, s1"):
        validate(table(sample_id=["s0", "s1", "s1", "s3"]), CLASSES)


def test_unknown_labels_are_named():
    with pytest.raises(ManifestError, match=r"unknown label .* 1 row\(s\): s2"):
        validate(table(label=[0, 1, 7, 0]), CLASSES)


def test_missing_column_is_named():
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['split'\]"):
        validate(table().drop(columns="split"), CLASSES)


def test_empty_required_split():
    with pytest.raises(ManifestError, match="split 'val' is empty"):
        validate(table(split=["train"] * 4), CLASSES, required_splits=("train", "val"))


def test_class_without_training_samples_is_named():
    with pytest.raises(ManifestError, match=r"zero training samples: 2 \(c\)"):
        validate(table(label=[0, 1, 0, 2]), CLASSES)


def test_every_problem_is_reported_at_once():
    bad = table(sample_id=["s0", "s0", "s2", "s3"], label=[0, 9, 1, 0], split=["train"] * 3 + ["x"])
    with pytest.raises(ManifestError) as error:
        validate(bad, CLASSES)
    message = str(error.value)
    assert "duplicate sample_id" in message and "unknown label" in message
    assert "split not in" in message and "s3" in message


def test_unreadable_manifest_names_the_file(tmp_path):
    path = tmp_path / "manifest.parquet"
    path.write_text("not parquet")
    with pytest.raises(ManifestError, match=str(path)):
        read_manifest(path)


def test_failed_write_keeps_previous_manifest(tmp_path):
    path = write_manifest(Manifest(table(), CLASSES, tmp_path), tmp_path / "manifest.parquet")
    before = path.read_bytes()
    with pytest.raises(ManifestError):
        write_manifest(Manifest(table(label=[0, 1, 5, 0]), CLASSES, tmp_path), path)
    assert path.read_bytes() == before
