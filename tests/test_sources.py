import gzip

import numpy as np
import pandas as pd
import pytest
from conftest import needs_fashion_mnist, save_image

from noisytail.data.benchmark import long_tail_counts, make_long_tail_noisy
from noisytail.data.manifest import ManifestError, manifest_digest
from noisytail.data.sources import (
    import_fmnist_lt_n,
    import_image_folder,
    import_table,
    read_idx,
)


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_truncation(tmp_path):
    images = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    write_idx(tmp_path / "x.gz", images)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), images)
    with gzip.open(tmp_path / "short.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + (10).to_bytes(4, "big") + b"\x01\x02")
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")


def test_image_folder_importer(image_folder):
    manifest = import_image_folder(image_folder)
    assert manifest.classes == ("bag", "coat", "shoe")
    assert manifest.class_counts().tolist() == [4, 5, 6]
    assert (manifest.table["split"] == "train").all()
    assert all(manifest.resolve(p).is_file() for p in manifest.table["path"])


def test_table_importer_resolves_relative_paths(image_folder, tmp_path):
    rows = [("bag/0.png", "bag"), ("coat/1.jpg", "coat"), ("shoe/2.png", "shoe")]
    csv = tmp_path / "list.csv"
    pd.DataFrame(rows, columns=["path", "label"]).to_csv(csv, index=False)
    manifest = import_table(csv, root=image_folder)
    assert manifest.classes == ("bag", "coat", "shoe")
    assert manifest.table["label"].tolist() == [0, 1, 2]
    assert all(manifest.resolve(p).is_file() for p in manifest.table["path"])
    parquet = tmp_path / "list.parquet"
    pd.DataFrame(rows, columns=["path", "label"]).to_parquet(parquet)
    assert import_table(parquet, root=image_folder).table.equals(manifest.table)


def test_table_importer_names_unknown_class_rows(tmp_path):
    csv = tmp_path / "list.csv"
    pd.DataFrame({"path": ["a.png", "b.png", "c.png"], "label": ["x", "y", "z"]}).to_csv(csv)
    with pytest.raises(
        ManifestError, match=r"unknown class in 1 row\(s\) \(file lines \[4\]\).*'z'"
    ):
        import_table(csv, classes=["x", "y"])


def test_table_importer_missing_column(tmp_path):
    csv = tmp_path / "list.csv"
    csv.write_text("file,label\na.png,x\n")
    with pytest.raises(ManifestError, match=r"missing column\(s\) \['path'\]"):
        import_table(csv)


def test_long_tail_counts_formula():
    assert long_tail_counts(10, 5000, 100).tolist() == [
        5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50
    ]  # fmt: skip


def synthetic_labels(per_class=6000, classes=10):
    return np.tile(np.arange(classes), per_class)


def test_same_seed_same_split_other_seed_differs():
    labels = synthetic_labels()
    a, b = make_long_tail_noisy(labels, seed=3), make_long_tail_noisy(labels, seed=3)
    c = make_long_tail_noisy(labels, seed=4)
    np.testing.assert_array_equal(a.noisy_label, b.noisy_label)
    np.testing.assert_array_equal(a.train_index, b.train_index)
    assert not np.array_equal(a.train_index, c.train_index)


@pytest.mark.parametrize("eta", [0.2, 0.4])
@pytest.mark.parametrize("noise_type", ["imb", "sym"])
def test_noise_rate_close_to_eta(eta, noise_type):
    split = make_long_tail_noisy(synthetic_labels(), eta=eta, noise_type=noise_type)
    assert len(split.train_index) == 12406
    assert abs(split.noise_mask.mean() - eta) < 0.015
    assert not np.any(split.noisy_label[split.noise_mask] == split.true_label[split.noise_mask])


@needs_fashion_mnist
def test_fmnist_lt_n_matches_the_benchmark_definition(tmp_path):
    manifest = import_fmnist_lt_n(tmp_path / "images")
    train = manifest.split("train")
    assert len(train) == 12406
    assert (manifest.table["split"] == "val").sum() == 1000
    assert (manifest.table["split"] == "test").sum() == 10000
    noisy = (train["label"] != train["true_label"]).to_numpy()
    assert noisy.sum() == 4842
    assert manifest.class_counts().tolist() == [165, 63, 1935, 724, 4424, 426, 3116, 1194, 89, 270]
    assert manifest.class_counts(column="true_label").tolist() == [
        139, 50, 1796, 645, 5000, 387, 2997, 1077, 83, 232
    ]  # fmt: skip
    assert all(
        manifest.resolve(p).is_file() for p in manifest.table["path"].sample(50, random_state=0)
    )
    again = import_fmnist_lt_n(tmp_path / "images")  # the second run reuses the PNGs
    assert manifest_digest(again.table) == manifest_digest(manifest.table)
    other = import_fmnist_lt_n(tmp_path / "images", seed=1)
    assert manifest_digest(other.table) != manifest_digest(manifest.table)


@needs_fashion_mnist
def test_fmnist_lt_n_test_subset_is_the_first_k_of_each_class(tmp_path):
    full = import_fmnist_lt_n(tmp_path / "full")
    small = import_fmnist_lt_n(tmp_path / "small", test_per_class=30)
    for name in ("train", "val"):  # the draw is the same; only test shrinks
        assert small.split(name)["sample_id"].tolist() == full.split(name)["sample_id"].tolist()
    test, official = small.split("test"), full.split("test")
    assert test["label"].value_counts().to_dict() == {c: 30 for c in range(10)}
    expected = official.groupby("label", sort=False).head(30)["sample_id"]
    assert test["sample_id"].tolist() == expected.tolist()
    assert all(small.resolve(p).is_file() for p in test["path"])


@needs_fashion_mnist
def test_fmnist_lt_n_sym_noise_counts(tmp_path):
    manifest = import_fmnist_lt_n(tmp_path / "images", noise_type="sym")
    assert manifest.class_counts().tolist() == [
        612,
        572,
        1519,
        929,
        3360,
        781,
        2217,
        1149,
        605,
        662,
    ]


def test_missing_fashion_mnist_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="apt-get install dataset-fashion-mnist"):
        import_fmnist_lt_n(tmp_path / "out", source_dir=tmp_path)


def test_grey_and_colour_images_decode(tmp_path):
    from noisytail.data.dataset import load_image

    grey = save_image(tmp_path / "g.png", size=(7, 5), mode="L")
    colour = save_image(tmp_path / "c.jpg", size=(9, 4))
    assert load_image(grey).shape == (5, 7, 3)
    assert load_image(colour).shape == (4, 9, 3)
    assert load_image(colour, channels=1).shape == (4, 9, 1)
