"""`meshserve predict`: one Predict from the shell."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rich.console import Console
from rich.table import Table
from rich.text import Text

from meshserve.cli.errors import EXIT_USAGE, CliError, dial
from meshserve.cli.output import Output, print_json
from meshserve.feature.registry import FeatureRegistry, load_registry
from meshserve.feature.v1 import feature_pb2
from meshserve.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from meshserve.launcher.endpoints_file import locate

console = Console()


def _number(text: str) -> int | float | None:
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return None


def parse_feature(
    text: str, registry: FeatureRegistry | None = None, route: str | None = None
) -> tuple[str, feature_pb2.Value]:
    """`name=value` as a request feature, typed by the registry when it declares the name (INT* features take
    whole numbers); ValueError names the feature, the type it takes and what was given."""
    name, sep, raw = text.partition("=")
    if not sep or not name:
        raise ValueError(f"expected name=value, got {text!r}")
    spec = registry.features.get(name) if registry is not None else None
    value = _number(raw.strip())
    # a word given to a name the route does not take: the name is the mistake (a number goes on to the gateway,
    # whose registry has the last word)
    if value is None and (not_taken := _not_taken(registry, route, name)):
        raise ValueError(not_taken)
    if spec is not None and spec.integral:
        if value is None or value != int(value):
            raise ValueError(f"feature {name!r} takes a whole number ({spec.dtype}), got {raw!r}")
        return name, feature_pb2.Value(int64_value=int(value))
    if value is None:
        kind = f"a number ({spec.dtype})" if spec is not None else "a number"
        raise ValueError(f"feature {name!r} takes {kind}, got {raw!r}")
    if isinstance(value, int) and spec is None:
        return name, feature_pb2.Value(int64_value=value)
    return name, feature_pb2.Value(double_value=float(value))


def _not_taken(registry: FeatureRegistry | None, route: str | None, name: str) -> str | None:
    """Why `name` is not one of the route's request features (the values a caller passes), listing those; None
    when it is one, or the registry does not describe the route."""
    if registry is None or route not in registry.models:
        return None
    wanted = registry.request_features(route)
    if name in wanted:
        return None
    listed = ", ".join(f"{f} ({registry.features[f].dtype})" for f in wanted)
    if name in registry.models[route].vector:
        return (
            f"{name!r} is a stored feature of route {route} (the feature service supplies it); "
            f"its request features are {listed}"
        )
    return f"{name!r} is not a feature of route {route}; its request features are {listed}"


def _to_dict(reply: gateway_pb2.PredictResponse) -> dict[str, object]:
    return {
        "route": reply.route,
        "variant": reply.variant,
        "model_name": reply.model_name,
        "model_version": reply.model_version,
        "predictions": [
            {"entity_key": p.entity_key, "score": p.score, "variant": p.variant,
             "model_version": p.model_version, "tier": gateway_pb2.Tier.Name(p.tier), "from_cache": p.from_cache,
             "defaulted_features": list(p.defaulted_features), "prediction_id": p.prediction_id}
            for p in reply.predictions
        ],
    }  # fmt: skip


def _show(answer: Mapping[str, object]) -> None:
    table = Table(
        title=f"route {answer['route']}: variant {answer['variant']}, "
        f"{answer['model_name']} v{answer['model_version']}"
    )
    for column in ("entity", "score", "variant", "version", "tier", "from cache"):
        table.add_column(column)
    for p in answer["predictions"]:  # type: ignore[attr-defined]
        table.add_row(p["entity_key"], f"{p['score']:.6f}", p["variant"], p["model_version"] or "-", p["tier"],
                      "yes" if p["from_cache"] else "no")  # fmt: skip
    console.print(table)
    for p in answer["predictions"]:  # type: ignore[attr-defined]
        if p["prediction_id"]:  # what a label for this answer names (`meshserve feedback load`)
            console.print(Text(f"prediction id: {p['prediction_id']}"), soft_wrap=True)
        if p["defaulted_features"]:
            console.print(Text(defaulted_note(p["entity_key"], p["defaulted_features"]), style="yellow"))


def defaulted_note(entity_key: str, defaulted: Sequence[str]) -> str:
    """A score from defaults, said so: the entity is unknown to the feature store, or its values are too old."""
    return (
        f"entity {entity_key!r}: stored features missing (unknown entity) or too old, scored with defaults: "
        f"{', '.join(defaulted)}"
    )


async def run_predict(
    target: str | None,
    route: str,
    entity_key: str,
    features: list[str],
    timeout_s: float,
    tls: bool | None = None,
    api_key: str | None = None,
    output: Output = Output.TABLE,
) -> None:
    registry = load_registry()  # types the values; the gateway validates them anyway
    try:
        parsed = dict(parse_feature(f, registry, route) for f in features)
    except ValueError as exc:
        raise CliError(str(exc), EXIT_USAGE) from None
    request = gateway_pb2.PredictRequest(
        route=route, instances=[gateway_pb2.Instance(entity_key=entity_key, features=parsed)]
    )
    found = locate("gateway", target)  # the flag, MESHSERVE_TARGET_GATEWAY, the running mesh, the default
    async with dial(found, "gateway", tls=tls) as channel:  # TLS when the mesh runs with it
        metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        reply = await gateway_pb2_grpc.PredictionServiceStub(channel).Predict(
            request, timeout=timeout_s, metadata=metadata
        )
    answer = _to_dict(reply)
    if output is Output.JSON:
        print_json(answer)
    else:
        _show(answer)
