"""The control store's semantics, on SQLite in tmp and on a real redis-server: revisions, compare-and-set, audit;
and LiveRoutes over it: two replicas' changes are never lost, a conflict is retried on the newer table."""

from __future__ import annotations

import asyncio

import pytest
import yaml

from gateway.control.audit import AuditLog
from gateway.control.plane import ControlStoreUnavailable, RevisionConflict, RouteWatcher, open_store
from gateway.routing.live import LiveRoutes
from gateway.routing.routes import parse_routes
from meshserve.core.errors import ErrorCode

ROUTES = yaml.safe_load("""
routes:
  fraud:
    variants:
      - {name: stable, model: fraud, version: "1", weight: 100}
      - {name: canary, model: fraud, version: "2", weight: 0}
""")


@pytest.fixture(params=["sqlite", "redis"])
async def store(request, tmp_path, redis_url):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path}/control.db"
    else:
        import redis.asyncio as aioredis

        url = redis_url
        client = aioredis.Redis.from_url(url)
        await client.delete("meshserve:control:routes", "meshserve:control:audit", "meshserve:control:stats",
                           "meshserve:control:lease:rollout-judge")  # fmt: skip
        await client.aclose()
    store = open_store(url)
    yield store
    await store.close()


async def test_writes_are_compare_and_set_on_a_revision_that_only_grows(store):
    assert await store.revision() == 0
    assert (await store.read()).document is None
    assert await store.write(0, {"table": {"n": 1}}, [{"action": "a"}]) == 1
    assert await store.write(1, {"table": {"n": 2}}, []) == 2
    with pytest.raises(RevisionConflict) as conflict:
        await store.write(
            1, {"table": {"n": 3}}, [{"action": "lost"}]
        )  # a writer that had not seen revision 2
    assert conflict.value.revision == 2
    snapshot = await store.read()
    assert (snapshot.revision, snapshot.document) == (2, {"table": {"n": 2}})
    await store.append_audit([{"action": "b"}, {"action": "c"}])
    # the losing write's audit entry went nowhere; the tail is the newest, oldest first
    assert [e["action"] for e in await store.audit_tail(10)] == ["a", "b", "c"]
    assert [e["action"] for e in await store.audit_tail(2)] == ["b", "c"]


def replica(tmp_path, store, name: str) -> LiveRoutes:
    live = LiveRoutes(parse_routes(ROUTES, "test"), None, AuditLog(tmp_path / f"{name}.jsonl"))
    live.store = live.audit.shared = store
    return live


async def test_replicas_converge_and_a_stale_writer_changes_the_newer_table(store, tmp_path):
    a, b = replica(tmp_path, store, "a"), replica(tmp_path, store, "b")
    await a.sync()  # seeds the empty store with its table
    await b.sync()
    assert a.revision == b.revision == 1
    await a.change_weights("fraud", {"stable": 60, "canary": 40}, "alice")
    assert b.get("fraud").variant("canary").weight == 0  # b has not looked yet
    # b writes from revision 1: the conflict makes it adopt a's table first, so a's change is not lost
    await b.change_weights("fraud", {"stable": 90}, "bob")
    assert {v.name: v.weight for v in b.get("fraud").variants} == {"stable": 90, "canary": 40}
    await a.sync()
    assert a.table == b.table and a.revision == b.revision == 3
    audit = [(e.who, e.action, e.before, e.after) for e in await a.audit.recent(10)]
    assert audit == [
        ("gateway", "seed", None, {"fraud": {"stable": 100.0, "canary": 0.0}}),
        ("alice", "set_weights", {"stable": 100.0, "canary": 0.0}, {"stable": 60.0, "canary": 40.0}),
        ("bob", "set_weights", {"stable": 60.0, "canary": 40.0}, {"stable": 90.0, "canary": 40.0}),
    ]


async def test_a_restarted_replica_serves_the_stored_table_not_its_routes_file(store, tmp_path):
    a = replica(tmp_path, store, "a")
    await a.sync()
    await a.promote("fraud", "canary", "alice")
    restarted = replica(tmp_path, store, "restarted")
    await restarted.sync()
    assert restarted.get("fraud").variant("canary").weight == 100
    changes = []
    a.subscribe(changes.append)
    await restarted.rollback("fraud", "bob", "p99")
    watcher = RouteWatcher(store, lambda: a.revision, a.sync)
    await watcher.poll()
    assert watcher.up and a.get("fraud").variant("stable").weight == 100
    # adopted changes are announced with who made them where (the rollout controller stops on them)
    assert [(c.route, c.who, c.action, c.reason) for c in changes] == [("fraud", "bob", "rollback", "p99")]


async def test_an_unreachable_store_refuses_writes_and_leaves_the_table_serving(tmp_path):
    from meshserve.core.process import free_port

    store = open_store(f"redis://127.0.0.1:{free_port()}/0")  # nothing listens there
    live = replica(tmp_path, store, "a")
    with pytest.raises(ControlStoreUnavailable) as refused:
        await live.change_weights("fraud", {"canary": 50}, "alice")
    assert (
        refused.value.code is ErrorCode.UNAVAILABLE
        and "control store redis://127.0.0.1" in refused.value.message
    )
    assert live.get("fraud").variant("canary").weight == 0
    watcher = RouteWatcher(store, lambda: live.revision, live.sync)
    await watcher.poll()
    assert not watcher.up
    live.audit.append("eve", "denied", "", None, None, "no token")  # queued for the store, never raises
    assert [e.action for e in live.audit.tail(10)] == ["denied"]
    await store.close()


def _count_up(url: str, times: int) -> int:
    """In another process: add one to the stored counter `times` times, re-reading on every conflict."""
    import asyncio

    async def run() -> int:
        store, conflicts = open_store(url), 0
        for _ in range(times):
            while True:
                snapshot = await store.read()
                count = (snapshot.document or {"count": 0})["count"]
                try:
                    await store.write(snapshot.revision, {"count": count + 1}, [{"action": "add"}])
                    break
                except RevisionConflict:
                    conflicts += 1
        await store.close()
        return conflicts

    return asyncio.run(run())


def test_sqlite_compare_and_set_holds_across_processes(tmp_path):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    url = f"sqlite:///{tmp_path}/control.db"
    with ProcessPoolExecutor(3, mp_context=multiprocessing.get_context("spawn")) as pool:
        conflicts = list(pool.map(_count_up, [url] * 3, [40] * 3))

    async def check():
        store = open_store(url)
        snapshot = await store.read()
        audit = await store.audit_tail(1000)
        await store.close()
        return snapshot, audit

    import asyncio

    snapshot, audit = asyncio.run(check())
    # no increment lost, none applied twice: 120 writes, 120 revisions, 120 audit entries
    assert (snapshot.revision, snapshot.document, len(audit)) == (120, {"count": 120}, 120), conflicts


async def test_a_reload_is_the_audited_reset_of_every_replica(store, tmp_path):
    routes_file = tmp_path / "routes.yaml"
    routes_file.write_text(yaml.safe_dump(ROUTES))
    a, b = replica(tmp_path, store, "a"), replica(tmp_path, store, "b")
    a.path = routes_file
    await a.sync()
    await b.change_weights("fraud", {"stable": 10, "canary": 90}, "bob")
    assert await a.reload("carol") == (True, "")  # the file's weights, over bob's change it had not seen yet
    await b.sync()
    assert b.get("fraud").variant("canary").weight == 0 and b.revision == a.revision == 3
    assert [(e.who, e.action) for e in await b.audit.recent(2)] == [
        ("bob", "set_weights"),
        ("carol", "reload"),
    ]


async def test_a_lease_has_one_holder_and_is_taken_over_when_it_expires(store):
    assert await store.lease("judge", "a", 0.3)
    assert not await store.lease("judge", "b", 0.3)
    assert await store.lease("judge", "a", 0.3)  # renewed by its holder
    for _ in range(100):  # a stops renewing (it died): b gets it once it expires, bounded
        if await store.lease("judge", "b", 5):
            break
        await asyncio.sleep(0.02)
    assert not await store.lease("judge", "a", 5)


async def test_rollouts_are_shared_judged_by_the_lease_holder_and_stopped_by_a_change_anywhere(
    store, tmp_path
):
    from gateway.rollout.canary import RolloutController
    from gateway.routing.stats import VariantStats

    plan = {"canary": "canary", "steps": [10, 50], "interval_s": 5, "min_requests": 5}
    routes = {"routes": {"fraud": {**ROUTES["routes"]["fraud"], "rollout": plan}}}
    now = [1000.0]
    clocks = {"clock": lambda: now[0], "wall": lambda: now[0]}
    replicas = []
    for name in ("a", "b"):
        live = LiveRoutes(parse_routes(routes, "test"), None, AuditLog(tmp_path / f"{name}.jsonl"))
        live.store = live.audit.shared = store
        await live.sync()
        stats = VariantStats(clock=lambda: now[0])
        replicas.append((live, stats, RolloutController(live, stats, **clocks)))
    (a, a_stats, a_judge), (b, _, b_judge) = replicas
    await a_judge.evaluate()
    await b_judge.evaluate()
    assert (a_judge.leading, b_judge.leading) == (True, False)
    await b_judge.begin("fraud", "alice")  # started through b, judged by a
    await a.sync()
    assert a_judge.state("fraud").state == "running" and a.get("fraud").variant("canary").weight == 10
    for _ in range(10):
        a_stats.record("fraud", "stable", True, 0.01)
        a_stats.record("fraud", "canary", True, 0.01)
    now[0] += 6
    await b_judge.evaluate()  # not the holder: nothing happens
    await a_judge.evaluate()
    await b.sync()
    assert (
        b.get("fraud").variant("canary").weight == 50 and b_judge.state("fraud").step == 1
    )  # shown by b too
    await b.rollback("fraud", "bob", "by hand")  # stops the rollout in the same write
    await a.sync()
    state = a_judge.state("fraud")
    assert state.state == "rolled_back" and state.last_reason == "rollback by bob: by hand"
    actions = [(e.who, e.action) for e in await a.audit.recent(4)]
    assert actions == [
        ("alice", "rollout_step"),
        ("rollout", "rollout_step"),
        ("bob", "rollback"),
        ("bob", "rollout_stopped"),
    ]


async def test_published_stats_are_per_gateway_and_stale_ones_are_left_out(store):
    assert await store.read_stats(1000.0, 2.0) == {}
    await store.publish_stats(
        "a", 1000.0, [{"route": "fraud", "variant": "canary", "buckets": [[999.0, 1, 0, {}]]}]
    )
    await store.publish_stats("b", 999.5, [])
    await store.publish_stats("a", 1001.0, [])  # replaces a's previous entry
    assert await store.read_stats(1001.0, 2.0) == {"a": (1001.0, []), "b": (999.5, [])}
    assert await store.read_stats(1001.0, 1.0) == {"a": (1001.0, [])}  # b stopped publishing: it died
    assert await store.read_stats(1001.0, 60.0) == {"a": (1001.0, [])}  # and was dropped from the store


async def test_the_judge_rolls_back_a_canary_failing_only_on_another_gateway(store, tmp_path):
    from gateway.rollout.canary import RolloutController, StatsPublisher
    from gateway.routing.stats import VariantStats

    plan = {"canary": "canary", "steps": [10, 50], "interval_s": 5, "min_requests": 5}
    routes = {"routes": {"fraud": {**ROUTES["routes"]["fraud"], "rollout": plan}}}
    now = [1000.0]
    replicas = []
    for name in ("a", "b"):
        live = LiveRoutes(parse_routes(routes, "test"), None, AuditLog(tmp_path / f"{name}.jsonl"))
        live.store = live.audit.shared = store
        await live.sync()
        stats = VariantStats(clock=lambda: now[0])
        judge = RolloutController(live, stats, clock=lambda: now[0], wall=lambda: now[0] + 5000)
        publisher = StatsPublisher(live, stats, judge.holder, wall=lambda: now[0] + 5000)
        replicas.append((live, stats, judge, publisher))
    (a, a_stats, a_judge, a_pub), (b, b_stats, b_judge, b_pub) = replicas
    await a_judge.evaluate()
    assert a_judge.leading
    assert not await b_pub.publish()  # no rollout running: nothing to publish
    await a_judge.begin("fraud", "alice")
    await b.sync()
    now[0] += 1
    for _ in range(
        40
    ):  # healthy on the judge; the canary fails on b only (enough calls for the test's evidence)
        a_stats.record("fraud", "stable", True, 0.01)
        a_stats.record("fraud", "canary", True, 0.01)
        b_stats.record("fraud", "stable", True, 0.01)
        b_stats.record("fraud", "canary", False, 0.01)
    await a_judge.evaluate()
    assert a_judge.state("fraud").state == "running"  # b has not published yet: the judge saw only its own
    assert await a_pub.publish() and await b_pub.publish()
    await a_judge.evaluate()
    state = a_judge.state("fraud")
    assert state.state == "rolled_back" and "canary error rate 50.0%" in state.last_reason
    await b.sync()
    assert b_judge.state("fraud").state == "rolled_back" and b.get("fraud").variant("canary").weight == 0


async def test_a_dead_gateways_stats_and_those_from_before_the_step_are_not_judged(store, tmp_path):
    from gateway.rollout.canary import STALE_S, RolloutController, StatsPublisher
    from gateway.routing.stats import VariantStats

    plan = {"canary": "canary", "steps": [10, 50], "interval_s": 5, "min_requests": 5}
    routes = {"routes": {"fraud": {**ROUTES["routes"]["fraud"], "rollout": plan}}}
    now = [1000.0]
    lives, stats = [], []
    for name in ("a", "b"):
        live = LiveRoutes(parse_routes(routes, "test"), None, AuditLog(tmp_path / f"{name}.jsonl"))
        live.store = live.audit.shared = store
        await live.sync()
        lives.append(live)
        stats.append(VariantStats(clock=lambda: now[0]))
    a_judge = RolloutController(lives[0], stats[0], clock=lambda: now[0], wall=lambda: now[0])
    b_pub = StatsPublisher(lives[1], stats[1], "b", wall=lambda: now[0])
    await a_judge.evaluate()
    for _ in range(10):  # failures before the rollout's step started do not count
        stats[1].record("fraud", "canary", False, 0.01)
    now[0] += 2
    await a_judge.begin("fraud", "alice")
    await lives[1].sync()
    assert await b_pub.publish()
    await a_judge.evaluate()
    assert a_judge.state("fraud").state == "running"
    now[0] += 1
    for _ in range(10):
        stats[1].record("fraud", "canary", False, 0.01)
    assert await b_pub.publish()
    now[0] += STALE_S + 0.5  # b died right after publishing
    await a_judge.evaluate()
    assert a_judge.state("fraud").state == "running"


def test_store_urls_are_checked():
    with pytest.raises(ValueError, match="expected sqlite"):
        open_store("sqlite://relative.db")
    with pytest.raises(ValueError, match="expected sqlite:///PATH or redis"):
        open_store("postgres://u:secret@db/x")
