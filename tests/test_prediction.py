import numpy as np
import torch
from accelerate import Accelerator

from noisytail.data.dataset import ImageDataset
from noisytail.data.transforms import eval_transform
from noisytail.models.network import ModelConfig, build_network
from noisytail.prediction import predict_top_k, read_predictions, top_k_arrays, write_predictions


def test_top_k_storage_round_trip(toy_manifest, tmp_path):
    torch.manual_seed(0)
    model = build_network(ModelConfig("test_resnet", embedding_dim=8), 3).eval()
    dataset = ImageDataset.from_manifest(toy_manifest, "train", eval_transform(32))
    table = predict_top_k(model, dataset, Accelerator(cpu=True), top_k=2, batch_size=7, workers=0,
                          with_embedding=True)  # fmt: skip
    path = write_predictions(table, tmp_path / "p.parquet")
    back = read_predictions(path)
    index, prob = top_k_arrays(back)
    assert index.shape == prob.shape == (len(dataset), 2)
    with torch.no_grad():
        full = torch.cat([model(dataset[i][0][None]) for i in range(len(dataset))]).softmax(1)
    expected_p, expected_i = full.topk(2, dim=1)
    np.testing.assert_array_equal(index, expected_i.numpy())
    np.testing.assert_allclose(prob, expected_p.numpy(), atol=1e-6)
    labels = dataset.labels.numpy()
    np.testing.assert_allclose(back["label_prob"], full[np.arange(len(labels)), labels], atol=1e-6)
    assert back["sample_id"].tolist() == dataset.sample_ids
    assert np.stack(back["embedding"]).shape == (len(dataset), 8)
    assert set(back.columns) == {"sample_id", "label", "topk_index", "topk_prob", "label_prob",
                                 "embedding"}  # fmt: skip
