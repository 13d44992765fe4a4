"""Launched by test_train_stage.py as `accelerate launch --multi_gpu --num_processes 2 ...`:
train on two CPU processes (gloo), then save each rank's own copy of the weights."""

import sys
from pathlib import Path

from accelerate import Accelerator
from safetensors.torch import save_file

from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.transforms import eval_transform, train_transform
from noisytail.models.network import ModelConfig
from noisytail.training.engine import TrainConfig, fit, seed_everything
from noisytail.training.recipes import RecipeConfig, build_recipe_model

manifest_path, out = sys.argv[1], Path(sys.argv[2])
accelerator = Accelerator(cpu=True)
manifest = read_manifest(manifest_path)
config = TrainConfig(epochs=2, batch_size=8, warmup_epochs=0, workers=0, cpu=True)
seed_everything(0)
model, _ = build_recipe_model(RecipeConfig(), ModelConfig("test_resnet", embedding_dim=16), 3)
train_set = ImageDataset.from_manifest(manifest, "train", train_transform(32))
val_set = ImageDataset.from_manifest(manifest, "val", eval_transform(32))
fit(model, train_set, val_set, config, out, classes=manifest.classes, accelerator=accelerator)
weights = {k: v.contiguous() for k, v in model.state_dict().items()}
save_file(weights, str(out / f"rank{accelerator.process_index}.safetensors"))
