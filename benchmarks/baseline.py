"""noisytail's default recipe beside a plain timm baseline, on the noisy and on the true labels.

The plain recipe is written out here in full, with nothing of noisytail's in it but the data:
``timm.create_model("resnet18", num_classes=10, in_chans=1)``; 28 px images zero-padded to 32 and
normalised with Fashion-MNIST's mean / std; random crop 32 from the 4-px zero-padded image and a
horizontal flip; SGD momentum 0.9, weight decay 5e-4 on every parameter, batch 128, lr 0.05, one
epoch of linear warm-up then cosine to 0 per step; the last epoch's weights.

With ``--params profiles/pretrained.yaml`` (any profile whose ``model.pretrained`` names a file)
the plain recipe is the same ImageNet backbone fine-tuned on the profile's view: the ImageNet
weights copied onto ``timm.create_model(backbone, num_classes=10)`` in order, the 28 px images
resized to the profile's ``train.image_size`` in three channels with the mean / std the profile's
``model.normalization`` gives (ImageNet's for ``imagenet``), random
crop from a border of an eighth and a flip, the profile's optimizer, lr and weight decay, cosine;
no embedding, no BNNeck, nothing else.

noisytail's recipe is the params file as it is (model, train, augment), through ``run_recipe``,
with the same number of epochs. Each benchmark seed draws its own FMNIST-LT-N (class order and
noisy samples); both recipes train on the very same images. Test split only reported.

    python benchmarks/baseline.py [--seeds 0 1] [--epochs 15] [--work outputs/baseline]
    python benchmarks/baseline.py --params profiles/pretrained.yaml --seeds 0 --recipes plain \
        --name baseline_pretrained
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from common import print_table, write_result

from noisytail.config import from_mapping, load_params
from noisytail.config.data import AugmentConfig, BenchmarkConfig, DataConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import Manifest, read_manifest, write_manifest
from noisytail.data.prepare import prepare
from noisytail.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from noisytail.metrics import classification_report
from noisytail.models.network import create_backbone, input_normalisation, load_network
from noisytail.prediction import evaluate_split
from noisytail.training.recipes import run_recipe

FMNIST_MEAN, FMNIST_STD = 0.2860, 0.3530


@dataclass(frozen=True)
class PlainRegime:
    """What the plain recipe trains: resnet18 from scratch on 32 px grey (the default), or a
    profile's pretrained backbone fine-tuned at its size in three channels."""

    backbone: str = "resnet18"
    weights: str = ""  # the profile's pretrained weights (model.pretrained, model.key_map)
    key_map: str = "timm"
    size: int = 32
    lr: float = 0.05  # at batch 128
    weight_decay: float = 5e-4
    warmup: bool = True  # one epoch of linear warm-up
    optimizer: str = "sgd"  # sgd (momentum 0.9) | adamw
    mean: tuple[float, ...] = ()  # the input statistics ours uses (model.normalization)
    std: tuple[float, ...] = ()

    @classmethod
    def of(cls, params: dict) -> PlainRegime:
        """The default's from-scratch recipe, or the profile's backbone, weights, size and
        optimiser (lr as the profile's at batch 128; cosine, with or without warm-up)."""
        model, train = from_mapping(ModelConfig, params["model"], "model"), params["train"]
        if model.pretrained in ("", "none"):
            return cls()
        mean, std = input_normalisation(model)
        return cls(model.resolved().backbone, model.pretrained, model.key_map,
                   int(train["image_size"]), float(train["base_lr"]) * 128 / 256,
                   float(train["weight_decay"]), bool(train.get("warmup_epochs", 0)),
                   train.get("optimizer", "sgd"), mean or IMAGENET_MEAN,
                   std or IMAGENET_STD)  # fmt: skip

    def create(self, num_classes: int) -> torch.nn.Module:
        """The timm model, with the pretrained weights (the library's loader and its checks)."""
        if not self.weights:
            return timm.create_model(self.backbone, num_classes=num_classes, in_chans=1)
        config = ModelConfig(backbone=self.backbone, pretrained=self.weights,
                             key_map=self.key_map, in_chans=3, image_size=self.size)  # fmt: skip
        model = create_backbone(config)  # features only: the file's classifier is not loaded
        model.reset_classifier(num_classes)
        return model.to(memory_format=torch.channels_last)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Grey in [0, 1] to the network's input (three channels for a pretrained regime)."""
        if not self.weights:
            return (x - FMNIST_MEAN) / FMNIST_STD
        mean, std = torch.tensor(self.mean)[:, None, None], torch.tensor(self.std)[:, None, None]
        return (x.expand(-1, 3, -1, -1) - mean) / std


def benchmark_data(seed: int, work: Path, params: dict) -> Manifest:
    """FMNIST-LT-N drawn with ``seed`` (prepared once, then read back)."""
    out = work / f"data_seed{seed}"
    if not (out / "manifest.parquet").is_file():
        data = from_mapping(DataConfig, params.get("data"), "data")
        bench = from_mapping(BenchmarkConfig, params.get("benchmark"), "benchmark")
        manifest, _, _ = prepare(data, bench, out, seed=seed)
        write_manifest(manifest, out / "manifest.parquet")
    return read_manifest(out / "manifest.parquet")


def with_true_labels(manifest: Manifest) -> Manifest:
    return manifest.with_table(manifest.table.assign(label=manifest.table["true_label"]))


def images(
    manifest: Manifest, split: str, regime: PlainRegime = PlainRegime()
) -> tuple[torch.Tensor, torch.Tensor]:
    """N x 1 x 32 x 32 floats in [0, 1] (28 px zero-padded to 32) and the given labels; for a
    pretrained regime N x 1 x size x size (28 px resized; ``normalise`` makes three channels)."""
    dataset = ImageDataset.from_manifest(manifest, split, channels=1)
    pixels = np.stack([dataset.image(i) for i in range(len(dataset))])  # N x 28 x 28 x 1
    x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float().div(255)
    if regime.weights:
        size = (regime.size, regime.size)
        x = F.interpolate(x, size=size, mode="bilinear", antialias=True).clamp(0, 1)
        return x, dataset.labels
    return F.pad(x, (2, 2, 2, 2)), dataset.labels


def plain_recipe(
    manifest: Manifest, epochs: int, seed: int, regime: PlainRegime = PlainRegime()
) -> tuple[dict, float]:
    """Train the plain recipe; return its test report and training images per second."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    x, y = images(manifest, "train", regime)
    model = regime.create(manifest.num_classes)
    peak = regime.lr
    if regime.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=peak,
                                      weight_decay=regime.weight_decay)  # fmt: skip
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=peak, momentum=0.9,
                                    weight_decay=regime.weight_decay)  # fmt: skip
    batch, steps_per_epoch = 128, len(x) // 128
    total, warmup = epochs * steps_per_epoch, steps_per_epoch if regime.warmup else 0
    size, border = x.shape[-1], 4 if not regime.weights else regime.size // 8
    step, seen, train_seconds = 0, 0, 0.0
    for _ in range(epochs):
        model.train()
        started = time.perf_counter()
        order = torch.randperm(len(x), generator=generator)
        for b in range(steps_per_epoch):
            index = order[b * batch : (b + 1) * batch]
            padded = F.pad(x[index], (border,) * 4)  # zeros: black (as the padding to 32)
            dx, dy = torch.randint(0, 2 * border + 1, (2, len(index)), generator=generator)
            crops = torch.stack(
                [p[:, i : i + size, j : j + size] for p, i, j in zip(padded, dy, dx)]
            )
            flip = torch.rand(len(index), generator=generator) < 0.5
            crops[flip] = crops[flip].flip(-1)
            if step < warmup:
                lr = peak * (step + 1) / warmup
            else:
                lr = peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = F.cross_entropy(model(regime.normalise(crops)), y[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step, seen = step + 1, seen + len(index)
        train_seconds += time.perf_counter() - started
    model.eval()
    test_x, test_y = images(manifest, "test", regime)
    with torch.no_grad():
        pred = torch.cat([model(regime.normalise(c)).argmax(1) for c in test_x.split(512)])
    counts = manifest.class_counts("train", "true_label").to_numpy()
    report = classification_report(pred.numpy(), test_y.numpy(), manifest.num_classes, counts)
    return report, seen / train_seconds


def noisytail_recipe(
    manifest: Manifest, out: Path, params: dict, epochs: int, seed: int
) -> tuple[dict, float]:
    """params.yaml's recipe through run_recipe; its test report and training images per second."""
    model_config = from_mapping(ModelConfig, params["model"], "model")
    train_config = replace(from_mapping(TrainConfig, params["train"], "train"), epochs=epochs)
    augment = AugmentConfig.from_params(params.get("augment"))
    result = run_recipe(RecipeConfig(), model_config, train_config, augment, manifest, out,
                        seed=seed, accelerator=Accelerator(cpu=True))  # fmt: skip
    steps = len(manifest.split("train")) // train_config.batch_size
    seconds = sum(h["epoch_seconds"] for h in result["history"])
    model, _ = load_network(out / "model.safetensors")
    report = evaluate_split(model, manifest, "test", train_config.image_size,
                            Accelerator(cpu=True), augment=augment)  # fmt: skip
    return report, steps * train_config.batch_size * epochs / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="benchmark seeds")
    parser.add_argument("--epochs", type=int, default=0, help="default: the profile's train.epochs")
    parser.add_argument("--work", default="", help="default: outputs/<name>")
    parser.add_argument("--name", default="baseline", help="results/<name>.json")
    parser.add_argument("--params", default="params.yaml", help="the profile (data, recipe)")
    parser.add_argument("--recipes", nargs="+", default=["plain", "ours"],
                        choices=["plain", "ours"])  # fmt: skip
    args = parser.parse_args()
    params = load_params(args.params)
    work = Path(args.work or f"outputs/{args.name}")  # one profile's data and runs per folder
    args.epochs = args.epochs or int(params["train"]["epochs"])
    regime = PlainRegime.of(params)

    rows, summary = [], {}
    for seed in args.seeds:
        noisy = benchmark_data(seed, work, params)
        runs = {}
        for labels, manifest in (("noisy", noisy), ("oracle", with_true_labels(noisy))):
            for recipe in args.recipes:
                started = time.perf_counter()
                if recipe == "plain":
                    report, rate = plain_recipe(manifest, args.epochs, seed, regime)
                else:
                    out = work / f"seed{seed}_{labels}_recipe"
                    report, rate = noisytail_recipe(manifest, out, params, args.epochs, seed)
                runs[f"{recipe}_{labels}"] = (report, rate)
                rows.append({
                    "seed": seed, "labels": labels, "recipe": recipe,
                    "mean_class_error": round(report["mean_class_error"], 2),
                    "top1": round(report["top1"], 2),
                    **{g: round(report.get(f"{g}_accuracy", float("nan")), 1)
                       for g in ("many", "medium", "few")},
                    "img_s": round(rate), "minutes": round((time.perf_counter() - started) / 60, 1),
                })  # fmt: skip
                print_table(rows[-1:])
        summary[str(seed)] = {
            **{k: round(r["mean_class_error"], 2) for k, (r, _) in runs.items()},
        }
        if set(args.recipes) == {"plain", "ours"}:
            summary[str(seed)].update({
                "ours_noisy_few_accuracy": round(runs["ours_noisy"][0]["few_accuracy"], 2),
                "img_s_ratio": round(float(np.mean(
                    [runs[f"ours_{k}"][1] / runs[f"plain_{k}"][1] for k in ("noisy", "oracle")]
                )), 3),
            })  # fmt: skip
    print()
    print_table(rows)
    write_result(args.name, rows, epochs=args.epochs, summary=summary, params=args.params,
                 plain=asdict(regime) if "plain" in args.recipes else None,
                 recipe={k: params[k] for k in ("model", "train", "augment")})  # fmt: skip


if __name__ == "__main__":
    main()
