"""params.yaml checked whole, before any work.

A typo in the last section should not surface after an hour of training: every stage starts
with ``load_checked_params``, which builds every section's config (unknown keys and wrong types
are named by ``config.from_mapping``, ranges by the configs themselves) and checks what only the
whole file can tell: the backbone exists, the pretrained file is there, the cleaning rounds form
a chain. Each failure is one ``ConfigError`` naming the key and the allowed values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from noisytail.config import ConfigError, from_mapping, load_params
from noisytail.config.cleaning import round_config
from noisytail.config.data import AugmentConfig, BenchmarkConfig, DataConfig
from noisytail.config.members import check_members, member_plan
from noisytail.config.model import PRESETS, ModelConfig
from noisytail.config.serving import PARITY_SAMPLE, ServingLimits
from noisytail.config.test_time import TTAConfig, TuningConfig
from noisytail.config.training import TrainConfig

SECTIONS = ("seed", "launcher", "data", "benchmark", "augment", "model", "train", "hires", "crt",
            "balanced_subset", "tracking", "cleaning", "gallery", "members", "test_time",
            "tuning", "serving")  # fmt: skip
FIRST_ROUND_INPUT = "data/prepared"


def _keys(section: Any, name: str, allowed: tuple[str, ...]) -> dict:
    section = section or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{name}: expected a mapping, got {section!r}")
    unknown = sorted(set(section) - set(allowed))
    if unknown:
        raise ConfigError(f"{name}: unknown parameter(s) {unknown}; known: {list(allowed)}")
    return dict(section)


def check_model(model: ModelConfig) -> None:
    import timm

    resolved = model.resolved()
    if not timm.is_model(resolved.backbone):
        raise ConfigError(
            f"model.backbone: {model.backbone!r} is neither a preset ({', '.join(PRESETS)}) nor "
            f"a timm model name (see timm.list_models())"
        )
    if model.pretrained not in ("", "none", "hf") and not Path(model.pretrained).is_file():
        raise ConfigError(
            f"model.pretrained: {model.pretrained} does not exist; give a local .pth or "
            f".safetensors file, 'hf' (offline Hugging Face cache) or '' (no pretrained weights)"
        )


def check_rounds(cleaning: Mapping) -> None:
    """At least one round; round r reads data/prepared (r = 1) or an earlier round's output."""
    rounds = cleaning.get("rounds") or []
    if not rounds:
        raise ConfigError("cleaning.rounds: at least one round is needed")
    outputs: list[str] = []
    for position, entry in enumerate(rounds, start=1):
        missing = [k for k in ("round", "input", "output") if k not in (entry or {})]
        if missing:
            raise ConfigError(f"cleaning.rounds[{position - 1}]: missing {missing}")
        if entry["round"] != position:
            raise ConfigError(
                f"cleaning.rounds[{position - 1}]: round {entry['round']!r}, "
                f"expected {position} (rounds are numbered 1, 2, ... in order)"
            )
        allowed = [FIRST_ROUND_INPUT] if position == 1 else outputs
        if str(entry["input"]).rstrip("/") not in allowed:
            raise ConfigError(f"cleaning.rounds, round {position}: input {entry['input']!r} is "
                              f"not {' or '.join(map(repr, allowed))} (round 1 reads the prepared "
                              f"data, each later round an earlier round's output)")  # fmt: skip
        outputs.append(str(entry["output"]).rstrip("/"))
        round_config(cleaning, position)  # the round's overrides, range-checked


def check_params(params: Mapping) -> None:
    """Every section of ``params``; raises ``ConfigError`` naming the first bad key."""
    _keys(params, "params.yaml", SECTIONS)
    if not isinstance(params.get("seed", 0), int):
        raise ConfigError(f"seed: expected an integer, got {params['seed']!r}")
    data = from_mapping(DataConfig, params.get("data"), "data")
    benchmark = from_mapping(BenchmarkConfig, params.get("benchmark"), "benchmark")
    if benchmark.test_per_class and data.source != "fmnist_lt_n":
        raise ConfigError(f"benchmark.test_per_class subsets FMNIST-LT-N's test only; with "
                          f"data.source {data.source!r} set it to 0")  # fmt: skip
    AugmentConfig.from_params(params.get("augment"))
    check_model(from_mapping(ModelConfig, params.get("model"), "model"))
    train = dict(params.get("train") or {})
    from_mapping(TrainConfig, train, "train")
    for overlay in ("hires", "crt"):
        from_mapping(TrainConfig, {**train, **(params.get(overlay) or {})}, overlay)
    subset = _keys(params.get("balanced_subset"), "balanced_subset", ("per_class", "finetune"))
    if int(subset.get("per_class", 30)) < 1:
        raise ConfigError("balanced_subset.per_class: must be at least 1")
    _keys(params.get("tracking"), "tracking", ("uri", "experiment"))
    gallery = _keys(params.get("gallery"), "gallery", ("per_section", "max_classes"))
    for key, value in gallery.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"gallery.{key}: a whole number of at least 1, got {value!r}")
    if "cleaning" in params:  # a training-only params file (tests, notebooks) has none
        check_rounds(params["cleaning"] or {})
    check_members(params)
    from_mapping(TTAConfig, params.get("test_time"), "test_time")
    from_mapping(TuningConfig, params.get("tuning"), "tuning")
    serving = _keys(params.get("serving"), "serving", ("limits", "parity_sample"))
    ServingLimits.from_mapping(serving.get("limits"))
    sample = serving.get("parity_sample", PARITY_SAMPLE)
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 1:
        raise ConfigError(f"serving.parity_sample: a whole number of at least 1, got {sample!r}")
    for name in params.get("members") or {}:  # each member's own backbone and weights
        try:
            check_model(member_plan(params, name).model)
        except ConfigError as error:
            raise ConfigError(f"members.{name}.{error}") from None


def load_checked_params(path: str | os.PathLike = "params.yaml") -> dict[str, Any]:
    """``load_params`` then ``check_params``: what every stage starts with."""
    params = load_params(path)
    try:
        check_params(params)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return params
