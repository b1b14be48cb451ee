"""Mutual information between two towers' outputs, the dependence measure of the paper's Table 1.

The paper compares how much the modality towers' final side outputs share about each item
(CROSSAN against independent towers) by their mutual information over the whole catalogue. The
outputs are multivariate, so no histogram estimate is usable; this module uses the k-nearest-
neighbour estimator of Kraskov, Stoegbauer and Grassberger (2004, Phys. Rev. E 69, 066138),
after standardising each variable and optionally reducing it with PCA, and names every one of
those choices in `MutualInformationEstimator.describe()` so a reported number can be reproduced.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

from crossan.zoo.core.errors import ConfigError

__all__ = ["MutualInformationEstimator", "gaussian_mutual_information", "pairwise_mutual_information"]

# Scale of the noise added to the standardised data so that duplicate rows (items with identical
# features, say) are not at distance 0 from each other, which the estimator cannot handle. The
# data have unit variance, so this moves no distance that matters.
TIE_BREAKING_JITTER = 1e-10


@dataclass(frozen=True)
class MutualInformationEstimator:
    """The KSG estimator (their estimator 1, max-norm) with its preprocessing.

    `neighbours` is the estimator's k: small k has less bias, larger k less variance (the
    authors recommend 2 to 4). `components` is the number of PCA dimensions each variable is
    reduced to after standardising, `None` for none: nearest-neighbour estimates degrade as the
    dimension grows, and a tower's output is usually wider than the directions it varies in.
    `max_samples` caps the number of rows, which are subsampled at random beyond it since the
    neighbour search costs more than linear time; `seed` fixes that subsample, the PCA solver and
    the tie-breaking jitter, so an estimate is deterministic.
    """

    neighbours: int = 3
    components: int | None = 8
    max_samples: int | None = 20000
    seed: int = 0

    def __post_init__(self) -> None:
        if not _is_int(self.neighbours) or self.neighbours < 1:
            raise ConfigError(f"neighbours must be an integer >= 1, got {self.neighbours!r}")
        if self.components is not None and (not _is_int(self.components) or self.components < 1):
            raise ConfigError(f"components must be None or an integer >= 1, got {self.components!r}")
        if self.max_samples is not None and (not _is_int(self.max_samples) or self.max_samples <= self.neighbours):
            raise ConfigError(
                f"max_samples must be None or an integer > neighbours ({self.neighbours}), got {self.max_samples!r}"
            )
        if not _is_int(self.seed) or not 0 <= self.seed < 2**32:
            raise ConfigError(f"seed must be an integer in [0, 2**32), got {self.seed!r}")

    def estimate(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> float:
        """Mutual information in nats between paired rows of `x` `[N, dx]` and `y` `[N, dy]`.

        A 1-D input is one variable per row. The estimate is returned as computed, not clamped:
        for independent variables it scatters around zero, so it can be slightly negative, and
        when the mutual information is large it falls short of it (by about 0.5 of 3.3 nats for
        four correlated Gaussian pairs and 4000 rows).
        """
        # sklearn and scipy take a while to import and only this analysis needs them.
        from scipy.special import digamma
        from sklearn.neighbors import KDTree

        first, second = _as_matrix(x, "x"), _as_matrix(y, "y")
        if len(first) != len(second):
            raise ValueError(f"x and y must have the same number of rows, got {len(first)} and {len(second)}")
        if len(first) <= self.neighbours:
            raise ValueError(f"need more rows than neighbours ({self.neighbours}), got {len(first)}")
        rng = np.random.default_rng(self.seed)
        if self.max_samples is not None and len(first) > self.max_samples:
            rows = np.sort(rng.choice(len(first), size=self.max_samples, replace=False))
            first, second = first[rows], second[rows]
        first, second = self._prepare(first), self._prepare(second)
        first = first + rng.normal(scale=TIE_BREAKING_JITTER, size=first.shape)
        second = second + rng.normal(scale=TIE_BREAKING_JITTER, size=second.shape)

        count = len(first)
        joint = np.hstack([first, second])
        # k + 1 neighbours because each point is its own nearest one.
        distances, _ = KDTree(joint, metric="chebyshev").query(joint, k=self.neighbours + 1)
        # The marginal counts are of points strictly closer than eps; query_radius counts
        # distances <= r, so r is the float just below eps, and the point itself is taken off.
        radius = np.nextafter(distances[:, -1], 0)
        first_counts = KDTree(first, metric="chebyshev").query_radius(first, radius, count_only=True) - 1
        second_counts = KDTree(second, metric="chebyshev").query_radius(second, radius, count_only=True) - 1
        return float(
            digamma(self.neighbours) + digamma(count) - np.mean(digamma(first_counts + 1) + digamma(second_counts + 1))
        )

    def describe(self) -> dict:
        """The estimator and its parameters, JSON-friendly, to store beside a reported value."""
        return {
            "estimator": "Kraskov-Stoegbauer-Grassberger (KSG-1), max-norm",
            "neighbours": self.neighbours,
            "standardised": True,
            "pca_components": self.components,
            "max_samples": self.max_samples,
            "seed": self.seed,
            "units": "nats",
        }

    def _prepare(self, values: np.ndarray) -> np.ndarray:
        """Standardised columns, reduced to `components` standardised PCA components when wider.

        Standardising makes the max-norm weigh every column alike, whatever its scale.
        """
        values = _standardise(values)
        if self.components is None or self.components >= values.shape[1]:
            return values
        if len(values) < self.components:
            raise ValueError(f"need at least as many rows as PCA components ({self.components}), got {len(values)}")
        from sklearn.decomposition import PCA

        reduced = PCA(n_components=self.components, random_state=self.seed).fit_transform(values)
        return _standardise(reduced)


def pairwise_mutual_information(
    outputs: Mapping[str, np.ndarray | torch.Tensor], estimator: MutualInformationEstimator
) -> list[dict]:
    """The estimate for every unordered pair of `outputs` (towers' outputs over the same rows),
    in the dict's order: `{"first": name, "second": name, "mutual_information": nats}` each."""
    return [
        {"first": first, "second": second, "mutual_information": estimator.estimate(outputs[first], outputs[second])}
        for first, second in itertools.combinations(outputs, 2)
    ]


def gaussian_mutual_information(correlation: float, dimensions: int) -> float:
    """Exact mutual information in nats between x and y made of `dimensions` independent pairs
    of unit Gaussians, each pair with the given correlation: the ground truth for tests."""
    if not -1 < correlation < 1:
        raise ConfigError(f"correlation must be in (-1, 1), got {correlation!r}")
    if not _is_int(dimensions) or dimensions < 1:
        raise ConfigError(f"dimensions must be an integer >= 1, got {dimensions!r}")
    return -dimensions / 2 * math.log(1 - correlation**2)


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _as_matrix(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """`values` as a float64 `[N, D]` array of finite numbers (a 1-D input becomes one column)."""
    if isinstance(values, torch.Tensor):
        # .float() first: numpy has no bfloat16.
        values = values.detach().cpu().float().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 1:
        array = array[:, None]
    if array.ndim != 2:
        raise ValueError(f"{name} must be 1-D or 2-D, got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return array


def _standardise(values: np.ndarray) -> np.ndarray:
    """Columns shifted to zero mean and scaled to unit variance; constant columns become zero."""
    # Constant is judged on the raw values: the rounding in a mean can leave a constant column
    # a tiny nonzero spread after centring.
    constant = np.ptp(values, axis=0) == 0
    centred = np.where(constant, 0.0, values - values.mean(axis=0))
    spread = centred.std(axis=0)
    return centred / np.where(constant, 1.0, spread)
