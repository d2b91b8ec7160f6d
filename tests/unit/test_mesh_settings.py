"""`meshserve up`'s settings and plan: which repositories Triton serves, which routes the gateway gets, and the
first command `up` suggests. Nothing starts: plan() only builds each child's command."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from meshserve.cli.app import app
from meshserve.cli.up import start_hint
from meshserve.core.process import free_port
from meshserve.launcher.mesh import (
    EMPTY_ROUTES,
    SAMPLE_REPOSITORY,
    LocalMesh,
    MeshSettings,
    describe_settings_error,
    parse_path_list,
)
from meshserve.launcher.startup_checks import PortUse, StartupError

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
OWN_REPOSITORY = FIXTURES / "own_repository"
SEP = os.pathsep


@pytest.fixture(autouse=True)
def _no_outside_settings(monkeypatch):
    for name in list(os.environ):
        if name.startswith("MESHSERVE_"):
            monkeypatch.delenv(name)


@pytest.mark.parametrize(
    ("value", "paths"),
    [
        ("/models", ["/models"]),
        (" /models ", ["/models"]),
        ("/a,/b", ["/a", "/b"]),
        (f"/a{SEP}/b, /c", ["/a", "/b", "/c"]),
        ('["/a", "/b,c"]', ["/a", "/b,c"]),  # JSON keeps what the separators would split
        ("/a,", ["/a"]),
    ],
)
def test_repositories_read_from_the_environment_as_a_path_a_list_or_json(monkeypatch, value, paths):
    monkeypatch.setenv("MESHSERVE_MODEL_REPOSITORIES", value)
    assert MeshSettings().model_repositories == [Path(p) for p in paths]


def test_repositories_default_to_the_sample_and_take_lists_of_paths():
    assert MeshSettings().model_repositories == [SAMPLE_REPOSITORY]
    assert MeshSettings(model_repositories=[Path("/a"), "/b"]).model_repositories == [Path("/a"), Path("/b")]
    assert parse_path_list(Path("/a")) == [Path("/a")]


@pytest.mark.parametrize("value", ["", " , ", "[]", "[not json", '["/a", 3]', '{"a": 1}'])
def test_a_bad_repositories_value_says_what_is_expected_in_one_line(monkeypatch, value):
    monkeypatch.setenv("MESHSERVE_MODEL_REPOSITORIES", value)
    with pytest.raises(ValidationError) as caught:
        MeshSettings()
    line = describe_settings_error(caught.value)
    assert line.startswith(
        f"MESHSERVE_MODEL_REPOSITORIES: expected a directory, several separated by ',' or {SEP!r}, "
        "or a JSON list of directories"
    )
    assert repr(value) in line and "\n" not in line


def test_other_bad_settings_are_named_by_their_variable_with_the_value(monkeypatch):
    monkeypatch.setenv("MESHSERVE_GATEWAY_PORT", "lots")
    with pytest.raises(ValidationError) as caught:
        MeshSettings()
    assert describe_settings_error(caught.value) == (
        "MESHSERVE_GATEWAY_PORT: Input should be a valid integer, unable to parse string as an integer (got 'lots')"
    )


def test_up_prints_one_line_and_exits_2_on_a_bad_setting(monkeypatch):
    monkeypatch.setenv("MESHSERVE_MODEL_REPOSITORIES", "[oops")
    result = CliRunner().invoke(app, ["up"])
    assert result.exit_code == 2
    assert result.output.startswith("meshserve up: MESHSERVE_MODEL_REPOSITORIES: expected a directory")
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "env", "line"),
    [
        (["up", "--port", "99999"], {},
         "meshserve up: --port: Input should be less than or equal to 65535 (got 99999)"),
        (["up"], {"MESHSERVE_GATEWAY_PORT": "99999"},
         "meshserve up: MESHSERVE_GATEWAY_PORT: Input should be less than or equal to 65535 (got '99999')"),
        (["up", "--port", "99999"], {"MESHSERVE_GATEWAY_PORT": "50051"},  # the flag's value is the one used
         "meshserve up: --port: Input should be less than or equal to 65535 (got 99999)"),
        (["up", "--admin-port", "-1"], {"MESHSERVE_GATEWAY_PORT": "99999"},  # each named where it came from
         "meshserve up: MESHSERVE_GATEWAY_PORT: Input should be less than or equal to 65535 (got '99999'); "
         "--admin-port: Input should be greater than or equal to 0 (got -1)"),
        (["deploy", "envoy", "--tracing-otlp-endpoint", "jaeger"], {},
         "meshserve deploy envoy: --tracing-otlp-endpoint: expected an http(s) URL such as http://jaeger:4317, "
         "got 'jaeger'"),
        (["deploy", "envoy"], {"MESHSERVE_ENVOY_TRACING_OTLP_ENDPOINT": "jaeger"},
         "meshserve deploy envoy: MESHSERVE_ENVOY_TRACING_OTLP_ENDPOINT: expected an http(s) URL such as "
         "http://jaeger:4317, got 'jaeger'"),
    ],
)  # fmt: skip
def test_a_bad_value_is_named_by_the_flag_or_the_variable_it_came_from(
    monkeypatch, tmp_path, args, env, line
):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    out = ["--out", str(tmp_path / "e.yaml")] if "envoy" in args else []
    result = CliRunner().invoke(app, [*args, *out])
    assert result.exit_code == 2
    assert result.output == line + "\n"
    assert not (tmp_path / "e.yaml").exists()


def planned(monkeypatch, tmp_path, **settings) -> LocalMesh:
    """The mesh planned (nothing starts) on ports 41000 on, skipping those it was told to avoid."""
    ports = iter(range(41000, 41100))

    def free_ports(n, host, avoid=()):
        return [port for port, _ in zip((p for p in ports if p not in avoid), range(n), strict=False)]

    monkeypatch.setattr("meshserve.launcher.mesh.free_ports", free_ports)
    mesh = LocalMesh(
        MeshSettings(
            **{
                "gateway_port": 0,
                "admin_port": 0,
                "gateway_http_port": 0,
                "run_dir": tmp_path / "run",
                **settings,
            }
        )
    )
    mesh.plan()
    return mesh


def triton_repositories(mesh: LocalMesh) -> list[str]:
    return [a.split("=", 1)[1] for a in mesh.children["triton"].argv if a.startswith("--model-repository=")]


def gateway_routes(mesh: LocalMesh) -> str | None:
    return mesh.children["gateway"].env.get("MESHSERVE_GATEWAY_ROUTES_PATH")


def test_the_users_repositories_are_served_alone_and_the_gateway_gets_no_routes(monkeypatch, tmp_path):
    mesh = planned(monkeypatch, tmp_path, model_repositories=[OWN_REPOSITORY])
    served = tmp_path / "run" / "served_repository"
    assert triton_repositories(mesh) == [str(served.resolve())]
    assert [m.name for m in mesh.served.models] == ["doubler"]  # not the sample `fraud`
    routes = Path(gateway_routes(mesh))
    assert routes == (tmp_path / "run" / "routes.yaml").resolve() and routes.read_text() == EMPTY_ROUTES
    assert not mesh.sample_routes


def test_a_routes_file_given_is_the_gateways_whatever_is_served(monkeypatch, tmp_path):
    routes = tmp_path / "mine.yaml"
    routes.write_text("routes:\n  double:\n    variants: [{name: only, model: doubler, weight: 1}]\n")
    mesh = planned(monkeypatch, tmp_path, model_repositories=[OWN_REPOSITORY], routes_path=routes)
    assert gateway_routes(mesh) == str(routes) and not mesh.sample_routes


def test_without_repositories_the_sample_is_served_on_the_embedded_routes(monkeypatch, tmp_path):
    mesh = planned(monkeypatch, tmp_path)
    assert gateway_routes(mesh) is None and mesh.sample_routes  # the embedded routes
    assert [m.name for m in mesh.served.models] == ["fraud"]
    assert not (tmp_path / "run" / "routes.yaml").exists()


def test_the_hint_names_what_is_served(monkeypatch, tmp_path):
    sample = planned(monkeypatch, tmp_path / "sample")
    hint = start_hint(sample, sample.endpoints)
    assert "predict fraud acct-00042" in hint and f"--target {sample.endpoints.gateway}" in hint

    own = planned(monkeypatch, tmp_path / "own", model_repositories=[OWN_REPOSITORY])
    hint = start_hint(own, own.endpoints)
    assert "predict fraud" not in hint
    assert "import tritonclient.grpc as g;" in hint
    assert (
        f"g.InferenceServerClient('{own.endpoints.gateway}').get_model_metadata('doubler', as_json=True)"
        in hint
    )

    own.served = None  # nothing served (plan() refuses that, but the hint copes)
    assert start_hint(own, own.endpoints) is None


def test_one_gateway_is_todays_single_process_on_its_own_ports(monkeypatch, tmp_path):
    mesh = planned(monkeypatch, tmp_path)
    assert [name for name in mesh.children if name.startswith("gateway")] == ["gateway"]
    env = mesh.children["gateway"].env
    assert "MESHSERVE_GATEWAY_REUSE_PORT" not in env and "MESHSERVE_GATEWAY_CONTROL_STORE" not in env


def test_several_gateways_share_one_port_set_and_a_control_store(monkeypatch, tmp_path):
    mesh = planned(monkeypatch, tmp_path, gateways=3)
    names = [name for name in mesh.children if name.startswith("gateway")]
    assert names == ["gateway", "gateway-2", "gateway-3"]  # the first keeps its name
    envs = [mesh.children[name].env for name in names]
    store = f"sqlite:///{(tmp_path / 'run' / 'control.db').resolve()}"
    for key in ("PORT", "ADMIN_PORT", "HTTP_PORT"):
        assert len({env[f"MESHSERVE_GATEWAY_{key}"] for env in envs}) == 1  # one port set
    assert all(env["MESHSERVE_GATEWAY_REUSE_PORT"] == "true" for env in envs)
    assert all(env["MESHSERVE_GATEWAY_CONTROL_STORE"] == store for env in envs)
    assert len({env["MESHSERVE_GATEWAY_METRICS_PORT"] for env in envs}) == 3  # but each its own metrics
    assert {mesh.children[name].log_path.name for name in names} == {f"{name}.log" for name in names}
    assert set(mesh.targets()) >= set(names)


def test_the_gateways_count_is_at_least_one(monkeypatch):
    monkeypatch.setenv("MESHSERVE_GATEWAYS", "0")
    with pytest.raises(ValidationError):
        MeshSettings()


def test_the_up_table_names_every_process_metrics_endpoint():
    from rich.console import Console

    from meshserve.cli.up import _endpoints_table
    from meshserve.launcher.mesh import Endpoints

    metrics = {name: f"http://127.0.0.1:{port}/metrics" for name, port in
               (("feature", 9101), ("cache", 9102), ("inference", 9103), ("monitor", 9105))}  # fmt: skip
    ep = Endpoints(gateway="127.0.0.1:50051", gateway_http="127.0.0.1:50056", admin="127.0.0.1:50055",
                   gateway_metrics="http://127.0.0.1:9100/metrics", service_metrics=metrics,
                   feature="127.0.0.1:1", cache="127.0.0.1:2", inference="127.0.0.1:3", monitor="127.0.0.1:5",
                   triton_grpc="127.0.0.1:4", triton_metrics="http://127.0.0.1:9104/metrics")  # fmt: skip
    console = Console(width=200, record=True)
    console.print(_endpoints_table(ep))
    text = console.export_text()
    for url in [*metrics.values(), ep.gateway_metrics, ep.triton_metrics]:
        assert url in text
    assert "feature metrics" in text and "inference metrics" in text and "monitor metrics" in text
    assert "│ monitor " in text and "127.0.0.1:5 " in text


def monitor_env(mesh: LocalMesh) -> dict[str, str]:
    prefix = "MESHSERVE_MONITOR_"
    return {
        k.removeprefix(prefix).lower(): v
        for k, v in mesh.children["monitor"].env.items()
        if k.startswith(prefix)
    }


def test_the_monitor_is_a_child_on_its_own_port_with_its_store_in_the_run_directory(monkeypatch, tmp_path):
    mesh = planned(monkeypatch, tmp_path, gateways=2)
    child, ep = mesh.children["monitor"], mesh.endpoints
    assert child.argv[-2:] == ["-m", "services.monitor"]
    env = monitor_env(mesh)
    assert env["store_path"] == str((tmp_path / "run" / "monitor.db").resolve())  # kept between runs
    assert ep.monitor == f"127.0.0.1:{env['port']}" and env["host"] == "127.0.0.1"
    assert ep.service_metrics["monitor"] == f"http://127.0.0.1:{env['metrics_port']}/metrics"
    ports = [int(env["port"]), int(env["metrics_port"])]
    others = {
        int(value)
        for name, other in mesh.children.items()
        if name != "monitor"
        for key, value in other.env.items()
        if key.startswith("MESHSERVE_") and key.endswith("_PORT") and value.isdigit()
    }
    assert not set(ports) & others, "the monitor's ports are its own"
    assert "redis_url" not in env  # SQLite, the embedded store
    assert "registry_path" not in env  # the embedded registry, as the gateway's
    assert not [key for key in env if key.startswith("tls")]  # no TLS without --tls
    for gateway in ("gateway", "gateway-2"):  # every gateway logs to it and forwards labels to it
        assert mesh.children[gateway].env["MESHSERVE_GATEWAY_MONITOR_URL"] == ep.monitor
    assert mesh.targets()["monitor"] == ep.monitor  # health-checked like the others
    assert mesh.ports["monitor"] == [PortUse(int(env["port"]), "monitor", None)]  # chosen afresh: no flag


def test_the_monitor_exports_features_in_the_order_of_the_gateways_registry(monkeypatch, tmp_path):
    registry = tmp_path / "features.yaml"
    mesh = planned(monkeypatch, tmp_path, registry_path=registry)
    assert monitor_env(mesh)["registry_path"] == str(registry)
    assert mesh.children["gateway"].env["MESHSERVE_GATEWAY_REGISTRY_PATH"] == str(registry)


def test_a_fixed_monitor_port_is_used_and_checked_before_anything_starts(monkeypatch, tmp_path):
    port = free_port()
    mesh = planned(monkeypatch, tmp_path, monitor_port=port)
    assert mesh.endpoints.monitor == f"127.0.0.1:{port}" and monitor_env(mesh)["port"] == str(port)
    assert mesh.ports["monitor"] == [PortUse(port, "monitor", "--monitor-port")]
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        with pytest.raises(StartupError) as refused:
            planned(monkeypatch, tmp_path / "again", monitor_port=port)
    (problem,) = refused.value.problems
    assert problem.startswith(f"port {port} (monitor) is in use") and problem.endswith("pass --monitor-port")


def test_no_child_is_given_a_port_the_user_fixed(monkeypatch, tmp_path):
    """The OS may offer a free port again that the user fixed for another process (a test's free --port, say):
    the children's ports are drawn around every fixed one, or two processes would race for it."""
    fixed = {"gateway_port": 41000, "admin_port": 41002, "gateway_http_port": 41004, "monitor_port": 41006}
    mesh = planned(monkeypatch, tmp_path, **fixed)
    ep = mesh.endpoints
    ports = {
        name: int(address.rsplit(":", 1)[1].split("/")[0])
        for name, address in vars(ep).items()
        if isinstance(address, str)
    }
    assert (ports["gateway"], ports["admin"], ports["gateway_http"], ports["monitor"]) == (
        41000,
        41002,
        41004,
        41006,
    )
    others = [
        port for name, port in ports.items() if name not in {"gateway", "admin", "gateway_http", "monitor"}
    ]
    assert len(others) >= 5 and not set(others) & set(fixed.values())


def test_up_takes_the_monitor_port_from_its_flag_or_variable(monkeypatch):
    monkeypatch.setenv("MESHSERVE_MONITOR_PORT", "50057")
    assert MeshSettings().monitor_port == 50057
    result = CliRunner().invoke(app, ["up", "--monitor-port", "70000"])
    assert result.exit_code == 2
    assert result.output == (
        "meshserve up: --monitor-port: Input should be less than or equal to 65535 (got 70000)\n"
    )


def test_a_mesh_with_tls_gives_the_monitor_mtls_admitting_the_gateway_and_admin(monkeypatch, tmp_path):
    mesh = planned(monkeypatch, tmp_path, tls=True)
    env = monitor_env(mesh)
    certs = (tmp_path / "run" / "certs").resolve()
    assert env["tls_cert_file"] == str(certs / "monitor.pem") and env["tls_client_auth"] == "true"
    assert json.loads(env["tls_allowed_peers"]) == ["gateway", "admin"]
    assert (certs / "monitor.pem").is_file()
