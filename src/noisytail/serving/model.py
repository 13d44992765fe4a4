"""The ensemble as an MLflow pyfunc model: registered with the alias ``champion``, served by
``mlflow models serve``, and used by ``noisytail predict``.

No pickled Python objects: the model is logged "from code" (``serving/entry.py`` names the
class), and its artifacts are the members' safetensors with their model.json and one
``ensemble.json`` (per member: tau, TTA scale and mode, weight; the class names; top; the
per-view top-K of the tuning cache). The members are rebuilt with timm in ``load_context``.

Input: a DataFrame with an ``image`` column (base64-encoded image file bytes, as JSON carries
them) or a ``path`` column. Output: per image the top-5 classes and probabilities.
"""

from __future__ import annotations

import base64
import io
import json
import os
import shutil
import sys
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from PIL import Image

from noisytail.models.network import load_network
from noisytail.prediction import model_view
from noisytail.test_time.ensemble import ensemble_top_k
from noisytail.test_time.scoring import member_top_k
from noisytail.test_time.tau import classifier_terms
from noisytail.test_time.views import enlarged_transform, view_logits

SPEC_FILE = "ensemble.json"
ENTRY = Path(__file__).with_name("entry.py")


class EnsemblePredictor:
    """The tuned ensemble over member folders (each: model.safetensors + model.json)."""

    def __init__(self, spec: Mapping, member_dirs: Mapping[str, str | os.PathLike]) -> None:
        self.spec, self.members = spec, []
        for member in spec["members"]:
            model, classes = load_network(Path(member_dirs[member["name"]]) / "model.safetensors")
            if list(classes) != list(spec["classes"]):
                raise ValueError(f"member {member['name']}: its classes differ from the ensemble's")
            size, view = model_view(model)
            transform = enlarged_transform(size, model.config.in_chans, view, member["scale"])
            self.members.append((member, model.eval(), transform, size))

    def predict_images(self, images: Sequence[Image.Image], k: int = 5):
        """Each image as every member sees it (converted to its channels as in training,
        ``data.dataset.load_image``), reduced as the tuning cache was, then ensembled."""
        lists = []
        for member, model, transform, size in self.members:
            mode = "L" if model.config.in_chans == 1 else "RGB"
            arrays = [np.asarray(image.convert(mode)) for image in images]
            batch = torch.stack([transform(image=a[..., None] if a.ndim == 2 else a)["image"]
                                 for a in arrays])  # fmt: skip
            top = min(self.spec["view_top_k"], model.num_classes)  # as the tuning cache held
            value, index = view_logits(model, batch, size).topk(top, dim=2)
            cache = {"index": index.numpy().astype(np.int32), "logit": value.numpy(),
                     **classifier_terms(model)}  # fmt: skip
            lists.append(member_top_k({f"{member['scale']:g}": cache}, member, self.spec["top"]))
        weights = [m["weight"] for m, *_ in self.members]
        return ensemble_top_k(lists, weights, k=k, top=self.spec["top"])

    def predict_frame(self, images: Sequence[Image.Image], k: int = 5) -> pd.DataFrame:
        index, prob = self.predict_images(images, k)
        classes = self.spec["classes"]
        table = pd.DataFrame(index=range(len(images)))
        for rank in range(k):
            table[f"class_{rank + 1}"] = [classes[c] if c >= 0 else "" for c in index[:, rank]]
            table[f"prob_{rank + 1}"] = prob[:, rank].astype(float)
        return table


def decode_image(data: bytes | str) -> Image.Image:
    """An image file's bytes (or their base64 text), decoded."""
    raw = base64.b64decode(data) if isinstance(data, str) else data
    with Image.open(io.BytesIO(raw)) as image:
        image.load()
        return image.copy()


class EnsembleModel(mlflow.pyfunc.PythonModel):
    """The pyfunc wrapper: rebuilds the predictor from the artifacts."""

    def load_context(self, context) -> None:
        spec = json.loads(Path(context.artifacts["ensemble"]).read_text())
        dirs = {m["name"]: context.artifacts[f"member_{m['name']}"] for m in spec["members"]}
        self.predictor = EnsemblePredictor(spec, dirs)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        if "image" in model_input:
            images = [decode_image(v) for v in model_input["image"]]
        elif "path" in model_input:
            images = [decode_image(Path(p).read_bytes()) for p in model_input["path"]]
        else:
            raise ValueError("input needs an 'image' column (base64 image bytes) or 'path'")
        return self.predictor.predict_frame(images)


def log_ensemble(
    spec: Mapping, member_dirs: Mapping[str, str | os.PathLike], name: str, alias: str,
    tags: Mapping[str, str],
) -> str:  # fmt: skip
    """Log the ensemble as a pyfunc model in the active run and register it as a new version of
    ``name`` with ``alias``; returns the version."""
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
                signature=signature,
                pip_requirements=["torch", "timm", "albumentations", "pandas", "pillow"],
            )  # fmt: skip
    client = mlflow.MlflowClient()
    version = str(info.registered_model_version)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    client.set_registered_model_alias(name, alias, version)
    return version
