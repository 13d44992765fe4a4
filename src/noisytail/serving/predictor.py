"""The tuned ensemble over member folders, predicting images as the pipeline's caches did.

Each member sees an image as in ``pipelines/predict_views.py``: converted to its channels, the
enlarged evaluation view at its tuned scale, ten crops, the top-K bias-free logits with the
as-trained top-1 kept in the list (``test_time.views.keep_trained_top1``), at the precision its
training used; then tau, the TTA mode and the weighted top-10 average. Images go through in
micro-batches of ``limits.micro_batch``, and each is decoded only when its turn comes and
dropped once every member's views of it are made: one decoded image is held at a time (a 40 MP
photo is 120 MB in RGB), the micro-batch's views and activations beside it (the request's file
bytes are held whole, bounded by its limits).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from PIL import Image

from noisytail.config.serving import ServingLimits
from noisytail.models.network import load_network
from noisytail.prediction import model_view
from noisytail.serving.inputs import decode_image
from noisytail.test_time.ensemble import ensemble_top_k
from noisytail.test_time.scoring import member_top_k
from noisytail.test_time.tau import classifier_terms
from noisytail.test_time.views import enlarged_transform, keep_trained_top1, view_logits

# On the CPU, accelerate runs fp16 in fp32 (no native fp16 autocast) and bf16 in CPU autocast:
# the server, on the CPU, does the same.
AUTOCAST = {"no": None, "bf16": torch.bfloat16, "fp16": None}


class EnsemblePredictor:
    """The ensemble of ``spec`` (see ``serving.model``) over member folders."""

    def __init__(
        self,
        spec: Mapping,
        member_dirs: Mapping[str, str | os.PathLike],
        limits: ServingLimits | None = None,
    ) -> None:
        self.spec, self.members = spec, []
        self.limits = limits or ServingLimits.from_mapping(spec.get("limits"))
        for member in spec["members"]:
            path = os.path.join(member_dirs[member["name"]], "model.safetensors")
            model, classes = load_network(path)
            if list(classes) != list(spec["classes"]):
                raise ValueError(f"member {member['name']}: its classes differ from the ensemble's")
            size, view = model_view(model)
            transform = enlarged_transform(size, model.config.in_chans, view, member["scale"])
            self.members.append((member, model.eval(), transform, size, classifier_terms(model)))

    def member_views(self, images: Iterable[Image.Image]) -> list[torch.Tensor]:
        """Per member, its enlarged evaluation views of ``images``, one image decoded at a time."""
        views = [[] for _ in self.members]
        for image in images:
            for slot, (_, model, transform, *_) in zip(views, self.members, strict=True):
                array = np.asarray(image.convert("L" if model.config.in_chans == 1 else "RGB"))
                array = array[..., None] if array.ndim == 2 else array
                slot.append(transform(image=array)["image"])
            del image, array  # the next image is decoded only after this one is let go
        return [torch.stack(slot) for slot in views]

    def member_lists(self, images: Iterable[Image.Image]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Per member, its top-``top`` classes and probabilities of ``images`` (one batch)."""
        lists = []
        for batch, (member, model, _, size, terms) in zip(self.member_views(images), self.members,
                                                          strict=True):  # fmt: skip
            dtype = AUTOCAST[member.get("mixed_precision", "no")]
            with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
                raw = view_logits(model, batch, size)
            top = min(self.spec["view_top_k"], model.num_classes)  # as the tuning cache held
            value, index = keep_trained_top1(raw, torch.from_numpy(terms["bias"]), top)
            cache = {"index": index.numpy().astype(np.int32), "logit": value.numpy(), **terms}
            lists.append(member_top_k({f"{member['scale']:g}": cache}, member, self.spec["top"]))
        return lists

    def predict_images(
        self, images: Sequence[Image.Image], k: int = 5
    ) -> tuple[np.ndarray, np.ndarray]:
        """The ensemble's top-``k`` classes and probabilities of decoded images."""
        return self._predict(images, lambda image, row: image, k)

    def predict_files(self, files: Sequence[bytes], k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The same of image files' bytes, each micro-batch decoded only when its turn comes."""
        return self._predict(files, lambda data, row: decode_image(data, self.limits, row), k)

    def _predict(
        self, items: Sequence, to_image: Callable[[object, int], Image.Image], k: int
    ) -> tuple[np.ndarray, np.ndarray]:
        if not items:
            return np.empty((0, k), np.int32), np.empty((0, k), np.float32)
        weights = [m["weight"] for m, *_ in self.members]
        indices, probs = [], []
        for start in range(0, len(items), self.limits.micro_batch):
            chunk = items[start : start + self.limits.micro_batch]
            images = (to_image(item, start + i) for i, item in enumerate(chunk))  # lazily
            index, prob = ensemble_top_k(self.member_lists(images), weights, k=k,
                                         top=self.spec["top"])  # fmt: skip
            indices.append(index)
            probs.append(prob)
        return np.concatenate(indices), np.concatenate(probs)

    def frame(self, index: np.ndarray, prob: np.ndarray) -> pd.DataFrame:
        """class_1..k and prob_1..k columns (class names; '' where fewer than k)."""
        names = np.array([*self.spec["classes"], ""], dtype=object)  # index -1 (no class): ""
        table = pd.DataFrame(index=range(len(index)))
        for rank in range(index.shape[1]):
            table[f"class_{rank + 1}"] = names[index[:, rank]]
            table[f"prob_{rank + 1}"] = prob[:, rank].astype(float)
        return table

    def predict_frame(self, images: Iterable[Image.Image], k: int = 5) -> pd.DataFrame:
        return self.frame(*self.predict_images(list(images), k))
