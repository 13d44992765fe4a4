"""The ensemble's members: each a spec under ``members:`` in params.yaml, trained in three steps.

    full     on a cleaned round's manifest (instance-balanced by default)
    hires    from full's weights: larger input, few epochs, small learning rate (FixRes, progressive
             resizing: the seed went 256 -> 384)
    balance  from hires' weights, or from full's where hires made val worse (a step that makes
             val worse is not built on: ``training.step_gate``): ``crt`` re-trains the
             classifier with class-balanced sampling (Kang et al., 2020); ``balanced_subset``
             fine-tunes the classifier (or everything) on the ``per_class`` most confident
             samples of each class (the seed: 30)

A member gives only what makes it differ; every other key falls back to the top-level sections:

    full     train  <- member.train
    hires    train  <- member.train <- hires <- member.hires
    balance  train  <- member.train <- {image_size: its start's size} <- crt <- member.balance

(``model`` and ``augment`` likewise, ``seed`` to the top-level seed.) Members are a mapping keyed
by name rather than a list: DVC tracks ``members.<name>`` as one parameter, so changing one
member re-runs that member's stages and nothing else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from noisytail.config import ConfigError, check_choice, from_mapping
from noisytail.config.data import AugmentConfig
from noisytail.config.model import ModelConfig
from noisytail.config.training import RecipeConfig, TrainConfig

STEPS = ("full", "hires", "balance")
MEMBER_KEYS = ("round", "seed", "model", "augment", "train", "hires", "balance")
BALANCE_METHODS = ("crt", "balanced_subset")
BALANCE_KEYS = ("method", "per_class", "finetune")  # and any train key
MODELS_ROOT = Path("models/members")
METRICS_ROOT = Path("metrics/members")


def round_output(round_number: int) -> str:
    """Where dvc.yaml's member stages read round ``r``'s cleaned data (templates cannot look the
    path up in ``cleaning.rounds``; ``check_members`` makes sure the two agree)."""
    return f"data/clean/round_{round_number}"


@dataclass(frozen=True)
class MemberPlan:
    """One member, every setting resolved."""

    name: str
    round: int
    seed: int
    model: ModelConfig
    augment: AugmentConfig
    steps: dict[str, TrainConfig]
    balance: str  # crt | balanced_subset
    per_class: int  # balanced_subset: samples per class
    finetune: str  # balanced_subset: classifier | all
    balance_size_given: bool = False  # crt / member.balance set image_size (else: the start's)

    @property
    def manifest_path(self) -> Path:
        return Path(round_output(self.round)) / "manifest.parquet"

    @property
    def confidences_path(self) -> Path:
        """The round's predictions of every training sample (``label_prob``): what
        ``balanced_subset`` ranks by."""
        return Path(f"data/predictions/round_{self.round}/train.parquet")

    def step_dir(self, step: str, root: Path = MODELS_ROOT) -> Path:
        return root / self.name / step

    def metrics_path(self, step: str, root: Path = METRICS_ROOT) -> Path:
        return root / self.name / f"{step}.json"

    def recipe(
        self, step: str, models_root: Path = MODELS_ROOT, start: str | None = None
    ) -> RecipeConfig:
        """The training recipe of ``step``; it starts from ``start``'s model (default: the step
        before it)."""
        check_choice("step", step, STEPS)
        if step == "full":
            return RecipeConfig("full")
        start = start or STEPS[STEPS.index(step) - 1]
        if STEPS.index(start) >= STEPS.index(step):
            raise ConfigError(f"the {step} step cannot start from {start}'s model")
        init = str(self.step_dir(start, models_root) / "model.safetensors")
        if step == "hires":
            return RecipeConfig("hires", init)
        return RecipeConfig(self.balance, init, self.per_class, str(self.confidences_path),
                            self.finetune)  # fmt: skip

    @property
    def precision(self) -> str:
        """The precision the member trained in (``train.mixed_precision``): what its test-time
        views and the served model run it in."""
        return self.steps["full"].mixed_precision

    def step_config(self, step: str, start: str | None = None) -> TrainConfig:
        """The training settings of ``step`` started from ``start``: balance keeps the image
        size of the model it starts from unless one is given for it."""
        config = self.steps[step]
        if step == "balance" and start is not None and not self.balance_size_given:
            return replace(config, image_size=self.steps[start].image_size)
        return config

    def digest(self, **resolved: Any) -> str:
        """A short hash of every resolved setting (tags the registered model version), with what
        was only resolved at run time (``resolved``: the balance step's start and its config)."""
        settings = {"plan": asdict(self), **{k: v for k, v in resolved.items() if v is not None}}
        text = json.dumps(settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def _section(spec: Mapping, key: str, where: str) -> dict:
    value = spec.get(key) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}.{key}: expected a mapping, got {value!r}")
    return dict(value)


def member_plan(params: Mapping[str, Any], name: str) -> MemberPlan:
    """Resolve member ``name`` of ``params`` (see the module doc for the fall-backs)."""
    members = params.get("members") or {}
    if name not in members:
        raise ConfigError(f"members: no member {name!r}; known: {sorted(members)}")
    where = f"members.{name}"
    spec = members[name] or {}
    if not isinstance(spec, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {spec!r}")
    unknown = sorted(set(spec) - set(MEMBER_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; known: {list(MEMBER_KEYS)}")
    if "round" not in spec:
        raise ConfigError(f"{where}.round: missing (the cleaning round whose output it trains on)")
    round_number = spec["round"]
    seed = spec.get("seed", params.get("seed", 0))
    for key, value in (("round", round_number), ("seed", seed)):
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"{where}.{key}: expected an integer, got {value!r}")

    model = {**(params.get("model") or {}), **_section(spec, "model", where)}
    augment = {**(params.get("augment") or {}), **_section(spec, "augment", where)}
    own_train = _section(spec, "train", where)
    full = {**(params.get("train") or {}), **own_train}
    hires = {**full, **(params.get("hires") or {}), **_section(spec, "hires", where)}
    balance_spec = _section(spec, "balance", where)
    method = balance_spec.pop("method", "crt")
    check_choice(f"{where}.balance.method", method, BALANCE_METHODS)
    subset = dict(params.get("balanced_subset") or {})
    per_class = balance_spec.pop("per_class", subset.get("per_class", 30))
    finetune = balance_spec.pop("finetune", subset.get("finetune", "classifier"))
    check_choice(f"{where}.balance.finetune", finetune, ("classifier", "all"))
    if not isinstance(per_class, int) or per_class < 1:
        raise ConfigError(f"{where}.balance.per_class: a whole number of at least 1, got "
                          f"{per_class!r}")  # fmt: skip
    balance = {**full, "image_size": hires["image_size"], **(params.get("crt") or {}),
               **balance_spec}  # fmt: skip
    steps = {
        "full": from_mapping(TrainConfig, full, f"{where}.train"),
        "hires": from_mapping(TrainConfig, hires, f"{where}.hires"),
        "balance": from_mapping(TrainConfig, balance, f"{where}.balance"),
    }
    return MemberPlan(
        name=name, round=round_number, seed=seed,
        model=from_mapping(ModelConfig, model, f"{where}.model"),
        augment=AugmentConfig.from_params(augment), steps=steps,
        balance=method, per_class=per_class, finetune=finetune,
        balance_size_given="image_size" in {**(params.get("crt") or {}), **balance_spec},
    )  # fmt: skip


def check_members(params: Mapping[str, Any]) -> None:
    """Every member resolves, and trains on a round that exists and writes where dvc.yaml
    reads it. Raises ``ConfigError`` naming the member and key."""
    members = params.get("members")
    if members is None:
        return
    if not isinstance(members, Mapping):
        raise ConfigError(
            f"members: expected a mapping of name -> spec (DVC tracks members.<name>), got "
            f"{type(members).__name__}"
        )
    rounds = {
        entry.get("round"): str(entry.get("output", "")).rstrip("/")
        for entry in (params.get("cleaning") or {}).get("rounds") or []
    }
    for name in members:
        if not str(name).replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"members.{name}: a member name may hold letters, digits, _ and -")
        plan = member_plan(params, name)
        if plan.round not in rounds:
            raise ConfigError(
                f"members.{name}.round: {plan.round} is not a cleaning round "
                f"(cleaning.rounds has {sorted(rounds) or 'none'})"
            )
        if rounds[plan.round] != round_output(plan.round):
            raise ConfigError(
                f"members.{name}.round: dvc.yaml reads {round_output(plan.round)}, but "
                f"cleaning.rounds writes round {plan.round} to {rounds[plan.round]}"
            )
