"""What a reload refused for a version Triton does not serve tells the user (gateway.rollout.advice): pure."""

from __future__ import annotations

from pathlib import Path

from gateway.control.audit import AuditEntry
from gateway.rollout.advice import reload_refusal, switched_away
from gateway.rollout.versions import VersionNotServed

UNLOADED = VersionNotServed(
    "fraud", "stable", "fraud", "1", ["2"], "Triton lists it as UNAVAILABLE (unloaded)"
)


def entry(action: str, before: object, after: object, who: str = "ops", route: str = "fraud") -> AuditEntry:
    return AuditEntry("2026-12-07T10:00:00Z", who, action, route, before, after)


def test_the_newest_switch_off_the_version_is_found():
    entries = [
        entry("switch_version", {"stable": "1"}, {"stable": "2"}, who="first"),
        entry("set_weights", {"stable": 100}, {"stable": 90}),
        entry("switch_version", {"canary": "1"}, {"canary": "2"}, who="other variant"),
        entry("switch_version", {"stable": "1"}, {"stable": "2"}, who="newest", route="other route"),
        entry("switch_version", {"stable": "1"}, {"stable": "2"}, who="newest"),
        entry("reload_refused", None, None),
    ]
    assert switched_away(entries, "fraud", "stable", "1").who == "newest"
    assert switched_away(entries, "fraud", "stable", "3") is None
    assert switched_away([], "fraud", "stable", "1") is None


def test_after_a_switch_with_the_embedded_routes_it_leads_back_or_to_a_file_of_ones_own():
    switch = entry("switch_version", {"stable": "1"}, {"stable": "2"}, who="admin-token")
    message = reload_refusal(UNLOADED, None, "2", switch)
    assert message == (
        "the embedded routes: route 'fraud' variant 'stable': model 'fraud' version 1 is not served by Triton "
        "(Triton lists it as UNAVAILABLE (unloaded); it serves version 2); nothing changed, the live routes keep "
        "serving; `meshserve canary switch fraud stable 2` (admin-token, 2026-12-07T10:00:00Z) moved the variant "
        "from version 1 to 2 and unloaded 1: a switch changes the live routes, not the routes file; version 2 "
        "keeps serving as it is; for routes to reload that keep it, serve a routes file of your own with "
        '`version: "2"` there (`meshserve up --routes FILE`, from meshserve/defaults/routes.yaml); to go back to '
        "version 1, run `meshserve canary switch fraud stable 1` (it loads version 1 again), then reload"
    )


def test_without_an_audited_switch_the_live_version_still_shows_the_way():
    message = reload_refusal(UNLOADED, Path("/srv/routes.yaml"), "2", None)
    assert "the live routes serve version 2 there: a switch changes the live routes" in message
    assert (
        "put `version: \"2\"` on variant 'stable' of route 'fraud' in /srv/routes.yaml, then reload"
        in message
    )
    assert "run `meshserve canary switch fraud stable 1`" in message


def test_when_the_live_variant_names_the_same_version_a_switch_cannot_help_a_load_can():
    # unloaded through Triton directly: the live routes name version 1 too (its requests fall back meanwhile)
    message = reload_refusal(UNLOADED, Path("/srv/routes.yaml"), "1", None)
    assert "canary switch" not in message
    assert "name one Triton serves (2) for variant 'stable' of route 'fraud' in /srv/routes.yaml" in message
    assert "POST /v2/repository/models/fraud/load" in message
    nothing = VersionNotServed(
        "fraud", "stable", "fraud", "1", [], "Triton's model repository has no such model"
    )
    assert "name a version Triton serves for variant 'stable'" in reload_refusal(nothing, None, None, None)
