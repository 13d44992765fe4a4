"""The served model's bounds on one request (params.yaml ``serving.limits``, stored in the
registered model's ensemble.json; ``model_config`` may override them when it is loaded)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass

from noisytail.config import ConfigError, from_mapping

PARITY_SAMPLE = 64  # serving.parity_sample: test images serve_check asks the served model for


@dataclass(frozen=True)
class ServingLimits:
    """Each limit is checked before the work it bounds (see ``serving.inputs``)."""

    max_images: int = 64  # rows of one request
    max_request_bytes: int = 64_000_000  # the request's image files together, as base64 text
    max_image_bytes: int = 10_000_000  # one image file, after base64 decoding
    max_pixels: int = 40_000_000  # width x height from the header (about 6,300 x 6,300)
    micro_batch: int = 16  # images decoded and predicted at once (bounds pixels, activations)
    concurrent_requests: int = 2  # decoded and predicted at once (the server runs each in a
    wait_seconds: int = 30  # thread); a request waits this long for its turn, then a 503

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"serving.limits.{field.name}: a positive whole number, "
                                  f"got {value!r}")  # fmt: skip

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> ServingLimits:
        return from_mapping(cls, values, "serving.limits")
