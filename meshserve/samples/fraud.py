"""Synthetic accounts and transactions for the `fraud` sample model, and its two trained versions.

Everything is drawn from one seeded generator and every fitted number is rounded before export, so a rebuild
gives byte-identical ONNX files and CSV (a test compares them with the committed ones) on any x86_64 CPU and
BLAS kernel: the linear model is fitted in float64 by Newton's method, to its optimum, not to wherever a float32
solve stops (which moved with the BLAS kernel by up to 2e-4), and BLAS runs single-threaded while fitting.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.base import ClassifierMixin
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from meshserve.feature.registry import FeatureRegistry

__all__ = [
    "MODEL",
    "ONNX_PROBABILITIES",
    "SEED",
    "Accounts",
    "Transactions",
    "make_accounts",
    "make_transactions",
    "to_onnx",
    "train_versions",
]

MODEL = "fraud"  # the registry's model this sample serves
SEED = 20261124
N_ACCOUNTS = 1000
N_TRANSACTIONS = 20000
ONNX_PROBABILITIES = "probabilities"  # skl2onnx's name for the [n, 2] class-probability output
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}
# Merchant categories 0..9; some carry more risk (think gift cards, electronics, crypto exchanges).
CATEGORY_RISK = np.array([0.0, 0.0, 0.2, 0.0, 0.9, 0.1, 0.0, 1.4, 0.3, 0.6])
CATEGORY_WEIGHTS = np.array([0.18, 0.16, 0.12, 0.12, 0.06, 0.1, 0.1, 0.04, 0.07, 0.05])


@dataclass(frozen=True)
class Accounts:
    ids: list[str]
    stored: dict[str, np.ndarray]  # stored feature name -> one value per account


@dataclass(frozen=True)
class Transactions:
    account: np.ndarray  # index into Accounts.ids
    features: np.ndarray  # [n, len(vector)] FP32, columns in the registry vector's order
    label: np.ndarray  # 1 = fraud


def make_accounts(registry: FeatureRegistry, rng: np.random.Generator) -> Accounts:
    n = N_ACCOUNTS
    # Values are rounded to what the CSV stores, so training sees exactly what the feature store serves.
    drawn = {
        "avg_amount_30d": np.round(rng.lognormal(np.log(60.0), 0.7, n), 2),
        "txn_count_24h": rng.poisson(rng.gamma(2.0, 1.5, n)),
        # most accounts are years old, a tenth were opened in the last month
        "account_age_days": np.where(rng.random(n) < 0.1, rng.integers(0, 30, n), rng.integers(30, 3650, n)),
    }
    spec = registry.models[MODEL]
    names = registry.stored_by_entity[spec.entity]
    if set(drawn) != set(names):
        raise ValueError(f"sample generator draws {sorted(drawn)}, registry stores {sorted(names)}")
    return Accounts(ids=[f"acct-{i:05d}" for i in range(n)], stored={name: drawn[name] for name in names})


def make_transactions(
    registry: FeatureRegistry, accounts: Accounts, rng: np.random.Generator
) -> Transactions:
    n = N_TRANSACTIONS
    account = rng.integers(0, len(accounts.ids), n)
    avg = accounts.stored["avg_amount_30d"][account]
    category = rng.choice(len(CATEGORY_RISK), n, p=CATEGORY_WEIGHTS)
    # Usually near the account's own average; sometimes a spike several times above it.
    spike = np.where(rng.random(n) < 0.06, rng.uniform(2.0, 12.0, n), 1.0)
    amount = np.round(np.maximum(avg * rng.lognormal(0.0, 0.45, n) * spike, 0.5), 2)
    count = accounts.stored["txn_count_24h"][account]
    age = accounts.stored["account_age_days"][account]

    # The ground truth is non-linear on purpose (ratio, thresholds), so the two model families disagree.
    ratio = amount / np.maximum(avg, 1.0)
    logit = (
        -4.7
        + 1.5 * np.log(np.maximum(ratio, 1.0))
        + 1.3 * (age < 30)
        + 0.6 * (age < 180)
        + 0.12 * np.minimum(count, 20)
        + CATEGORY_RISK[category]
    )
    label = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    columns = {"amount": amount, "merchant_category": category} | {
        name: values[account] for name, values in accounts.stored.items()
    }
    vector = registry.models[MODEL].vector
    if set(columns) != set(vector):
        raise ValueError(f"sample generator makes {sorted(columns)}, model vector is {vector}")
    features = np.column_stack([columns[name] for name in vector]).astype(np.float32)
    return Transactions(account=account, features=features, label=label)


def _round_params(model: ClassifierMixin, decimals: int = 6) -> None:
    # BLAS and SIMD paths differ across CPUs in the last bits; rounding keeps the exported bytes stable.
    if isinstance(model, Pipeline):
        scaler, clf = model.named_steps["scale"], model.named_steps["clf"]
        scaler.mean_, scaler.scale_ = np.round(scaler.mean_, decimals), np.round(scaler.scale_, decimals)
        clf.coef_, clf.intercept_ = np.round(clf.coef_, decimals), np.round(clf.intercept_, decimals)
    else:
        for tree in model.estimators_.ravel():
            tree.tree_.value[:] = np.round(tree.tree_.value, decimals)
            tree.tree_.threshold[:] = np.round(tree.tree_.threshold, decimals)


def train_versions(txns: Transactions) -> dict[int, ClassifierMixin]:
    """Fit version 1 (linear) and version 2 (boosted trees) on the same transactions."""
    # Newton-Cholesky converges to the optimum within `tol`, so kernels that sum in another order agree to ~1e-15
    # there; lbfgs stops on a relative loss change, and in float32 it stopped 2e-4 apart on different CPUs.
    v1 = Pipeline(
        [
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(C=1.0, solver="newton-cholesky", tol=1e-10, max_iter=100)),
        ]
    )
    v2 = GradientBoostingClassifier(n_estimators=60, max_depth=3, learning_rate=0.1, random_state=SEED)
    # The trees split on the float32 values served (they convert to float32 anyway); the linear model fits in
    # float64 so its solver is not limited by float32 precision.
    inputs = {1: txns.features.astype(np.float64), 2: txns.features}
    versions: dict[int, ClassifierMixin] = {1: v1, 2: v2}
    with threadpool_limits(limits=1):  # one summation order whatever the machine's core count
        for version, model in versions.items():
            model.fit(inputs[version], txns.label)
            _round_params(model)
    return versions


def to_onnx(model: ClassifierMixin, input_name: str, width: int, version: int) -> bytes:
    """Export with a float input `input_name` [None, width] and a plain probability tensor (no ZipMap)."""
    proto = convert_sklearn(
        model,
        initial_types=[(input_name, FloatTensorType([None, width]))],
        target_opset=TARGET_OPSET,
        options={"zipmap": False},
    )
    # Pin what would otherwise follow the installed converter's version or carry free text.
    proto.producer_name, proto.producer_version, proto.doc_string = "skl2onnx", "", ""
    proto.graph.doc_string, proto.graph.name = "", f"{MODEL}_v{version}"  # the name defaults to a uuid4
    proto.model_version = version
    # skl2onnx collects opsets in a set, so their order follows PYTHONHASHSEED: sort them.
    opsets = sorted((o.domain, o.version) for o in proto.opset_import)
    del proto.opset_import[:]
    for domain, opset in opsets:
        proto.opset_import.add(domain=domain, version=opset)
    onnx.checker.check_model(proto)
    return proto.SerializeToString(deterministic=True)
