"""Training throughput of the engine against a bare PyTorch loop: same model, data, sampler,
batch and threads, alternated in one run (the ratio must be >= 0.95); and the seconds per epoch
of the default benchmark model on FMNIST-LT-N (training plus validation).

    python benchmarks/training_throughput.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F
from common import print_table, write_result
from torch.utils.data import DataLoader

from noisytail.config import from_mapping, load_params
from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.data.samplers import build_sampler
from noisytail.data.transforms import eval_transform, train_transform
from noisytail.models.network import build_network
from noisytail.training.engine import build_optimizer, fit, seed_everything
from noisytail.training.recipes import resolved_normalisation


def bare_epoch(model, dataset, config: TrainConfig) -> float:
    """The textbook loop, no Accelerate: images per second of one epoch."""
    sampler = build_sampler(config.sampler, dataset.labels.numpy())
    loader = DataLoader(dataset, config.batch_size, sampler=sampler, drop_last=True,
                        num_workers=config.workers)  # fmt: skip
    optimizer = build_optimizer(list(model.parameters()), config)
    for group in optimizer.param_groups:
        group["lr"] = config.base_lr * config.batch_size / 256
    model.train()
    seen, started = 0, time.perf_counter()
    for images, labels, _ in loader:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(images)
    return seen / (time.perf_counter() - started)


def engine_epoch(model, dataset, config: TrainConfig, classes) -> float:
    with tempfile.TemporaryDirectory() as out:
        result = fit(model, dataset, None, config, out, classes=classes)
    steps = len(dataset) // config.batch_size
    return steps * config.batch_size / result["history"][0]["epoch_seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--manifest", default="data/prepared/manifest.parquet")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    params = load_params()
    manifest = read_manifest(args.manifest)
    model_config = from_mapping(ModelConfig, params["model"], "model")
    config = from_mapping(TrainConfig, params["train"], "train")
    config = TrainConfig(**{**config.__dict__, "epochs": 1, "warmup_epochs": 0})
    augment = AugmentConfig.from_params(params.get("augment"))
    # the mean / std the full recipe trains on (model.normalization)
    augment = resolved_normalisation(augment, model_config, RecipeConfig())
    channels = model_config.in_chans
    dataset = ImageDataset.from_manifest(
        manifest, "train", train_transform(config.image_size, augment, channels), channels=channels
    )

    rows, bare, engine = [], [], []
    for repeat in range(args.repeats):  # alternate, so drift on a noisy machine hits both
        seed_everything(repeat)
        bare.append(bare_epoch(build_network(model_config, manifest.num_classes), dataset, config))
        seed_everything(repeat)
        model = build_network(model_config, manifest.num_classes)
        engine.append(engine_epoch(model, dataset, config, manifest.classes))
        rows.append({"repeat": repeat, "bare_img_s": round(bare[-1]),
                     "engine_img_s": round(engine[-1]),
                     "ratio": round(engine[-1] / bare[-1], 3)})  # fmt: skip
        print_table(rows[-1:])
    ratio = statistics.median(engine) / statistics.median(bare)

    # Seconds per epoch of the default benchmark model, validation included.
    val = ImageDataset.from_manifest(
        manifest, "val", eval_transform(config.image_size, channels, augment), channels=channels
    )
    with tempfile.TemporaryDirectory() as out:
        seed_everything(0)
        model = build_network(model_config, manifest.num_classes)
        started = time.perf_counter()
        fit(model, dataset, val, config, out, classes=manifest.classes)
        epoch_seconds = time.perf_counter() - started

    print()
    print_table(rows)
    print(f"median ratio engine / bare: {ratio:.3f} (goal >= 0.95)")
    print(f"{model_config.backbone} on FMNIST-LT-N ({len(dataset)} images, "
          f"{config.image_size} px, batch {config.batch_size}): "
          f"{epoch_seconds:.1f} s per epoch incl. validation")  # fmt: skip
    write_result(
        "training_throughput", rows, median_ratio=round(ratio, 3), goal=">= 0.95",
        backbone=model_config.backbone, image_size=config.image_size,
        batch_size=config.batch_size, workers=config.workers, torch_threads=torch.get_num_threads(),
        seconds_per_epoch_with_validation=round(epoch_seconds, 1),
    )  # fmt: skip


if __name__ == "__main__":
    main()
