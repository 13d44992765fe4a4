import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import torch
from accelerate import Accelerator

from noisytail.config.model import ModelConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import ManifestError
from noisytail.data.transforms import eval_transform
from noisytail.models.network import build_network
from noisytail.prediction import (
    predict_top_k,
    read_embeddings,
    read_predictions,
    top_k_arrays,
    write_predictions,
)


def test_top_k_storage_round_trip(toy_manifest, tmp_path):
    torch.manual_seed(0)
    model = build_network(ModelConfig("test_resnet", embedding_dim=8, in_chans=3), 3).eval()
    dataset = ImageDataset.from_manifest(toy_manifest, "train", eval_transform(32))
    table = predict_top_k(model, dataset, Accelerator(cpu=True), top_k=2, batch_size=7, workers=0,
                          with_embedding=True)  # fmt: skip
    path = write_predictions(table, tmp_path / "p.parquet")
    back = read_predictions(path)
    index, prob = top_k_arrays(back)
    assert index.shape == prob.shape == (len(dataset), 2)
    with torch.no_grad():
        features = torch.cat([model.features(dataset[i][0][None]) for i in range(len(dataset))])
        full = model.head(features).softmax(1)
    expected_p, expected_i = full.topk(2, dim=1)
    np.testing.assert_array_equal(index, expected_i.numpy())
    np.testing.assert_allclose(prob, expected_p.numpy(), atol=1e-6)
    # held in Arrow, not a numpy object per row, before and after parquet; a filtered frame
    # reads its own rows (Arrow slices share the flat buffer)
    for frame in (table, back):
        assert all(isinstance(frame[c].array, pd.arrays.ArrowExtensionArray)
                   for c in ("topk_index", "topk_prob"))  # fmt: skip
    picked = back[back["label"] == back["label"].iloc[-1]].iloc[1:]
    np.testing.assert_array_equal(top_k_arrays(picked)[0], index[picked.index])
    as_objects = back.assign(topk_index=list(index))  # a frame built by hand: stacked per row
    np.testing.assert_array_equal(top_k_arrays(as_objects)[0], index)
    labels = dataset.labels.numpy()
    np.testing.assert_allclose(back["label_prob"], full[np.arange(len(labels)), labels], atol=1e-6)
    assert back["sample_id"].tolist() == dataset.sample_ids
    stored = np.stack(back["embedding"])  # batches of 7 placed at their rows, kept as float16
    assert stored.dtype == np.float16 and stored.shape == (len(dataset), 8)
    np.testing.assert_allclose(stored, features.numpy(), rtol=2e-3, atol=2e-3)
    assert list(back.columns) == list(table.columns)  # in their stored order
    # any column reads back with plain pandas too (the balanced subset reads label_prob so)
    assert pd.read_parquet(path, columns=["label_prob"])["label_prob"].tolist() == back[
        "label_prob"].tolist()  # fmt: skip
    # a column in several Arrow chunks (parquet read in batches, frames concatenated)
    twice = pd.concat([back, back], ignore_index=True)
    assert len(pa.array(twice["topk_index"].array).chunks) == 2
    np.testing.assert_array_equal(top_k_arrays(twice)[0], np.concatenate([index, index]))
    assert top_k_arrays(back.iloc[:0])[0].shape == (0, 2)  # none: still k wide


def test_embeddings_read_as_one_float16_array_in_batches(tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(11, 6)).astype(np.float32)
    table = pd.DataFrame({"sample_id": [f"s{i}" for i in range(11)], "label": np.arange(11) % 3,
                          "topk_index": list(np.zeros((11, 2), np.int32)),
                          "topk_prob": list(np.ones((11, 2), np.float32)),
                          "label_prob": np.ones(11, np.float32),
                          "embedding": list(vectors)})  # fmt: skip
    path = write_predictions(table, tmp_path / "p.parquet")
    embeddings = read_embeddings(path, batch_rows=4)  # 3 batches, the last one short
    assert embeddings.dtype == np.float16 and embeddings.shape == (11, 6)
    np.testing.assert_allclose(embeddings, vectors, rtol=1e-3, atol=1e-3)
    assert "embedding" not in read_predictions(path, embedding=False)
    write_predictions(table.drop(columns="embedding"), tmp_path / "bare.parquet")
    with pytest.raises(ManifestError, match="bare.parquet has no embedding column"):
        read_embeddings(tmp_path / "bare.parquet")
