"""Density estimators for the ``dose`` score, each stored as plain float64 arrays.

DoSE (Morningstar et al. 2021) scores an image by the density of its statistics
vector under densities fitted on held-out in-distribution data. The fitted
state must round-trip through ``calibration.npz`` without pickling, so every
estimator here is ``fit`` -> ``arrays()`` -> ``from_arrays`` with numpy only.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def _logsumexp(a: np.ndarray, axis: int) -> np.ndarray:
    peak = np.max(a, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    return np.squeeze(peak, axis=axis) + np.log(np.sum(np.exp(a - peak), axis=axis))


def _robust_scale(x: np.ndarray) -> np.ndarray:
    """Per-column spread, ``min(std, IQR/1.349)`` as in Silverman's rule, never zero."""
    std = x.std(axis=0, ddof=1) if len(x) > 1 else np.ones(x.shape[1])
    q75, q25 = np.percentile(x, [75, 25], axis=0)
    iqr = (q75 - q25) / 1.349
    scale = np.where(iqr > 0, np.minimum(std, iqr), std)
    return np.where(scale > 0, scale, 1.0)


class ProductKDE:
    """One Gaussian KDE per feature, summed in log space (the DoSE paper's naive-Bayes density).

    Silverman's bandwidth per feature. Far from the data the log density falls
    quadratically instead of underflowing, so every image keeps a finite,
    ordered score.
    """

    kind = "kde"

    def __init__(self, points: np.ndarray, bandwidth: np.ndarray) -> None:
        self.points = np.asarray(points, dtype=np.float64)
        self.bandwidth = np.asarray(bandwidth, dtype=np.float64)

    @property
    def dims(self) -> int:
        return self.points.shape[1]

    @classmethod
    def fit(cls, x: np.ndarray) -> ProductKDE:
        x = np.asarray(x, dtype=np.float64)
        bandwidth = 0.9 * _robust_scale(x) * len(x) ** (-1 / 5)
        return cls(x, bandwidth)

    def log_density(self, x: np.ndarray, chunk: int = 512) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        n = len(self.points)
        const = -np.log(n) - np.log(self.bandwidth) - 0.5 * np.log(2 * np.pi)  # [F]
        out = np.empty(len(x))
        for start in range(0, len(x), chunk):
            block = x[start : start + chunk]
            z = (block[:, None, :] - self.points[None, :, :]) / self.bandwidth  # [b, n, F]
            per_feature = _logsumexp(-0.5 * z * z, axis=1) + const  # [b, F]
            out[start : start + chunk] = per_feature.sum(axis=1)
        return out

    def arrays(self) -> dict[str, np.ndarray]:
        return {"points": self.points, "bandwidth": self.bandwidth}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ProductKDE:
        return cls(arrays["points"], arrays["bandwidth"])


class GaussianDensity:
    """A full-covariance Gaussian: catches statistics that are each typical but not together."""

    kind = "gaussian"

    def __init__(self, mean: np.ndarray, precision_cholesky: np.ndarray, log_norm: float) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.precision_cholesky = np.asarray(precision_cholesky, dtype=np.float64)
        self.log_norm = float(log_norm)

    @property
    def dims(self) -> int:
        return self.mean.shape[0]

    @classmethod
    def fit(cls, x: np.ndarray, ridge: float = 1e-6) -> GaussianDensity:
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(axis=0)
        cov = np.atleast_2d(np.cov(x, rowvar=False))
        cov = cov + ridge * np.mean(np.diag(cov)) * np.eye(len(cov))
        chol = np.linalg.cholesky(np.linalg.inv(cov))  # precision = L L^T
        log_norm = float(np.sum(np.log(np.diag(chol))) - 0.5 * len(mean) * np.log(2 * np.pi))
        return cls(mean, chol, log_norm)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        y = (np.asarray(x, dtype=np.float64) - self.mean) @ self.precision_cholesky
        return self.log_norm - 0.5 * np.sum(y * y, axis=1)

    def arrays(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "precision_cholesky": self.precision_cholesky, "log_norm": np.array(self.log_norm)}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> GaussianDensity:
        return cls(arrays["mean"], arrays["precision_cholesky"], float(arrays["log_norm"]))


class GaussianMixture:
    """A mixture of full-covariance Gaussians on standardized features, fitted by EM.

    In-distribution statistics are multi-modal (sandals and coats sit far apart
    in complexity and likelihood); a mixture follows those modes where a single
    Gaussian would spread its mass between them. Deterministic: k-means++ start
    from a fixed seed, a fixed number of EM steps at most.
    """

    kind = "gmm"

    def __init__(self, center, scale, weights, means, precision_cholesky) -> None:
        self.center = np.asarray(center, dtype=np.float64)
        self.scale = np.asarray(scale, dtype=np.float64)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.means = np.asarray(means, dtype=np.float64)
        self.precision_cholesky = np.asarray(precision_cholesky, dtype=np.float64)

    @property
    def dims(self) -> int:
        return self.means.shape[1]

    @staticmethod
    def _component_log_densities(z, means, precision_cholesky) -> np.ndarray:
        """``log N(z_n; mean_k, cov_k)`` for every image and component at once.

        One einsum over all components instead of a Python loop: the service calls
        this per request, where numpy's per-call overhead, not arithmetic, is the cost.
        """
        y = np.einsum("nkd,kde->nke", z[:, None, :] - means[None, :, :], precision_cholesky)
        log_det = np.log(np.diagonal(precision_cholesky, axis1=1, axis2=2)).sum(axis=1)
        return log_det - 0.5 * np.einsum("nke,nke->nk", y, y) - 0.5 * z.shape[1] * np.log(2 * np.pi)

    @staticmethod
    def _precision_cholesky(cov: np.ndarray) -> np.ndarray:
        return np.linalg.cholesky(np.linalg.inv(cov))

    @classmethod
    def fit(cls, x: np.ndarray, components: int = 8, seed: int = 0, steps: int = 300, reg: float = 1e-3):
        x = np.asarray(x, dtype=np.float64)
        center, scale = x.mean(axis=0), _robust_scale(x)
        z = (x - center) / scale
        n, f = z.shape
        k = max(1, min(components, n // (5 * (f + 1))))
        rng = np.random.default_rng(seed)
        means = [z[rng.integers(n)]]
        for _ in range(k - 1):  # k-means++ seeding
            d2 = np.min(((z[:, None, :] - np.array(means)[None]) ** 2).sum(-1), axis=1)
            means.append(z[rng.choice(n, p=d2 / d2.sum())] if d2.sum() > 0 else z[rng.integers(n)])
        means = np.array(means)
        chols = np.array([np.eye(f)] * k)
        weights = np.full(k, 1.0 / k)
        previous = -np.inf
        for _ in range(steps):
            log_p = cls._component_log_densities(z, means, chols) + np.log(weights)
            total = _logsumexp(log_p, axis=1)
            resp = np.exp(log_p - total[:, None])
            nk = resp.sum(axis=0) + 1e-10
            weights, means = nk / n, (resp.T @ z) / nk[:, None]
            for j in range(k):
                d = z - means[j]
                chols[j] = cls._precision_cholesky((resp[:, j, None] * d).T @ d / nk[j] + reg * np.eye(f))
            if total.mean() - previous < 1e-7:
                break
            previous = total.mean()
        return cls(center, scale, weights, means, chols)

    def log_density(self, x: np.ndarray) -> np.ndarray:
        z = (np.asarray(x, dtype=np.float64) - self.center) / self.scale
        log_p = self._component_log_densities(z, self.means, self.precision_cholesky) + np.log(self.weights)
        return _logsumexp(log_p, axis=1) - np.sum(np.log(self.scale))

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "center": self.center,
            "scale": self.scale,
            "weights": self.weights,
            "means": self.means,
            "precision_cholesky": self.precision_cholesky,
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> GaussianMixture:
        return cls(arrays["center"], arrays["scale"], arrays["weights"], arrays["means"], arrays["precision_cholesky"])


DENSITIES = {"kde": ProductKDE, "gaussian": GaussianDensity, "gmm": GaussianMixture}
DOSE_DENSITIES = tuple(DENSITIES)


def fit_density(kind: str, x: np.ndarray):
    if kind not in DENSITIES:
        raise ValueError(f"unknown dose density {kind!r}; choose one of {DOSE_DENSITIES}")
    return DENSITIES[kind].fit(x)


def density_from_arrays(kind: str, arrays: Mapping[str, np.ndarray]):
    return DENSITIES[kind].from_arrays(arrays)
