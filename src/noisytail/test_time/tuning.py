"""Optuna studies over the test-time settings, on validation only; every trial an MLflow run.

Three studies, each minimising validation mean class error on cached predictions (no forward
pass inside a trial): (1) tau per member (seeded TPE), (2) the TTA scale and mode per member
among the cached ones (exhaustive: a handful of combinations), (3) the members' ensemble weights
on the simplex (seeded TPE over unnormalised weights, normalised in the objective). Studies live
in persistent storage (default ``sqlite:///optuna.db``, or any RDB URL so that several workers
share one); a study that already holds its trials is not re-run, a partial one is completed.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import optuna

from noisytail.config.test_time import TuningConfig
from noisytail.metrics import classification_report
from noisytail.test_time.cache import TTA_MODES, tta_top_k
from noisytail.test_time.ensemble import ensemble_top_k


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


def tune_tau(
    name: str,
    cache: Mapping[str, np.ndarray],
    num_classes: int,
    config: TuningConfig,
    log_trial: TrialLogger | None = None,
) -> float:
    """The tau (0 .. tau_max) of one member: centre view at scale 1, validation error."""

    def objective(trial: optuna.Trial) -> float:
        index, _ = tta_top_k(cache, trial.suggest_float("tau", 0.0, config.tau_max), "none")
        return mean_class_error(index[:, 0], cache["label"], num_classes)

    study = run_study(name, objective, config.tau_trials, config, log_trial=log_trial)
    return study.best_params["tau"]


def tune_tta(
    name: str,
    caches: Mapping[str, Mapping[str, np.ndarray]],
    tau: float,
    num_classes: int,
    config: TuningConfig,
    log_trial: TrialLogger | None = None,
) -> tuple[str, str]:
    """The (scale, mode) of one member among its cached scales (``caches``: scale -> cache)."""
    scales = sorted(caches)
    combinations = len(scales) * len(TTA_MODES)

    def objective(trial: optuna.Trial) -> float:
        scale = trial.suggest_categorical("scale", scales)
        mode = trial.suggest_categorical("mode", list(TTA_MODES))
        index, _ = tta_top_k(caches[scale], tau, mode)
        return mean_class_error(index[:, 0], caches[scale]["label"], num_classes)

    with warnings.catch_warnings():  # "experimental" since optuna 3.1; exhaustive is the point
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.BruteForceSampler(seed=config.seed)
    best = run_study(name, objective, combinations, config, sampler, log_trial).best_params
    return best["scale"], best["mode"]


def tune_weights(
    name: str,
    members: Sequence[tuple[np.ndarray, np.ndarray]],
    labels: np.ndarray,
    num_classes: int,
    config: TuningConfig,
    log_trial: TrialLogger | None = None,
) -> list[float]:
    """Ensemble weights on the simplex (each member's top lists as tuned, validation)."""

    def weights_of(params: Mapping[str, float]) -> list[float]:
        raw = np.array([params[f"w{m}"] for m in range(len(members))])
        return (raw / raw.sum()).tolist() if raw.sum() > 0 else [1 / len(members)] * len(members)

    def objective(trial: optuna.Trial) -> float:
        raw = {f"w{m}": trial.suggest_float(f"w{m}", 0.0, 1.0) for m in range(len(members))}
        index, _ = ensemble_top_k(members, weights_of(raw), k=1, top=config.top)
        return mean_class_error(index[:, 0], labels, num_classes)

    equal = {f"w{m}": 1.0 for m in range(len(members))}  # the ensemble TPE must beat
    study = run_study(name, objective, config.weight_trials, config, log_trial=log_trial,
                      first_trial=equal)  # fmt: skip
    return weights_of(study.best_params)
