"""DVC stage `serve_check`: the registered ensemble, served over HTTP as a client would reach it,
reproduces predictions.csv on a fixed sample of its split (`serving.parity_sample` images,
drawn with `seed`). The real server (`mlflow models serve` on 127.0.0.1, the version `register`
just made, not whatever the alias points at later) is started, asked in requests of at most
`serving.limits.max_images` images, and stopped. metrics/serving.json records the agreement;
when it holds, the alias `champion` moves onto that version; any disagreement fails the stage
after writing it, and `champion` stays where it was.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from noisytail.config.members import member_plan
from noisytail.config.params import load_checked_params
from noisytail.config.serving import PARITY_SAMPLE, ServingLimits
from noisytail.data.manifest import read_manifest
from noisytail.errors import NoisytailError, report_expected_errors
from noisytail.serving.server import ModelServer
from noisytail.tracking import tracking_uri

PREPARED = "data/prepared/manifest.parquet"
VIEWS = Path("data/test_time")
# predictions.csv rounds to 5 digits; a member trained in bf16 was predicted by member_views in
# the training's precision (on a GPU) and is served in CPU bf16: rounding differs, near ties may
# swap below the top-1, so then only the top-1 must agree and probabilities within 0.02. Where
# member_views ran fp32 convolutions in cuDNN's TF32 (torch's default on a GPU; its device.json
# says), the same loose check applies, whatever machine serves now.
STRICT_TOLERANCE, MIXED_TOLERANCE = 1e-4, 2e-2
CHAMPION = "champion"


def predicted_loosely(params: dict) -> bool:
    """Whether any member's views were computed below fp32 (mixed precision or TF32)."""
    for key in params["members"]:
        plan = member_plan(params, key)
        record = VIEWS / plan.name / "device.json"
        if plan.precision != "no" or (record.is_file() and json.loads(record.read_text())["tf32"]):
            return True
    return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--registered", default="metrics/registered.json")
    parser.add_argument("--predictions", default="predictions.csv")
    parser.add_argument("--out", default="metrics/serving.json")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    serving = params.get("serving") or {}
    limits = ServingLimits.from_mapping(serving.get("limits"))
    registered = json.loads(Path(args.registered).read_text())
    mixed = predicted_loosely(params)
    tolerance = MIXED_TOLERANCE if mixed else STRICT_TOLERANCE
    # class names and sample ids such as "00017" stay text
    names = {"sample_id": str, **{f"class_{r}": str for r in range(1, 6)}}
    expected = pd.read_csv(args.predictions, keep_default_na=False, dtype=names)
    if expected.empty:
        raise NoisytailError(f"{args.predictions} holds no rows: nothing to check the server on")
    rng = np.random.default_rng(params.get("seed", 0))
    size = min(serving.get("parity_sample", PARITY_SAMPLE), len(expected))
    expected = expected.iloc[np.sort(rng.choice(len(expected), size, replace=False))]
    manifest = read_manifest(PREPARED)
    ids = manifest.table["sample_id"].astype(str)
    paths = manifest.table.set_index(ids)["path"].loc[expected["sample_id"]]
    images = [manifest.resolve(p).read_bytes() for p in paths]

    uri = f"models:/{registered['name']}/{registered['version']}"
    store = tracking_uri((params.get("tracking") or {}).get("uri", ""))
    env = {**os.environ, "MLFLOW_TRACKING_URI": store}
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        with ModelServer(uri, env=env, log=Path(scratch) / "server.log") as server:
            ready = time.perf_counter()
            served = []
            for start in range(0, len(images), limits.max_images):
                served += server.predict(images[start : start + limits.max_images])
            answered = time.perf_counter()
    served = pd.DataFrame(served)

    ranks = range(1, 6)
    same_top1 = served["class_1"].to_numpy() == expected["class_1"].to_numpy()
    same_top5 = np.all([served[f"class_{r}"].fillna("").to_numpy()
                        == expected[f"class_{r}"].to_numpy() for r in ranks], axis=0)  # fmt: skip
    gaps = [np.abs(served[f"prob_{r}"].to_numpy() - expected[f"prob_{r}"].to_numpy()).max()
            for r in ranks]  # fmt: skip
    prob_gap = float(max(gaps))
    reproduces = bool((same_top1 if mixed else same_top5).all() and prob_gap <= tolerance)
    result = {
        "model": uri,
        "split": str(expected["split"].iloc[0]),
        "images": size,
        "same_top1": int(same_top1.sum()),
        "same_top5": int(same_top5.sum()),
        "max_prob_difference": round(prob_gap, 6),
        "tolerance": tolerance,
        "reproduces_predictions": reproduces,
        "start_seconds": round(ready - started, 1),
        "images_per_second": round(size / (answered - ready), 1),
        "alias": CHAMPION if reproduces else None,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))  # recorded before the alias moves
    print(json.dumps(result))
    if reproduces:
        mlflow.MlflowClient(store).set_registered_model_alias(
            registered["name"], CHAMPION, registered["version"]
        )
        print(f"{registered['name']} version {registered['version']} is now @{CHAMPION}")
    else:
        first = expected["sample_id"].to_numpy()[~same_top5][:5].tolist()
        raise NoisytailError(f"the served model differs from {args.predictions} on "
                             f"{size - result['same_top5']} of {size} images (first: {first}); "
                             f"largest probability gap {prob_gap:.2g}: see {args.out}; "
                             f"@{CHAMPION} was left where it was")  # fmt: skip


if __name__ == "__main__":
    report_expected_errors(main)
