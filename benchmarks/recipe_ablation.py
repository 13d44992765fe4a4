"""What each part of noisytail's training recipe costs or earns: one change at a time.

On FMNIST-LT-N with the noisy labels (benchmark seed 0 by default), each row trains the recipe
this ablation started from (``BASE``: params.yaml as it was then) with one change and reports
validation mean class error (the split the defaults are chosen on: clean, 100 images per class)
and test mean class error (only reported). Two rows cost
no training: the default run's best-validation epoch (checkpoint selection), and the ``zoom`` run
evaluated with a plain resize, the train/test scale mismatch the seed's code had.

    python benchmarks/recipe_ablation.py [--seed 0] [--epochs 15] [--work outputs/baseline]
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from accelerate import Accelerator
from baseline import benchmark_data, noisytail_recipe
from common import print_table, write_result

from noisytail.config import load_params
from noisytail.config.data import AugmentConfig
from noisytail.models.network import load_network
from noisytail.prediction import evaluate_split
from noisytail.training.engine import selected_epoch

# The recipe this ablation started from (params.yaml with the geometry it had then: zero-padded
# random crops and horizontal flips); each variant is one change from it, the last two the best
# two single changes on val together, which params.yaml took as its default.
BASE = {"augment": {"crop": "pad", "horizontal_flip": 0.5}}
# name -> overrides of the base's sections
VARIANTS: dict[str, dict] = {
    "default": {},
    "+ embedding layer (512)": {"model": {"embedding_dim": 512}},
    "+ BNNeck": {"model": {"bnneck": True}},
    "+ embedding and BNNeck (the seed's neck)": {"model": {"embedding_dim": 512, "bnneck": True}},
    "geometry zoom (test: same zoom, centre crop)": {"augment": {"crop": "zoom"}},
    "no horizontal flip": {"augment": {"horizontal_flip": 0.0}},
    "+ brightness/contrast 0.3": {"augment": {"brightness_contrast": 0.3}},
    "+ gaussian blur 0.1": {"augment": {"gaussian_blur": 0.1}},
    "+ coarse dropout 0.2": {"augment": {"coarse_dropout": 0.2}},
    "grey as 3 channels + hue/saturation 0.3": {
        "model": {"in_chans": 3},
        "augment": {"hue_saturation": 0.3},
    },
    "12 epochs": {"train": {"epochs": 12}},
    "+ label smoothing 0.1": {"train": {"label_smoothing": 0.1}},
    "+ mixup 0.2": {"train": {"mixup": 0.2}},
    # the two best single changes on val, together
    "geometry zoom + no horizontal flip": {"augment": {"crop": "zoom", "horizontal_flip": 0.0}},
}


def evaluate(model_file: Path, manifest, size: int, augment: AugmentConfig) -> dict:
    model, _ = load_network(model_file)
    accelerator = Accelerator(cpu=True)
    val = evaluate_split(model, manifest, "val", size, accelerator, augment=augment)
    test = evaluate_split(model, manifest, "test", size, accelerator, augment=augment)
    return {"val_mce": round(val["mean_class_error"], 2),
            "test_mce": round(test["mean_class_error"], 2), "test_top1": round(test["top1"], 2),
            **{f"test_{g}": round(test.get(f"{g}_accuracy", float("nan")), 1)
               for g in ("many", "medium", "few")}}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=0, help="benchmark seed")
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--work", default="outputs/baseline", help="shared with baseline.py")
    parser.add_argument("--only", nargs="*", default=None, help="run these variants only")
    parser.add_argument("--name", default="recipe_ablation", help="results/<name>.json")
    args = parser.parse_args()
    base, work = load_params(), Path(args.work)
    for section, values in BASE.items():
        base[section] = {**base[section], **values}
    manifest = benchmark_data(args.seed, work, base)

    rows = []
    for name, overrides in VARIANTS.items():
        if args.only is not None and name not in args.only:
            continue
        params = copy.deepcopy(base)
        for section, values in overrides.items():
            params[section].update(values)
        epochs = overrides.get("train", {}).get("epochs", args.epochs)
        slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
        out = work / f"seed{args.seed}_noisy_ablation_{slug}"
        noisytail_recipe(manifest, out, params, epochs, args.seed)
        size, augment = params["train"]["image_size"], AugmentConfig.from_params(params["augment"])
        rows.append({"variant": name, **evaluate(out / "model.safetensors", manifest, size,
                                                 augment)})  # fmt: skip
        if name == "default":
            done = json.loads((out / "done.json").read_text())
            best = selected_epoch(done["history"])  # on a tie, the later epoch (what was kept)
            rows.append(
                {
                    "variant": f"best-val epoch ({best}) instead of the last",
                    **evaluate(out / "model_best.safetensors", manifest, size, augment),
                }
            )
        if overrides.get("augment", {}).get("crop") == "zoom":
            rows.append({"variant": f"{name}, test resized (train/test scale mismatch)",
                         **evaluate(out / "model.safetensors", manifest, size,
                                    AugmentConfig(crop="pad"))})  # fmt: skip
        print_table(rows[-1:])
    print()
    print_table(rows)
    write_result(args.name, rows, benchmark_seed=args.seed, epochs=args.epochs, base=BASE,
                 recipe={k: base[k] for k in ("model", "train", "augment")})  # fmt: skip


if __name__ == "__main__":
    main()
