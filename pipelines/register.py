"""DVC stage `register`: the tuned ensemble as an MLflow pyfunc model, a new version of
`noisytail-ensemble` with the alias `candidate`, tagged with each member's registered version.
`serve_check` moves the alias `champion` onto it once the served model reproduces the pipeline.

    mlflow models serve -m models:/noisytail-ensemble@champion -h 127.0.0.1 -p 5001 \
        --env-manager local    # or virtualenv / uv: the model pins its environment
    noisytail predict image.png ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from noisytail.config import ConfigError, from_mapping, load_params
from noisytail.config.members import member_plan
from noisytail.config.params import load_checked_params
from noisytail.config.serving import ServingLimits
from noisytail.config.test_time import TTAConfig, TuningConfig
from noisytail.data.manifest import read_manifest
from noisytail.errors import report_expected_errors
from noisytail.serving.model import ensemble_spec, log_ensemble
from noisytail.serving.requirements import pinned_requirements
from noisytail.tracking import OFF, RunTracker, tracking_uri

PREPARED = "data/prepared/manifest.parquet"
LOCK = "requirements.lock"  # the served environment's pins must be the lock's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tuned", default="tuned.yaml")
    parser.add_argument("--name", default="noisytail-ensemble")
    parser.add_argument("--alias", default="candidate")
    parser.add_argument("--out", default="metrics/registered.json")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args()

    params = load_checked_params(args.params)
    tuned = load_params(args.tuned)["members"]
    tta = from_mapping(TTAConfig, params.get("test_time"), "test_time")
    tuning = from_mapping(TuningConfig, params.get("tuning"), "tuning")
    members = [{"name": m, **tuned[m],
                "mixed_precision": member_plan(params, m).precision}
               for m in tuned]  # fmt: skip
    limits = ServingLimits.from_mapping((params.get("serving") or {}).get("limits"))
    spec = ensemble_spec(members, read_manifest(PREPARED).classes, tuning.top, tta.top_k, limits)
    dirs = {m: member_plan(params, m).step_dir("balance") for m in tuned}
    tracking = params.get("tracking") or {}
    if tracking_uri(tracking.get("uri", "")) == OFF:
        raise ConfigError(
            "tracking.uri is off, but the registry lives in MLflow: set it (or "
            "MLFLOW_TRACKING_URI) to a tracking store to register the ensemble"
        )
    run = RunTracker(tracking.get("experiment", "noisytail"), "ensemble/register",
                     uri=tracking.get("uri", ""), tags={"kind": "ensemble"})  # fmt: skip
    tags = {}  # each member's version, as its balance step registered it
    for m, folder in dirs.items():
        registered = folder / "registered.json"
        found = json.loads(registered.read_text()) if registered.is_file() else None
        tags[f"member.{m}"] = f"{found['name']}/{found['version']}" if found else "-"
    requirements = pinned_requirements("noisytail.serving.entry", LOCK)
    version = log_ensemble(spec, dirs, args.name, args.alias, tags, requirements)
    run.end()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"name": args.name, "version": version,
                                          "alias": args.alias, "run_id": run.run_id,
                                          "members": tags}, indent=1))  # fmt: skip
    print(f"registered {args.name} version {version} as @{args.alias}")


if __name__ == "__main__":
    report_expected_errors(main)
