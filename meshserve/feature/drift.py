"""Feature drift: how far the feature vectors a model is served have moved from the ones it was trained on.

A `ReferenceProfile` holds, per model and per feature of its registry vector, bin cut points taken from the
training data and the share of training rows in each bin. A `DriftMonitor` keeps the last `window` served rows
per model as bin indices, compares their shares with the reference by Population Stability Index (PSI), and
logs once per feature when its PSI crosses the threshold.

Rule of thumb for PSI: below 0.1 no shift, 0.1-0.2 a moderate one, above 0.2 a shift worth a look.

Binning: a value `v` falls in bin `searchsorted(edges, v, side="left")`, so the bins of a feature with cut points
`e0 < e1 < ... < em` are (-inf, e0], (e0, e1], ..., (em, +inf). The outer bins are open, so values outside the
training range still land somewhere (NaN lands in the last bin).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshserve.feature.registry import FeatureRegistry

__all__ = [
    "DEFAULT_PROFILE",
    "PROPORTION_FLOOR",
    "BinKind",
    "DriftCrossing",
    "DriftMonitor",
    "FeatureProfile",
    "ModelProfile",
    "ReferenceProfile",
    "build_profile",
    "load_profile",
    "psi",
]

logger = logging.getLogger("meshserve.feature.drift")

DEFAULT_PROFILE = "reference_profile.json"  # in meshserve/defaults, written by meshserve.samples.build
PROPORTION_FLOOR = 1e-4  # an empty bin counts as this share, so PSI stays finite
QUANTILE_BINS = 10
MAX_CATEGORIES = 12  # an integer feature with at most this many distinct training values gets a bin per value
DECIMALS = 6  # shares are rounded to this many decimals, so the profile file is reproducible


class BinKind(StrEnum):
    QUANTILE = "quantile"  # cut at the training data's deciles (duplicates merged)
    CATEGORICAL = "categorical"  # one bin per distinct training value, cut half-way between neighbours


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FeatureProfile(_Strict):
    kind: BinKind
    edges: list[float]  # strictly increasing cut points; len(edges) + 1 bins
    expected: list[float] = Field(min_length=1)  # share of the training rows per bin, floored

    @model_validator(mode="after")
    def _consistent(self) -> FeatureProfile:
        if len(self.expected) != len(self.edges) + 1:
            raise ValueError(f"{len(self.edges)} cut points need {len(self.edges) + 1} shares")
        if any(b <= a for a, b in zip(self.edges, self.edges[1:], strict=False)):
            raise ValueError("cut points must be strictly increasing")
        if any(not p > 0 for p in self.expected):
            raise ValueError("every expected share must be positive")
        return self


class ModelProfile(_Strict):
    vector: list[str] = Field(min_length=1)  # the registry vector's order: the columns `observe` takes
    samples: int = Field(gt=0)  # training rows the shares were counted from
    features: dict[str, FeatureProfile]

    @model_validator(mode="after")
    def _covers_vector(self) -> ModelProfile:
        if sorted(self.features) != sorted(self.vector):
            raise ValueError(f"profile has features {sorted(self.features)}, vector is {self.vector}")
        return self


class ReferenceProfile(_Strict):
    models: dict[str, ModelProfile]

    def to_json_bytes(self) -> bytes:
        """Canonical JSON: sorted keys, two-space indent, trailing newline; the same profile gives the same bytes."""
        return (json.dumps(self.model_dump(mode="json"), sort_keys=True, indent=2) + "\n").encode()

    def check_registry(self, registry: FeatureRegistry) -> None:
        """Raise ValueError unless every profiled model's vector matches the registry's."""
        for name, model in self.models.items():
            if name not in registry.models:
                raise ValueError(f"profile model {name!r} is not in the registry")
            if model.vector != registry.models[name].vector:
                raise ValueError(
                    f"profile model {name!r} has vector {model.vector}, registry {registry.models[name].vector}"
                )


def _shares(bins: np.ndarray, n_bins: int) -> list[float]:
    counts = np.bincount(bins, minlength=n_bins)
    shares = np.maximum(np.round(counts / counts.sum(), DECIMALS), PROPORTION_FLOOR)
    return [float(p) for p in shares]


def _feature_profile(column: np.ndarray, integer: bool) -> FeatureProfile:
    values = np.unique(column)
    if integer and len(values) <= MAX_CATEGORIES:
        kind, edges = BinKind.CATEGORICAL, (values[:-1] + values[1:]) / 2.0
    else:
        # inverted_cdf picks observed values (no interpolation), so integer features keep integer cut points.
        quantiles = np.arange(1, QUANTILE_BINS) / QUANTILE_BINS
        kind, edges = BinKind.QUANTILE, np.quantile(column, quantiles, method="inverted_cdf")
    # Models take FP32: write each cut point as the shortest decimal of its float32 value (30.97, not
    # 30.969999313...), so a served value equal to a cut point lands in the same bin as in training.
    edges = np.unique([float(str(np.float32(e))) for e in edges])
    edges = edges[edges < values[-1]]  # a cut at the maximum would leave the last bin empty
    bins = np.searchsorted(edges, column, side="left")
    return FeatureProfile(kind=kind, edges=[float(e) for e in edges], expected=_shares(bins, len(edges) + 1))


def build_profile(registry: FeatureRegistry, model: str, matrix: np.ndarray) -> ReferenceProfile:
    """Profile `model` from its training matrix ([n, len(vector)], columns in the registry vector's order)."""
    vector = registry.models[model].vector
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[1] != len(vector) or matrix.shape[0] == 0:
        raise ValueError(f"expected a non-empty [n, {len(vector)}] matrix, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError("the training matrix holds NaN or infinite values")
    features = {
        name: _feature_profile(matrix[:, j], registry.features[name].dtype.startswith("INT"))
        for j, name in enumerate(vector)
    }
    return ReferenceProfile(
        models={model: ModelProfile(vector=list(vector), samples=matrix.shape[0], features=features)}
    )


def load_profile(path: Path | None = None) -> ReferenceProfile:
    """Load a profile file; without a path, the embedded default built with the sample models."""
    text = (
        path.read_text()
        if path
        else resources.files("meshserve.defaults").joinpath(DEFAULT_PROFILE).read_text()
    )
    return ReferenceProfile.model_validate_json(text)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population Stability Index of two share vectors over the same bins: sum((a - e) * ln(a / e)).

    Shares below PROPORTION_FLOOR count as the floor, so an empty bin adds a large but finite term.
    """
    e = np.maximum(np.asarray(expected, dtype=np.float64), PROPORTION_FLOOR)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PROPORTION_FLOOR)
    if e.shape != a.shape or e.ndim != 1:
        raise ValueError(f"share vectors must be 1-D and the same length, got {e.shape} and {a.shape}")
    return float(np.sum((a - e) * np.log(a / e)))


class DriftCrossing(NamedTuple):
    model: str
    feature: str
    psi: float


@dataclass
class _Window:
    """The last `window` rows of one model, kept as flat bin indices, and the per-bin counts they add up to."""

    features: list[str]
    edges: list[np.ndarray]
    expected: list[np.ndarray]
    offsets: np.ndarray  # where each feature's bins start in `counts`
    ring: np.ndarray  # [window, k] flat bin indices
    counts: np.ndarray  # [total bins] rows per bin over the filled part of the ring
    pos: int = 0
    filled: int = 0

    @classmethod
    def create(cls, profile: ModelProfile, window: int) -> _Window:
        feats = [profile.features[name] for name in profile.vector]
        sizes = np.array([len(f.expected) for f in feats])
        return cls(
            features=list(profile.vector),
            edges=[np.asarray(f.edges, dtype=np.float64) for f in feats],
            expected=[np.asarray(f.expected, dtype=np.float64) for f in feats],
            offsets=np.concatenate([[0], np.cumsum(sizes)[:-1]]),
            ring=np.zeros((window, len(feats)), dtype=np.int32),
            counts=np.zeros(int(sizes.sum()), dtype=np.int64),
        )

    def add(self, rows: np.ndarray) -> None:
        window, total = len(self.ring), len(self.counts)
        rows = rows[-window:]  # older rows of a batch larger than the window would be evicted at once
        n = len(rows)
        bins = np.empty(rows.shape, dtype=np.int32)
        for j, edges in enumerate(self.edges):
            bins[:, j] = np.searchsorted(edges, rows[:, j], side="left")
        bins += self.offsets.astype(np.int32)
        slots = (self.pos + np.arange(n)) % window
        if self.filled == window:
            evicted = self.ring[slots]
        else:  # the ring fills from slot 0, so the occupied slots are those below `filled`
            evicted = self.ring[slots[slots < self.filled]]
        if len(evicted):
            self.counts -= np.bincount(evicted.ravel(), minlength=total)
        self.counts += np.bincount(bins.ravel(), minlength=total)
        self.ring[slots] = bins
        self.pos = (self.pos + n) % window
        self.filled = min(self.filled + n, window)

    def scores(self) -> dict[str, float]:
        out = {}
        for j, name in enumerate(self.features):
            start = self.offsets[j]
            actual = self.counts[start : start + len(self.expected[j])] / self.filled
            out[name] = psi(self.expected[j], actual)
        return out


class DriftMonitor:
    """PSI of each model's recent feature vectors against a reference profile, with one log per crossing.

    `observe` is meant for the request path: it only checks the rows' width and keeps them; they are folded into
    the window in one vectorised pass when the window is next read, or once `window` rows are pending, so memory
    stays bounded by about twice `window` rows per model. Not thread-safe: call it from one thread (the gateway's
    event loop).
    A feature is reported once when its PSI reaches `threshold`, and re-armed only when its PSI falls below
    `rearm_below` (by default 0.8 x threshold), so a PSI hovering at the threshold does not repeat the warning.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        window: int = 2000,
        threshold: float = 0.2,
        min_samples: int = 200,
        clock: Callable[[], float] = time.monotonic,
        *,
        rearm_below: float | None = None,
    ) -> None:
        if window < 1 or not 1 <= min_samples <= window:
            raise ValueError(
                f"need 1 <= min_samples <= window, got min_samples={min_samples} window={window}"
            )
        if threshold <= 0:
            raise ValueError(f"threshold must be positive, got {threshold}")
        rearm = 0.8 * threshold if rearm_below is None else rearm_below
        if not 0 <= rearm <= threshold:
            raise ValueError(f"rearm_below must lie in [0, threshold], got {rearm}")
        self.profile, self.window, self.threshold, self.min_samples = profile, window, threshold, min_samples
        self.rearm_below = rearm
        self._clock = clock
        self._windows = {name: _Window.create(model, window) for name, model in profile.models.items()}
        self._pending: dict[str, list[np.ndarray]] = {name: [] for name in profile.models}
        self._pending_rows = dict.fromkeys(profile.models, 0)
        self._drifting: dict[str, dict[str, float]] = {name: {} for name in profile.models}

    @property
    def models(self) -> list[str]:
        """The models this monitor has a reference for; `observe` ignores any other."""
        return list(self._windows)

    def observe(self, model: str, rows: np.ndarray) -> None:
        """Record served feature vectors ([n, k] or one [k] row, the model's vector order).

        A model without a reference profile is ignored; a row of the wrong width raises ValueError.
        """
        win = self._windows.get(model)
        if win is None:
            return
        rows = np.asarray(rows)
        if rows.ndim == 1:
            rows = rows[None, :]
        if rows.ndim != 2 or rows.shape[1] != len(win.features):
            raise ValueError(f"model {model!r} takes rows of {len(win.features)} features, got {rows.shape}")
        if len(rows):
            self._pending[model].append(rows)
            self._pending_rows[model] += len(rows)
            if self._pending_rows[model] >= self.window:
                self._fold(model)

    def _fold(self, model: str) -> _Window:
        """The model's window with every pending row added (one pass for many requests' rows)."""
        win = self._windows[model]
        if self._pending[model]:
            win.add(np.concatenate(self._pending[model]).astype(np.float64, copy=False))
            self._pending[model] = []
            self._pending_rows[model] = 0
        return win

    def samples(self, model: str) -> int:
        """Rows in the model's window now (at most `window`)."""
        return self._fold(model).filled if model in self._windows else 0

    def scores(self, model: str) -> dict[str, float]:
        """PSI per feature in vector order; empty until `min_samples` rows were observed."""
        win = self._fold(model) if model in self._windows else None
        if win is None or win.filled < self.min_samples:
            return {}
        return win.scores()

    def drifting(self, model: str) -> dict[str, float]:
        """Features reported as drifted and not yet re-armed, with the clock reading of their crossing."""
        return dict(self._drifting.get(model, {}))

    def check(self) -> list[DriftCrossing]:
        """Score every model; log a warning for each feature that crossed the threshold since the last check.

        Returns those crossings. A drifted feature is logged again only after its PSI fell below
        `rearm_below` (logged at INFO) and then crossed once more.
        """
        crossed = []
        for model in self._windows:
            drifting = self._drifting[model]
            for feature, value in self.scores(model).items():
                if feature not in drifting and value >= self.threshold:
                    drifting[feature] = self._clock()
                    crossed.append(DriftCrossing(model, feature, value))
                    logger.warning(
                        "feature drift: %s of model %s has PSI %.3f >= %.3f",
                        feature,
                        model,
                        value,
                        self.threshold,
                        extra={"model": model, "feature": feature, "psi": value},
                    )
                elif feature in drifting and value < self.rearm_below:
                    del drifting[feature]
                    logger.info(
                        "feature drift cleared: %s of model %s has PSI %.3f",
                        feature,
                        model,
                        value,
                        extra={"model": model, "feature": feature, "psi": value},
                    )
        return crossed
