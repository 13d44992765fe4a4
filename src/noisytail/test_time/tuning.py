"""Optuna studies over the test-time settings, on validation only; every trial an MLflow run.

Three studies, each minimising validation mean class error on cached predictions (no forward
pass inside a trial): (1) tau per member (seeded TPE; "as trained" is a candidate), (2) the TTA
scale and mode per member among the cached ones (exhaustive: a handful of combinations), (3) the
members' ensemble weights on the simplex (seeded TPE over unnormalised weights, normalised in
the objective, starting from equal weights). Each study's best is then held to the keep rule:
it replaces the plain value (no tau, the centre view, equal weights) only when it wins on val by
more than ``tuning.keep_z`` standard errors (``Choice``): the lowest of many trials on a
thousand images is lower partly by luck. Studies live in persistent storage (default
``sqlite:///optuna.db``, or any RDB URL so that several workers share one); a study that
already holds its trials is not re-run, a partial one is completed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna

from noisytail.config.test_time import TuningConfig
from noisytail.metrics import classification_report
from noisytail.test_time.cache import TTA_MODES, tta_top_k
from noisytail.test_time.ensemble import ensemble_top_k
from noisytail.test_time.selection import Comparison, compare_on_val


def mean_class_error(top1: np.ndarray, labels: np.ndarray, num_classes: int) -> float:
    return classification_report(top1, labels, num_classes)["mean_class_error"]


TrialLogger = Callable[[str, int, Mapping[str, float], float], None]


def run_study(
    name: str,
    objective: Callable[[optuna.Trial], float],
    trials: int,
    config: TuningConfig,
    sampler: optuna.samplers.BaseSampler | None = None,
    log_trial: TrialLogger | None = None,
    first_trial: Mapping[str, float] | None = None,
) -> optuna.Study:
    """Create (or load) study ``name`` in ``config.storage`` and run it to ``trials`` finished
    trials; then ``log_trial(study, number, params, value)`` for each finished trial (those of
    an earlier run of the study too, so that this run's record is whole)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    study = optuna.create_study(
        study_name=name, storage=config.storage, direction="minimize", load_if_exists=True,
        sampler=sampler or optuna.samplers.TPESampler(seed=config.seed),
    )  # fmt: skip
    if first_trial is not None and not study.trials:  # a known-good start for the sampler
        study.enqueue_trial(dict(first_trial))
    complete = optuna.trial.TrialState.COMPLETE
    done = [t for t in study.trials if t.state == complete]
    if len(done) < trials:
        study.optimize(objective, n_trials=trials - len(done))
    for trial in study.trials:
        if trial.state == complete and log_trial is not None:
            log_trial(name, trial.number, trial.params, trial.value)
    return study


@dataclass(frozen=True)
class Choice:
    """What a study settled on: the tuned value, the plain one it had to beat, and whether it
    did by more than the validation set's noise (``selection.compare_on_val``)."""

    tuned: Any
    plain: Any
    comparison: Comparison

    @property
    def value(self) -> Any:
        return self.tuned if self.comparison.candidate_wins else self.plain

    def record(self) -> dict:
        def plain_data(value: Any) -> Any:  # tuples as lists: tuned.yaml is safe YAML
            return list(value) if isinstance(value, tuple) else value

        return {"tuned": plain_data(self.tuned), "plain": plain_data(self.plain),
                "kept": self.comparison.candidate_wins,
                "val_difference": round(self.comparison.difference, 3),
                "standard_error": round(self.comparison.standard_error, 3)}  # fmt: skip


def decide(tuned: Any, plain: Any, tuned_top1: np.ndarray, plain_top1: np.ndarray,
           labels: np.ndarray, num_classes: int, config: TuningConfig) -> Choice:  # fmt: skip
    """The keep rule: ``tuned`` replaces ``plain`` only when it wins on val by more than
    ``config.keep_z`` standard errors of the paired difference."""
    comparison = compare_on_val(tuned_top1, plain_top1, labels, num_classes, config.keep_z)
    return Choice(tuned, plain, comparison)


def tune_tau(
    name: str,
    cache: Mapping[str, np.ndarray],
    num_classes: int,
    config: TuningConfig,
    log_trial: TrialLogger | None = None,
) -> Choice:
    """tau of one member on the centre view at scale 1: "as trained" (bias kept, no tau) is a
    candidate of the study (its first trial) and the plain value the tuned tau must beat."""

    def top1(tau: float | None) -> np.ndarray:
        return tta_top_k(cache, tau, "none")[0][:, 0]

    def objective(trial: optuna.Trial) -> float:
        use = trial.suggest_categorical("use_tau", [False, True])
        tau = trial.suggest_float("tau", 0.0, config.tau_max) if use else None
        return mean_class_error(top1(tau), cache["label"], num_classes)

    study = run_study(name, objective, config.tau_trials, config, log_trial=log_trial,
                      first_trial={"use_tau": False})  # fmt: skip
    best = study.best_params
    tuned = round(float(best["tau"]), 4) if best["use_tau"] else None
    return decide(tuned, None, top1(tuned), top1(None), cache["label"], num_classes, config)


def tune_tta(
    name: str,
    caches: Mapping[str, Mapping[str, np.ndarray]],
    tau: float | None,
    num_classes: int,
    config: TuningConfig,
    log_trial: TrialLogger | None = None,
) -> Choice:
    """The (scale, mode) of one member among its cached scales (``caches``: scale -> cache), to
    beat the plain view (the first scale's centre crop)."""
    scales = list(caches)
    combinations = len(scales) * len(TTA_MODES)

    def top1(scale: str, mode: str) -> np.ndarray:
        return tta_top_k(caches[scale], tau, mode)[0][:, 0]

    def objective(trial: optuna.Trial) -> float:
        scale = trial.suggest_categorical("scale", scales)
        mode = trial.suggest_categorical("mode", list(TTA_MODES))
        return mean_class_error(top1(scale, mode), caches[scale]["label"], num_classes)

    with warnings.catch_warnings():  # "experimental" since optuna 3.1; exhaustive is the point
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.BruteForceSampler(seed=config.seed)
    best = run_study(name, objective, combinations, config, sampler, log_trial).best_params
    tuned, plain = (best["scale"], best["mode"]), (scales[0], "none")
    labels = caches[scales[0]]["label"]
    return decide(tuned, plain, top1(*tuned), top1(*plain), labels, num_classes, config)


def tune_weights(
    name: str,
    members: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    num_classes: int,
    config: TuningConfig,
    log_trial: TrialLogger | None = None,
) -> Choice:
    """Ensemble weights on the simplex (each member's top lists as tuned, validation), to beat
    equal weights (the study's first trial)."""

    def weights_of(params: Mapping[str, float]) -> list[float]:
        raw = np.array([params[f"w{m}"] for m in range(len(members))])
        return (raw / raw.sum()).tolist() if raw.sum() > 0 else [1 / len(members)] * len(members)

    def top1(weights: list[float]) -> np.ndarray:
        return ensemble_top_k(members, weights, k=1, top=config.top)[0][:, 0]

    def objective(trial: optuna.Trial) -> float:
        raw = {f"w{m}": trial.suggest_float(f"w{m}", 0.0, 1.0) for m in range(len(members))}
        return mean_class_error(top1(weights_of(raw)), labels, num_classes)

    equal = {f"w{m}": 1.0 for m in range(len(members))}
    study = run_study(name, objective, config.weight_trials, config, log_trial=log_trial,
                      first_trial=equal)  # fmt: skip
    tuned, plain = weights_of(study.best_params), weights_of(equal)
    return decide(tuned, plain, top1(tuned), top1(plain), labels, num_classes, config)
