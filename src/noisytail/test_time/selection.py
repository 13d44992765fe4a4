"""The rule that keeps a choice: a candidate replaces the incumbent only when it wins on
validation by more than the validation set's noise.

On 1,000 validation images two models that are equally good differ by a point or more of mean
class error by chance alone; a tuned value (tau, a TTA mode, ensemble weights, a cleaning
setting) picked as "lowest on val" then often loses on test. So the comparison is paired: both
are scored on the same samples, and the standard error of the difference of their mean class
errors is estimated from the per-sample differences within each class (mean class error is the
mean over classes of each class's error, so class ``c`` weighs each of its ``n_c`` samples by
``1 / (C n_c)``). The candidate wins when it is lower by more than ``z`` standard errors.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Z_DEFAULT = 2.0  # one comparison: about 2.3% of equally good candidates pass by chance
# (one-sided); the best of many trials, picked on the same val, passes more often: a floor


@dataclass(frozen=True)
class Comparison:
    """Candidate minus incumbent mean class error (points), its standard error, the verdict."""

    difference: float
    standard_error: float
    z: float

    @property
    def candidate_wins(self) -> bool:
        return self.difference < -self.z * self.standard_error

    def describe(self) -> str:
        verdict = "kept" if self.candidate_wins else "not kept"
        return (f"{self.difference:+.2f} points (standard error {self.standard_error:.2f}): "
                f"{verdict} (needs below {-self.z * self.standard_error:+.2f})")  # fmt: skip


def compare_on_val(
    candidate_pred: np.ndarray,
    incumbent_pred: np.ndarray,
    target: np.ndarray,
    num_classes: int,
    z: float = Z_DEFAULT,
) -> Comparison:
    """Paired comparison of two sets of top-1 predictions of the same samples."""
    target = np.asarray(target, dtype=np.int64)
    d = (np.asarray(candidate_pred) != target).astype(np.float64) - (
        np.asarray(incumbent_pred) != target
    )
    n = np.bincount(target, minlength=num_classes).astype(np.float64)
    present = n > 0
    classes = int(present.sum())
    if classes == 0:
        return Comparison(0.0, 0.0, z)
    sums = np.bincount(target, d, minlength=num_classes)
    squares = np.bincount(target, d * d, minlength=num_classes)
    mean = np.divide(sums, n, out=np.zeros_like(sums), where=present)
    difference = 100.0 * mean[present].mean()
    # within-class variance of the differences; a class with one sample has none to estimate
    # it from and takes its own squared difference (conservative: a win or a loss there counts
    # as fully uncertain), never a variance pooled from other classes, which is 0 when the
    # candidate changes only tail predictions
    spread = squares - n * mean**2
    variance = np.where(n > 1, spread / np.maximum(n - 1, 1), squares)
    standard_error = 100.0 / classes * float(np.sqrt((variance[present] / n[present]).sum()))
    return Comparison(float(difference), standard_error, z)
