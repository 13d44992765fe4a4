"""Launched by the tests as `accelerate launch --multi_gpu --num_processes 2 two_process_job.py
MODE MANIFEST OUT` on two CPU processes (gloo).

- train: train a tiny model, then save each rank's own copy of the weights;
- predict: predict the val split with OUT/model.safetensors into OUT/predictions-2proc.parquet.
"""

import sys
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file

from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.transforms import eval_transform, train_transform
from noisytail.models.network import load_network
from noisytail.prediction import predict_top_k, write_predictions
from noisytail.training.engine import fit, seed_everything
from noisytail.training.recipes import build_recipe_model

mode, manifest_path, out = sys.argv[1], sys.argv[2], Path(sys.argv[3])
accelerator = Accelerator(cpu=True)
manifest = read_manifest(manifest_path)
val_set = ImageDataset.from_manifest(manifest, "val", eval_transform(32))
if mode == "train":
    config = TrainConfig(epochs=2, batch_size=8, warmup_epochs=0, workers=0, cpu=True)
    seed_everything(0)
    model_config = ModelConfig("test_resnet", embedding_dim=16, bnneck=True, in_chans=3)
    model, _ = build_recipe_model(RecipeConfig(), model_config, 3)
    train_set = ImageDataset.from_manifest(manifest, "train", train_transform(32))
    fit(model, train_set, val_set, config, out, classes=manifest.classes, accelerator=accelerator)
    weights = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(out / f"rank{accelerator.process_index}.safetensors"))
elif mode == "predict":
    model, _ = load_network(out / "model.safetensors")
    table = predict_top_k(model, val_set, accelerator, top_k=2, batch_size=4, workers=0,
                          with_embedding=True)  # fmt: skip
    if accelerator.is_main_process:
        write_predictions(table, out / "predictions-2proc.parquet")
