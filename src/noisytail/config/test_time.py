"""``test_time:`` and ``tuning:`` in params.yaml: what is predicted once, and how it is tuned."""

from __future__ import annotations

from dataclasses import dataclass

from noisytail.config import ConfigError, check_range


@dataclass(frozen=True)
class TTAConfig:
    """``test_time:`` in params.yaml: what is predicted once for the studies to choose from."""

    scales: tuple[float, ...] = (1.0, 1.5)  # enlargement over the evaluation view
    top_k: int = 20  # bias-free logits cached per view (>= the ensemble's 10)
    batch_size: int = 64  # images per batch (x 10 views)

    def __post_init__(self) -> None:
        if not self.scales:
            raise ConfigError("test_time.scales: at least one scale (1.0: the evaluation view)")
        if self.scales[0] != 1.0:  # the classifier as trained, the incumbent of every study
            raise ConfigError(f"test_time.scales must start with 1.0, got {list(self.scales)}")
        for scale in self.scales:
            check_range("test_time.scales", scale, 1.0)
        check_range("test_time.top_k", self.top_k, 1)
        check_range("test_time.batch_size", self.batch_size, 1)


@dataclass(frozen=True)
class TuningConfig:
    """``tuning:`` in params.yaml."""

    storage: str = "sqlite:///optuna.db"
    seed: int = 0
    tau_trials: int = 20
    tau_max: float = 1.5
    weight_trials: int = 40
    top: int = 10  # each member's top-`top` enters the ensemble
    keep_z: float = 2.0  # a tuned value is kept when it beats the plain one on val by this many
    #                      standard errors of the paired difference (test_time.selection)

    def __post_init__(self) -> None:
        for name in ("tau_trials", "weight_trials", "top"):
            check_range(f"tuning.{name}", getattr(self, name), 1)
        check_range("tuning.tau_max", self.tau_max, 0)
        check_range("tuning.keep_z", self.keep_z, 0)
