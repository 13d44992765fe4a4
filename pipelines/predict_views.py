"""DVC stage `member_views`: a member's final model on val and test, ten views per image at
each test-time scale, cached as bias-free top-K logits (noisytail.test_time.views) for the studies.

    python pipelines/predict_views.py --member resnet18_r3

Writes data/test_time/<member>/scale_<s>.npz, one per `test_time.scales`, and device.json (the
device, precision and whether convolutions ran in TF32).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from noisytail.config import from_mapping
from noisytail.config.members import member_plan
from noisytail.config.params import load_checked_params
from noisytail.config.test_time import TTAConfig
from noisytail.config.training import TrainConfig
from noisytail.data.dataset import ImageDataset
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.models.network import load_network
from noisytail.prediction import check_classes, model_view
from noisytail.test_time.cache import stack_caches
from noisytail.test_time.views import enlarged_transform, predict_views
from noisytail.training.engine import make_accelerator

PREPARED = "data/prepared/manifest.parquet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--member", required=True)
    parser.add_argument("--out", default="data/test_time")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    plan = member_plan(params, args.member)
    config = from_mapping(TTAConfig, params.get("test_time"), "test_time")
    weights = plan.step_dir("balance") / "model.safetensors"
    model, classes = load_network(weights)
    manifest = read_manifest(PREPARED)
    check_classes(classes, manifest, str(weights))
    size, view = model_view(model)
    channels = model.config.in_chans
    accelerator = make_accelerator(TrainConfig(mixed_precision=plan.precision))
    out = Path(args.out) / plan.name
    out.mkdir(parents=True, exist_ok=True)
    present = [s for s in ("val", "test") if (manifest.table["split"] == s).any()]
    if "test" not in present:
        print(f"{PREPARED} has no test split: the views cover val only")
    for scale in config.scales:
        caches, splits = [], []
        for split in present:
            dataset = ImageDataset.from_manifest(
                manifest, split, enlarged_transform(size, channels, view, scale), channels=channels
            )  # fmt: skip
            caches.append(predict_views(model, dataset, size, accelerator, top_k=config.top_k,
                                        batch_size=config.batch_size,
                                        workers=plan.steps["full"].workers))  # fmt: skip
            splits.append(np.full(len(dataset), split))
        if accelerator.is_main_process:
            path = out / f"scale_{scale:g}.npz"
            partial = path.with_name(f"partial_{path.name}")
            np.savez(partial, split=np.concatenate(splits), **stack_caches(caches))
            partial.replace(path)
            print(f"{plan.name}: scale {scale:g}, ten {size} px views -> {path}")
    if accelerator.is_main_process:  # how the views were computed: serve_check's tolerance
        cuda = accelerator.device.type == "cuda"
        (out / "device.json").write_text(json.dumps({
            "device": accelerator.device.type, "precision": plan.precision,
            "tf32": cuda and torch.backends.cudnn.allow_tf32,
        }))  # fmt: skip


if __name__ == "__main__":
    report_expected_errors(main)
