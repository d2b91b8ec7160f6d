"""The CLI's tables in an 80-column terminal: `routes audit`, `status`, `cache stats` and the table `up` prints.
Each used to be squeezed by rich until cells were cut (`admin-to…`, `http://127.0.0.1:38…`, `invali…`) or wrapped
a word per line; now every line fits, and URLs, headers and audit actions are whole. Where the table fits, it is
printed as before."""

from __future__ import annotations

import json

import pytest
from rich.console import Console

from meshserve.admin.v1 import admin_pb2
from meshserve.cli.admin import audit_table, cache_table
from meshserve.cli.status import processes_table
from meshserve.cli.up import _endpoints_table
from meshserve.launcher.mesh import Endpoints

NARROW = 80
REFUSAL = (
    "the embedded routes: route 'fraud' variant 'stable': model 'fraud' version 1 is not served by Triton "
    "(Triton lists it as UNAVAILABLE (unloaded); it serves version 2); nothing changed, the live routes keep "
    "serving; to go back to version 1, run `meshserve canary switch fraud stable 1` (it loads version 1 again)"
)


def render(renderable, width: int) -> str:
    console = Console(width=width, record=True, file=open("/dev/null", "w"))  # noqa: SIM115 - closed with it
    try:
        console.print(renderable)
        return console.export_text()
    finally:
        console.file.close()


def readable(text: str, width: int, whole: list[str]) -> str:
    """`text` with no line wider than `width`, no cell cut (rich's ellipsis), and every string of `whole` on one
    line."""
    lines = text.splitlines()
    assert all(len(line) <= width for line in lines), "\n".join(line for line in lines if len(line) > width)
    assert "…" not in text, text
    for part in whole:
        assert any(part in line for line in lines), f"{part!r} not whole in\n{text}"
    return text


def audit_entry(action: str, before: object, after: object, reason: str = "") -> admin_pb2.AuditEntry:
    return admin_pb2.AuditEntry(
        time="2026-12-07T23:29:05Z", who="admin-token", action=action, route="fraud",
        before=json.dumps(before), after=json.dumps(after), reason=reason,
    )  # fmt: skip


AUDIT = [
    audit_entry("set_weights", {"canary": 0.0, "stable": 100.0}, {"canary": 5.0, "stable": 95.0}),
    audit_entry(
        "rollout_step",
        {"canary": 5.0, "stable": 95.0},
        {"canary": 5.0, "stable": 95.0},
        "step 1/4: canary at 5.0%",
    ),  # fmt: skip
    audit_entry("switch_version", {"stable": "1"}, {"stable": "2"}),
    audit_entry("reload_refused", None, None, REFUSAL),
]


def test_the_audit_log_at_80_columns_keeps_actions_whole_and_gives_details_their_own_lines():
    text = readable(
        render(audit_table(AUDIT), NARROW), NARROW,
        ["2026-12-07T23:29:05Z  set_weights  fraud  admin-token", "reload_refused", "rollout_step",
         "switch_version", '{"canary": 0.0, "stable": 100.0} → {"canary": 5.0, "stable": 95.0}',
         '{"stable": "1"} → {"stable": "2"}', "step 1/4: canary at 5.0%", "`meshserve canary switch fraud stable 1`"],
    )  # fmt: skip
    assert " ".join(text.split()).count(REFUSAL) == 1  # wrapped between words, every word there
    assert "null → null" not in text  # a refusal changed nothing: no before/after line


def test_the_audit_log_is_a_table_where_it_fits():
    short = [audit_entry("switch_version", {"stable": "1"}, {"stable": "2"})]
    text = render(audit_table(short), 120)
    assert "┃ time " in text and "┃ reason" in text and "│ switch_version │" in text, text


def status(metrics_port: int = 38703) -> dict:
    processes = [
        {"name": name, "pid": 20150 + i, "alive": i != 3, "address": f"127.0.0.1:{56950 + i}",
         "metrics": f"http://127.0.0.1:{metrics_port + i}/metrics", "health": "SERVING" if i != 3 else "UNAVAILABLE"}
        for i, name in enumerate(("triton", "feature", "cache", "inference", "monitor", "gateway"))
    ]  # fmt: skip
    return {"up_pid": 20149, "tls": False, "processes": processes}


def test_status_at_80_columns_shows_every_metrics_url_whole():
    shown = status()
    urls = [p["metrics"] for p in shown["processes"]]
    text = readable(
        render(processes_table(shown), NARROW), NARROW,
        ["process", "pid", "alive", "address", "health", "UNAVAILABLE", "127.0.0.1:56953",
         *(f"{p['name']}: {p['metrics']}" for p in shown["processes"])],
    )  # fmt: skip
    assert all(text.count(url) == 1 for url in urls)


def test_status_is_one_table_with_the_metrics_column_where_it_fits():
    text = render(processes_table(status()), 120)
    assert "┃ metrics " in text and "│ http://127.0.0.1:38703/metrics │" in text, text


def cache_reply() -> admin_pb2.CacheStatsResponse:
    route = admin_pb2.RouteCacheStats(route="fraud", enabled=True, near_hits=12, hits=340, misses=56, bypasses=2,
                                      coalesced=7, hit_ratio=0.862, invalidations=3)  # fmt: skip
    return admin_pb2.CacheStatsResponse(routes=[route])


def test_cache_stats_at_80_columns_keep_every_header_whole():
    readable(
        render(cache_table(cache_reply()), NARROW), NARROW,
        ["prediction cache", "fraud", "on: yes", "hit ratio: 86.2%", "near hits: 12", "hits: 340", "misses: 56",
         "bypasses: 2", "coalesced: 7", "invalidations: 3"],
    )  # fmt: skip


def test_cache_stats_are_a_table_where_they_fit():
    text = render(cache_table(cache_reply()), 120)
    assert "┃ invalidations ┃" in text and "│ 86.2%" in text, text


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_the_up_table_at_80_columns_has_every_endpoint_whole_on_the_line_of_its_name(scheme):
    metrics = {name: f"{scheme}://127.0.0.1:{port}/metrics" for name, port in
               (("feature", 60257), ("cache", 58807), ("inference", 41539), ("monitor", 41541),
                ("gateway-2", 41540))}  # fmt: skip
    ep = Endpoints(gateway="127.0.0.1:56413", gateway_http="127.0.0.1:43249", admin="127.0.0.1:33801",
                   gateway_metrics=f"{scheme}://127.0.0.1:60925/metrics", service_metrics=metrics,
                   feature="127.0.0.1:32871", cache="127.0.0.1:34929", inference="127.0.0.1:35697",
                   monitor="127.0.0.1:35699", triton_grpc="127.0.0.1:56953", triton_metrics=f"{scheme}://127.0.0.1:38703/metrics")  # fmt: skip
    readable(
        render(_endpoints_table(ep), NARROW), NARROW,
        ["meshserve is up", "gateway gRPC (Predict + Open Inference Protocol): 127.0.0.1:56413",
         "gateway REST (Triton's HTTP API): 127.0.0.1:43249", f"gateway metrics: {ep.gateway_metrics}",
         f"gateway-2 metrics: {metrics['gateway-2']}", f"inference metrics: {metrics['inference']}",
         "monitor: 127.0.0.1:35699", f"monitor metrics: {metrics['monitor']}",
         f"triton metrics: {ep.triton_metrics}"],
    )  # fmt: skip
    wide = render(_endpoints_table(ep), 120)
    assert "│ gateway gRPC (Predict + Open Inference Protocol) │ 127.0.0.1:56413" in wide, wide
