"""The feature registry: entities, features and the model vectors they feed, declared once in YAML."""

from __future__ import annotations

from enum import StrEnum
from functools import cached_property
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from meshserve.defaults import load_yaml

__all__ = [
    "Entity",
    "Feature",
    "FeatureRegistry",
    "FeatureSource",
    "ModelVector",
    "allowed_range",
    "load_registry",
]


def _bound(value: float) -> str:
    return str(int(value)) if value.is_integer() else str(value)


def allowed_range(low: float | None, high: float | None) -> str:
    """The values a feature's bounds allow, naming only the bounds it has: `≥ 0`, `≤ 9`, `between 0 and 9`
    (a range message never shows a missing bound as None)."""
    if low is not None and high is not None:
        return f"between {_bound(low)} and {_bound(high)}"
    if low is not None:
        return f"≥ {_bound(low)}"
    if high is not None:
        return f"≤ {_bound(high)}"
    return "any number"


class FeatureSource(StrEnum):
    REQUEST = "request"  # sent by the caller with each Predict
    STORED = "stored"  # read from the online store by entity key


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Entity(_Strict):
    join_key: str


class Feature(_Strict):
    entity: str
    source: FeatureSource
    dtype: str = Field(pattern="^(FP32|FP64|INT32|INT64)$")
    default: float | None = None
    min: float | None = None
    max: float | None = None
    max_age_s: float | None = Field(default=None, gt=0)

    @property
    def integral(self) -> bool:
        """Whether values must be whole numbers (an INT feature given 3.5 is a caller's mistake, not a 3)."""
        return self.dtype.startswith("INT")

    def out_of_range(self, value: float) -> bool:
        return (self.min is not None and value < self.min) or (self.max is not None and value > self.max)

    @property
    def allowed_range(self) -> str:
        return allowed_range(self.min, self.max)


class ModelVector(_Strict):
    entity: str
    input: str
    output: str
    vector: list[str] = Field(min_length=1)


class FeatureRegistry(_Strict):
    entities: dict[str, Entity]
    features: dict[str, Feature]
    models: dict[str, ModelVector]

    @model_validator(mode="after")
    def _references_resolve(self) -> FeatureRegistry:
        for name, feature in self.features.items():
            if feature.entity not in self.entities:
                raise ValueError(f"feature {name!r}: unknown entity {feature.entity!r}")
        for model, spec in self.models.items():
            if spec.entity not in self.entities:
                raise ValueError(f"model {model!r}: unknown entity {spec.entity!r}")
            for feature in spec.vector:
                if feature not in self.features:
                    raise ValueError(f"model {model!r}: vector names unknown feature {feature!r}")
        return self

    @cached_property
    def stored_by_entity(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {name: [] for name in self.entities}
        for name, feature in self.features.items():
            if feature.source is FeatureSource.STORED:
                out[feature.entity].append(name)
        return out

    def request_features(self, model: str) -> list[str]:
        return [f for f in self.models[model].vector if self.features[f].source is FeatureSource.REQUEST]

    def stored_features(self, model: str) -> list[str]:
        return [f for f in self.models[model].vector if self.features[f].source is FeatureSource.STORED]


def load_registry(path: Path | None = None) -> FeatureRegistry:
    """Load a registry file; without a path, the embedded default."""
    return FeatureRegistry.model_validate(load_yaml(path, "features.yaml"))
