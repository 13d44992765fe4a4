"""The ensemble as an MLflow pyfunc model: registered with the alias ``champion``, served by
``mlflow models serve``, and used by ``noisytail predict``.

No pickled Python objects: the model is logged "from code" (``serving/entry.py`` names the
class), and its artifacts are the members' safetensors with their model.json and one
``ensemble.json`` (per member: tau, TTA scale and mode, weight, training precision; the class
names; top; the per-view top-K of the tuning cache; the request limits). The members are rebuilt
with timm in ``load_context``; the environment is pinned (``serving.requirements``).

Input: a DataFrame with an ``image`` column (base64 text of image file bytes, as JSON carries
them); a ``path`` column only where the model was loaded with
``model_config={"path_root": <folder>}``. ``model_config`` may also set ``torch_threads`` and
override any of ``limits`` (``config.serving.ServingLimits``). Output: per image the top-5
classes and probabilities. A refused request is an MLflow ``INVALID_PARAMETER_VALUE`` error
(HTTP 400) whose message names the row and the limit, with no stack trace; a request that
waits over ``limits.wait_seconds`` for one of the ``concurrent_requests`` turns is a 503.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path

import mlflow
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import (
    INTERNAL_ERROR,
    INVALID_PARAMETER_VALUE,
    TEMPORARILY_UNAVAILABLE,
)

from noisytail.config.serving import ServingLimits
from noisytail.serving.inputs import RequestError, check_images, request_images
from noisytail.serving.predictor import EnsemblePredictor

SPEC_FILE = "ensemble.json"
ENTRY = Path(__file__).with_name("entry.py")
logger = logging.getLogger(__name__)


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: rebuilds the predictor from the artifacts."""

    def load_context(self, context) -> None:
        spec = json.loads(Path(context.artifacts["ensemble"]).read_text())
        config = dict(context.model_config or {})
        self.path_root = config.pop("path_root", "") or None
        threads = config.pop("torch_threads", None)
        if threads:
            torch.set_num_threads(int(threads))
        limits = ServingLimits.from_mapping({**spec.get("limits", {}), **config})
        dirs = {m["name"]: context.artifacts[f"member_{m['name']}"] for m in spec["members"]}
        self.predictor = EnsemblePredictor(spec, dirs, limits)
        self.running = threading.BoundedSemaphore(limits.concurrent_requests)
        self.wait_seconds = turn_wait(limits.wait_seconds)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        limits = self.predictor.limits
        # The server runs each request in a thread (MLflow has parsed its JSON by then): the
        # decoded bytes, pixels and activations are held by at most concurrent_requests at once.
        if not self.running.acquire(timeout=self.wait_seconds):
            raise MlflowException(f"the server is busy: {limits.concurrent_requests} requests "
                                  f"are being predicted and this one waited "
                                  f"{self.wait_seconds:g} s (limits.wait_seconds, at most half "
                                  f"of {REQUEST_TIMEOUT}); retry later",
                                  error_code=TEMPORARILY_UNAVAILABLE)  # fmt: skip
        try:
            files = request_images(model_input, limits, self.path_root)
            check_images(files, limits)
            return self.predictor.frame(*self.predictor.predict_files(files))
        except RequestError as error:  # the client's: say what to change, no stack trace
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        except Exception:  # the server's: logged here in full, a short answer to the client
            logger.exception("noisytail: prediction failed")
            raise MlflowException(
                "the model failed on this request; the server log has the details",
                error_code=INTERNAL_ERROR,
            ) from None
        finally:
            self.running.release()


# MLflow's server answers 504 once a request has taken this long (60 s unless set), whatever the
# model is doing; a request that waited for its turn must still have time to be predicted.
REQUEST_TIMEOUT = "MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"


def turn_wait(wait_seconds: float) -> float:
    """``limits.wait_seconds``, capped at half the server's request timeout: a busy server then
    answers 503 ("retry") before MLflow's 504, while the other half is left for predicting."""
    timeout = float(os.environ.get(REQUEST_TIMEOUT) or 60)
    if wait_seconds > timeout / 2:
        logger.warning("noisytail: limits.wait_seconds = %s is over half of %s = %g s: "
                       "a request waits %g s for its turn", wait_seconds, REQUEST_TIMEOUT,
                       timeout, timeout / 2)  # fmt: skip
    return min(float(wait_seconds), timeout / 2)


MEMBER_KEYS = ("name", "tau", "scale", "mode", "weight", "mixed_precision")


def ensemble_spec(
    members: Sequence[Mapping], classes: Sequence[str], top: int, view_top_k: int,
    limits: ServingLimits,
) -> dict:  # fmt: skip
    """The ``ensemble.json`` a served model reads: per member its name, tau (None: as trained),
    TTA scale and mode, weight and training precision; the class names; each member's ``top``
    entering the average; the per-view top-K its tuning cache held; the request limits."""
    for member in members:
        missing = [k for k in MEMBER_KEYS if k not in member]
        if missing:
            raise ValueError(f"ensemble member {member.get('name', '?')}: no {', '.join(missing)}")
    return {"members": [{k: m[k] for k in MEMBER_KEYS} for m in members],
            "classes": list(classes), "top": int(top), "view_top_k": int(view_top_k),
            "limits": asdict(limits)}  # fmt: skip


def log_ensemble(
    spec: Mapping, member_dirs: Mapping[str, str | os.PathLike], name: str, alias: str,
    tags: Mapping[str, str], requirements: Sequence[str],
) -> str:  # fmt: skip
    """Log the ensemble as a pyfunc model in the active run, with ``requirements`` as its
    environment (``serving.requirements.pinned_requirements``), and register it as a new
    version of ``name`` with ``alias``; returns the version."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    if not sys.stderr.isatty():  # MLflow's own download bars: one line per frame in a log
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    signature = ModelSignature(
        inputs=Schema([ColSpec("string", "image", required=False),
                       ColSpec("string", "path", required=False)]),
        outputs=Schema([ColSpec(kind, f"{field}_{rank}") for rank in range(1, 6)
                        for field, kind in (("class", "string"), ("prob", "double"))]),
    )  # fmt: skip
    with tempfile.TemporaryDirectory() as staging:
        artifacts = {"ensemble": str(Path(staging) / SPEC_FILE)}
        Path(artifacts["ensemble"]).write_text(json.dumps(spec, indent=1))
        for member, folder in member_dirs.items():
            target = Path(staging) / member
            target.mkdir()
            for file in ("model.safetensors", "model.json"):  # not the training checkpoints
                shutil.copy(Path(folder) / file, target / file)
            artifacts[f"member_{member}"] = str(target)
        with warnings.catch_warnings():  # the signature is given; an example image is not
            warnings.filterwarnings("ignore", ".*An input example was not provided")
            info = mlflow.pyfunc.log_model(
                name="ensemble", python_model=str(ENTRY), artifacts=artifacts,
                code_paths=[str(Path(__file__).parents[1])], registered_model_name=name,
                signature=signature, pip_requirements=list(requirements),
                # MLflow passes on only the keys logged here: every one a loader may override
                model_config={"path_root": "", "torch_threads": 0,
                              **asdict(ServingLimits.from_mapping(spec.get("limits")))},
            )  # fmt: skip
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return version
