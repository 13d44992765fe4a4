"""Every profile runs: each has every parameter dvc.yaml tracks, and passes the params check."""

import re

import pytest
import yaml
from conftest import REPO

from noisytail.config import ConfigError
from noisytail.config.params import check_params

PROFILES = sorted((REPO / "profiles").glob("*.yaml"))


def tracked_params() -> set[str]:
    """The params.yaml keys dvc.yaml's stages name (templated member keys as `members`)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    keys = set()
    for stage in stages.values():
        for entry in stage.get("do", stage).get("params", []):
            if isinstance(entry, str):  # a dict names another params file (tuned.yaml)
                keys.add(entry.split(".${", 1)[0])
    return keys


def has(params: dict, dotted: str) -> bool:
    node = params
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


@pytest.mark.parametrize("path", [REPO / "params.yaml", *PROFILES], ids=lambda p: p.stem)
def test_a_profile_has_every_tracked_param_and_passes_the_check(path):
    params = yaml.safe_load(path.read_text())
    missing = sorted(k for k in tracked_params() if not has(params, k))
    assert not missing, f"{path.name} lacks {missing}: dvc repro would stop on them"
    if params["data"].get("source") != "fmnist_lt_n" and not params["data"].get("path"):
        params["data"]["path"] = "your/data.csv"  # a profile for users' data names none
    weights = params["model"].get("pretrained", "")
    if weights not in ("", "none", "hf") and not (REPO / weights).is_file():
        pytest.skip(f"{path.name} names {weights}: `make weights` copies it (make test does)")
    check_params(params)


def test_tracked_params_are_found():
    assert {"seed", "model", "train", "cleaning.rounds", "members", "test_time",
            "tuning"} <= tracked_params()  # fmt: skip


def test_the_typed_defaults_are_params_yaml():
    """One source of truth: a profile that leaves a key out gets what params.yaml says."""
    from noisytail.config import from_mapping
    from noisytail.config.cleaning import CleaningConfig
    from noisytail.config.data import AugmentConfig, BenchmarkConfig, DataConfig
    from noisytail.config.model import ModelConfig
    from noisytail.config.serving import ServingLimits
    from noisytail.config.test_time import TTAConfig, TuningConfig
    from noisytail.config.training import TrainConfig

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    cleaning = {k: v for k, v in params["cleaning"].items() if k != "rounds"}
    for section, cls, given in (
        ("data", DataConfig, params["data"]), ("benchmark", BenchmarkConfig, params["benchmark"]),
        ("augment", AugmentConfig, params["augment"]), ("model", ModelConfig, params["model"]),
        ("train", TrainConfig, params["train"]), ("cleaning", CleaningConfig, cleaning),
        ("test_time", TTAConfig, params["test_time"]), ("tuning", TuningConfig, params["tuning"]),
        ("serving.limits", ServingLimits, params["serving"]["limits"]),
    ):  # fmt: skip
        assert cls() == from_mapping(cls, given, section), f"{cls.__name__} defaults != {section}:"


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("data", "val_min_class", 1, "data.val_min_class"),
        ("test_time", "scales", [1.5, 1.0], "test_time.scales must start with 1.0"),
    ],
)
def test_a_bad_value_is_named_before_any_work(section, key, value, named):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params[section][key] = value
    with pytest.raises(ConfigError, match=re.escape(named)):
        check_params(params)


def test_a_test_subset_outside_fmnist_lt_n_is_named():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["benchmark"]["test_per_class"] = 200
    check_params(params)  # FMNIST-LT-N: the first 200 test images of each class
    params["data"].update(source="table", path="your/data.csv")
    with pytest.raises(ConfigError, match="benchmark.test_per_class subsets FMNIST-LT-N's"):
        check_params(params)
