"""Optuna studies: seeded and repeatable, stored, resumed, and each finding what is there."""

import numpy as np
import optuna
import pytest

from noisytail.config.test_time import TuningConfig
from noisytail.test_time.tuning import tune_tau, tune_tta, tune_weights


def cache(n=300, classes=4, seed=0, norm=(1.0, 1.0, 3.0, 3.0)):
    """Logits favouring the head classes 2 and 3 through their norms: tau ~ 1 undoes it."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, classes, n)
    norm = np.asarray(norm, dtype=np.float32)
    clean = rng.normal(0, 1, (n, 10, classes)) + 2.0 * np.eye(classes)[label][:, None]
    logit = (clean * norm).astype(np.float32)
    index = np.argsort(-logit, axis=2)
    return {
        "sample_id": np.arange(n),
        "label": label,
        "norm": norm,
        "bias": np.zeros(classes, np.float32),
        "index": index.astype(np.int32),
        "logit": np.take_along_axis(logit, index, 2),
    }


def test_a_seeded_study_gives_the_same_best_params_twice(tmp_path):
    found = []
    for attempt in range(2):
        config = TuningConfig(storage=f"sqlite:///{tmp_path / f'{attempt}.db'}", tau_trials=12)
        found.append(tune_tau("tau", cache(), 4, config))
    assert found[0].tuned == found[1].tuned and found[0].value == found[1].value


def test_tau_undoes_the_norm_bias_and_trials_are_logged(tmp_path):
    config = TuningConfig(storage=f"sqlite:///{tmp_path / 'o.db'}", tau_trials=25)
    logged = []
    choice = tune_tau("tau", cache(), 4, config, lambda *a: logged.append(a))
    tau = choice.tuned
    assert 0.6 < tau < 1.4
    assert choice.comparison.candidate_wins and choice.value == tau  # far beyond the noise
    assert len(logged) == 25 and logged[0][0] == "tau"
    assert logged[0][2] == {"use_tau": False}  # the classifier as trained is the first candidate
    assert any("tau" in params for _, _, params, _ in logged)
    # stored: the study is there for optuna-dashboard / `optuna trials`, and not re-run
    study = optuna.load_study(study_name="tau", storage=config.storage)
    assert len(study.trials) == 25
    again = []  # run again: no new trial, and the stored ones are reported again
    assert tune_tau("tau", cache(), 4, config, lambda *a: again.append(a)).tuned == tau
    assert len(optuna.load_study(study_name="tau", storage=config.storage).trials) == 25
    assert again == logged


def test_tta_tries_every_scale_and_mode(tmp_path):
    config = TuningConfig(storage=f"sqlite:///{tmp_path / 'o.db'}")
    caches = {"1.0": cache(seed=1), "1.5": cache(seed=1)}  # the same samples at both scales
    logged = []
    choice = tune_tta("tta", caches, 1.0, 4, config, lambda *a: logged.append(a))
    scale, mode = choice.value
    assert sorted((p["scale"], p["mode"]) for _, _, p, _ in logged) == sorted(
        (s, m) for s in ("1.0", "1.5") for m in ("none", "flip", "ten_crop")
    )
    assert mode == "ten_crop" and choice.comparison.candidate_wins  # 10 noisy views beat one


def test_weights_find_the_informative_member(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 400)
    good = np.stack([labels] + [(labels + k) % 5 for k in range(1, 5)], 1).astype(np.int32)
    noise = rng.integers(0, 5, (400, 5)).astype(np.int32)
    prob = np.tile(np.array([0.5, 0.2, 0.15, 0.1, 0.05], np.float32), (400, 1))
    config = TuningConfig(storage=f"sqlite:///{tmp_path / 'o.db'}", weight_trials=30, top=5)
    choice = tune_weights("w", [(noise, prob), (good, prob)], labels, 5, config)
    weights = choice.value
    assert choice.comparison.candidate_wins
    assert weights[1] > weights[0] and abs(sum(weights) - 1) < 1e-9


def test_a_tuned_value_within_the_noise_is_not_kept(tmp_path):
    """Nearly equal class norms: tau moves a few predictions, and whatever tau the study likes
    best does not beat the classifier as trained by more than the noise, so it is not used."""
    config = TuningConfig(storage=f"sqlite:///{tmp_path / 'o.db'}", tau_trials=10)
    choice = tune_tau("tau", cache(norm=(1.0, 1.0, 1.2, 1.2)), 4, config)
    assert choice.tuned is not None and choice.comparison.difference < 0  # the study found a tau
    assert not choice.comparison.candidate_wins and choice.value is None
    assert choice.record()["kept"] is False and choice.record()["plain"] is None


def test_the_paired_comparison_on_val():
    from noisytail.test_time.selection import compare_on_val

    rng = np.random.default_rng(0)
    target = np.repeat(np.arange(10), 100)
    good = np.where(rng.random(1000) < 0.8, target, (target + 1) % 10)
    same = compare_on_val(good, good, target, 10)
    assert same.difference == 0 and same.standard_error == 0 and not same.candidate_wins
    better = np.where(rng.random(1000) < 0.5, target, good)  # half of the errors mended
    clear = compare_on_val(better, good, target, 10)
    assert clear.difference < -5 and clear.candidate_wins
    one = good.copy()
    one[np.flatnonzero(good != target)[0]] = target[np.flatnonzero(good != target)[0]]
    tiny = compare_on_val(one, good, target, 10)  # one sample mended: 0.1 points, within noise
    assert tiny.difference == pytest.approx(-0.1) and not tiny.candidate_wins


def test_one_image_classes_count_as_uncertain_not_as_certain():
    """Head classes that agree and a tail of one-image classes with 6 wins and 3 losses: the
    net gain (0.3 points) is within the noise of nine coin flips, not a certain win."""
    from noisytail.test_time.selection import compare_on_val

    head, tail = 10, 1000
    target = np.concatenate([np.repeat(np.arange(head), 100), np.arange(head, head + tail)])
    incumbent = target.copy()
    incumbent[head * 100 : head * 100 + 6] = 0  # six tail images wrong, mended by the candidate
    candidate = target.copy()
    candidate[head * 100 + 6 : head * 100 + 9] = 0  # three others the candidate gets wrong
    result = compare_on_val(candidate, incumbent, target, head + tail)
    assert result.difference == pytest.approx(-300 / (head + tail))
    assert result.standard_error == pytest.approx(300 / (head + tail))
    assert not result.candidate_wins
