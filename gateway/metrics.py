"""Prometheus metrics of the gateway, read from its live state at scrape time: nothing is added to the request
path (the per-route latency histogram is VariantStats' own since-start counts, which its `record` keeps beside the
judge's window). Served on the gateway's metrics port (`MESHSERVE_GATEWAY_METRICS_PORT`)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector

from gateway.rollout.canary import Judgement, RolloutController
from gateway.rollout.judgement import VERDICTS, metric_key
from gateway.routing.admission import Admission
from gateway.routing.dispatch import Dispatcher
from gateway.routing.live import LiveRoutes
from gateway.routing.shadow import ShadowRunner
from gateway.serving.prediction_cache import PredictionCache
from gateway.serving.prediction_log import PredictionLog
from meshserve.core.coalesce import Coalescer
from meshserve.feature.drift import DriftMonitor
from meshserve.quality import VERDICTS as COMPARISON_VERDICTS
from meshserve.quality import Comparison

ROLLOUT_STATES = ("none", "running", "paused", "completed", "rolled_back", "stopped")


class GatewayCollector(Collector):
    def __init__(
        self,
        live: LiveRoutes,
        dispatcher: Dispatcher,
        shadow: ShadowRunner,
        rollouts: RolloutController,
        cache: PredictionCache,
        drift: DriftMonitor | None = None,
        answers: Counter[tuple[str, str]] | None = None,
        coalescers: Callable[[], Mapping[str, Coalescer]] | None = None,
        admission: Admission | None = None,
        prediction_log: PredictionLog | None = None,
    ) -> None:
        self.prediction_log = prediction_log
        self.coalescers = coalescers
        self.admission = admission
        self.cache = cache
        self.drift = drift
        self.answers = answers
        self.live = live
        self.dispatcher = dispatcher
        self.shadow = shadow
        self.rollouts = rollouts

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        prefix = "meshserve_gateway"
        weight = GaugeMetricFamily(
            f"{prefix}_variant_weight", "Live weight of each variant", labels=["route", "variant"]
        )
        ejected = GaugeMetricFamily(
            f"{prefix}_variant_ejected", "1 while a variant is ejected", labels=["route", "variant"]
        )
        attempts = CounterMetricFamily(
            f"{prefix}_attempts", "Calls to a variant, by outcome", labels=["route", "variant", "outcome"]
        )
        for name, route in self.live.served.items():  # implicit routes too: every name a caller can use
            for v in route.variants:
                weight.add_metric([name, v.name], v.weight)
                ejected.add_metric(
                    [name, v.name], float(self.dispatcher.ejection.ejected(f"{name}/{v.name}"))
                )
                requests, errors = self.dispatcher.stats.totals.get((name, v.name), (0, 0))
                attempts.add_metric([name, v.name, "ok"], requests - errors)
                attempts.add_metric([name, v.name, "error"], errors)
        yield from (weight, ejected, attempts)
        yield from self._route_requests(prefix)
        yield CounterMetricFamily(
            f"{prefix}_retries", "Retries granted by the retry budgets", value=self.dispatcher.retries
        )
        if self.answers is not None:
            tiers = CounterMetricFamily(
                f"{prefix}_answers", "Answers by the fallback tier that gave them", labels=["route", "tier"]
            )
            for (route, tier), count in sorted(self.answers.items()):
                tiers.add_metric([route, tier], count)
            yield tiers

        labels = ["route", "variant"]
        compared = CounterMetricFamily(
            f"{prefix}_shadow_compared", "Shadow answers compared with the primary", labels=labels
        )
        failed = CounterMetricFamily(f"{prefix}_shadow_failed", "Shadow calls that failed", labels=labels)
        skipped = CounterMetricFamily(
            f"{prefix}_shadow_skipped", "Shadows not sent: too many in flight", labels=labels
        )
        diff = GaugeMetricFamily(
            f"{prefix}_shadow_mean_abs_score_diff", "Mean |primary - shadow| score", labels=labels
        )
        agreement = GaugeMetricFamily(
            f"{prefix}_shadow_label_agreement", "Share of equal labels", labels=labels
        )
        for (route, variant), tally in self.shadow.tallies.items():
            compared.add_metric([route, variant], tally.compared)
            failed.add_metric([route, variant], tally.failed)
            skipped.add_metric([route, variant], tally.skipped)
            diff.add_metric([route, variant], tally.mean_abs_diff)
            agreement.add_metric([route, variant], tally.label_agreement)
        yield from (compared, failed, skipped, diff, agreement)

        state = GaugeMetricFamily(
            f"{prefix}_rollout_state", "1 for the rollout's current state", labels=["route", "state"]
        )
        step = GaugeMetricFamily(
            f"{prefix}_rollout_step", "Index of the rollout's current step", labels=["route"]
        )
        judged = [(route, rollout.judgement) for route, rollout in self.rollouts.states.items()]
        for route, rollout in self.rollouts.states.items():
            for name in ROLLOUT_STATES:
                state.add_metric([route, name], float(rollout.state == name))
            step.add_metric([route], rollout.step)
        yield from (state, step)
        yield from self._judgements(prefix, [(route, j) for route, j in judged if j is not None])
        yield from self._comparisons(
            f"{prefix}_rollout_quality", "the rollout judge's last", ["route"],
            [((route, ), j.comparisons) for route, j in judged if j is not None],
        )  # fmt: skip
        shadow_looks = self.rollouts.shadow_looks
        yield from self._comparisons(
            f"{prefix}_shadow_quality", "a shadow's paired (against the primary variant)", ["route", "variant"],
            [(key, look.found or ()) for key, look in shadow_looks.items()],
        )  # fmt: skip

        lookups = CounterMetricFamily(
            f"{prefix}_cache_lookups", "Prediction cache lookups by result", labels=["route", "result"]
        )
        bypasses = CounterMetricFamily(
            f"{prefix}_cache_bypasses", "Cache calls bypassed (failed or slow)", labels=["route"]
        )
        coalesced = CounterMetricFamily(
            f"{prefix}_cache_coalesced", "Misses that waited for an identical one", labels=["route"]
        )
        for route, st in self.cache.stats.items():
            for result, value in (("near_hit", st.near_hits), ("hit", st.hits), ("miss", st.misses)):
                lookups.add_metric([route, result], value)
            bypasses.add_metric([route], st.bypasses)
            coalesced.add_metric([route], st.coalesced)
        yield from (lookups, bypasses, coalesced)

        if self.coalescers is not None:
            yield from self._coalescing(prefix)
        if self.admission is not None:
            yield from self._admission(prefix, self.admission)
        if self.prediction_log is not None:
            yield from self._prediction_log(prefix, self.prediction_log)

        if self.drift is not None:
            psi = GaugeMetricFamily(
                f"{prefix}_feature_drift_psi",
                "PSI of a model input vs its training data",
                labels=["model", "feature"],
            )
            for model in self.drift.models:
                for feature, value in self.drift.scores(model).items():
                    psi.add_metric([model, feature], value)
            yield psi

    def _route_requests(self, prefix: str) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """Per route and variant, what the judge counts (VariantStats: every call that answered, and every failure
        that is the variant's own), for a Flagger or Argo Rollouts analysis to query."""
        labels = ["route", "variant"]
        duration = HistogramMetricFamily(
            f"{prefix}_route_request_duration_seconds",
            "Time of each call to a variant that the canary judge counts",
            labels=labels,
        )
        requests = CounterMetricFamily(
            f"{prefix}_route_requests",
            "Calls to a variant that the canary judge counts, by outcome",
            labels=[*labels, "outcome"],
        )
        stats = self.dispatcher.stats
        for (route, variant), (total, errors) in list(stats.totals.items()):
            requests.add_metric([route, variant, "ok"], total - errors)
            requests.add_metric([route, variant, "error"], errors)
        for (route, variant), latencies in list(stats.latency_totals.items()):
            duration.add_metric([route, variant], latencies.cumulative(), latencies.sum_s)
        yield from (duration, requests)

    def _judgements(self, prefix: str, judged: list[tuple[str, Judgement]]) -> Iterator[GaugeMetricFamily]:
        """The judge's last evaluation per rollout: measured error rates, p99s and requests of canary and baseline
        (label `role`), and the plan's thresholds it compared them with."""
        labels = ["route", "variant", "role"]
        error_rate = GaugeMetricFamily(
            f"{prefix}_rollout_judged_error_rate", "Error rate the canary judge measured", labels=labels
        )
        p99 = GaugeMetricFamily(
            f"{prefix}_rollout_judged_p99_seconds", "p99 latency the canary judge measured", labels=labels
        )
        requests = GaugeMetricFamily(
            f"{prefix}_rollout_judged_requests",
            "Calls in the window the canary judge measured",
            labels=labels,
        )
        threshold = GaugeMetricFamily(
            f"{prefix}_rollout_threshold",
            "The rollout plan's thresholds: max_error_rate_increase, max_p99_ratio, min_requests",
            labels=["route", "threshold"],
        )
        verdict = GaugeMetricFamily(
            f"{prefix}_rollout_verdict", "1 for the last judgement's verdict", labels=["route", "verdict"]
        )
        judged_at = GaugeMetricFamily(
            f"{prefix}_rollout_judged_timestamp_seconds",
            "When the canary judge last judged",
            labels=["route"],
        )
        for route, j in judged:
            for role, window in (("canary", j.canary), ("baseline", j.baseline)):
                error_rate.add_metric([route, window.variant, role], window.error_rate)
                p99.add_metric([route, window.variant, role], window.p99_s)
                requests.add_metric([route, window.variant, role], window.requests)
            threshold.add_metric([route, "max_error_rate_increase"], j.max_error_rate_increase)
            threshold.add_metric([route, "max_p99_ratio"], j.max_p99_ratio)
            threshold.add_metric([route, "min_requests"], j.min_requests)
            for name in VERDICTS:
                verdict.add_metric([route, name], float(j.verdict == name))
            judged_at.add_metric([route], j.at)
        yield from (error_rate, p99, requests, threshold, verdict, judged_at)

    @staticmethod
    def _comparisons(
        name: str, whose: str, labels: list[str], judged: list[tuple[tuple[str, ...], tuple[Comparison, ...]]]
    ) -> Iterator[GaugeMetricFamily]:
        """Anytime-valid comparisons (error rate, AUC, log loss): both sides' values, the difference or ratio with
        its bounds, the limit, the e-value, the samples and the verdict; label `metric` error_rate | auc |
        log_loss. Bounds are absent while a comparison waits for samples."""
        labels = [*labels, "metric"]
        value = GaugeMetricFamily(
            name, f"The metric on each side in {whose} comparison", labels=[*labels, "side"]
        )
        estimate = GaugeMetricFamily(
            f"{name}_estimate",
            f"Canary - baseline (a ratio for log loss) in {whose} comparison",
            labels=labels,
        )
        bound = GaugeMetricFamily(
            f"{name}_bound",
            f"Anytime-valid bounds on the estimate in {whose} comparison",
            labels=[*labels, "bound"],
        )
        limit = GaugeMetricFamily(f"{name}_limit", "The plan's limit on the estimate's scale", labels=labels)
        e_value = GaugeMetricFamily(
            f"{name}_e_value", "Evidence against estimate == limit (decides at 1/alpha)", labels=labels
        )
        alpha = GaugeMetricFamily(
            f"{name}_alpha", "The comparison's share of the plan's alpha", labels=labels
        )
        samples = GaugeMetricFamily(
            f"{name}_samples",
            "Requests (error rate) or labelled predictions compared",
            labels=[*labels, "side"],
        )
        verdict = GaugeMetricFamily(
            f"{name}_verdict", "1 for the comparison's verdict", labels=[*labels, "verdict"]
        )

        def finite(family: GaugeMetricFamily, labels: list[str], x: float) -> None:
            if x == x and abs(x) != float("inf"):  # a waiting comparison has no bounds yet
                family.add_metric(labels, x)

        for key, comparisons in judged:
            for c in comparisons:
                at = [*key, metric_key(c.metric)]
                for side, x, n in (
                    ("canary", c.canary, c.canary_samples),
                    ("baseline", c.baseline, c.baseline_samples),
                ):
                    finite(value, [*at, side], x)
                    samples.add_metric([*at, side], n)
                finite(estimate, at, c.estimate)
                finite(bound, [*at, "lower"], c.lower)
                finite(bound, [*at, "upper"], c.upper)
                finite(limit, at, c.limit)
                finite(e_value, at, c.statistic)
                alpha.add_metric(at, c.alpha)
                for name_ in COMPARISON_VERDICTS:
                    verdict.add_metric([*at, name_], float(c.verdict == name_))
        yield from (value, estimate, bound, limit, e_value, alpha, samples, verdict)

    def _coalescing(self, prefix: str) -> Iterator[CounterMetricFamily]:
        """Calls the gateway made to each target and the callers they carried: members / calls is the merge."""
        families = {
            "calls": CounterMetricFamily(
                f"{prefix}_coalesced_calls", "Calls sent to a target", labels=["target"]
            ),
            "members": CounterMetricFamily(
                f"{prefix}_coalesced_members", "Callers' requests those calls carried", labels=["target"]
            ),
            "abandoned": CounterMetricFamily(
                f"{prefix}_coalesced_abandoned",
                "Calls cancelled because every caller had left",
                labels=["target"],
            ),
            "expired": CounterMetricFamily(
                f"{prefix}_coalesced_expired", "Callers that ran out of time waiting", labels=["target"]
            ),
        }
        for target, coalescer in self.coalescers().items():  # type: ignore[misc]
            stats = coalescer.stats
            families["calls"].add_metric([target], stats.batches)
            families["members"].add_metric([target], stats.members)
            families["abandoned"].add_metric([target], stats.abandoned)
            families["expired"].add_metric([target], stats.expired)
        yield from families.values()

    def _prediction_log(
        self, prefix: str, writer: PredictionLog
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        records = CounterMetricFamily(
            f"{prefix}_prediction_log_records",
            "Answers for the prediction log: logged (the monitor took them), dropped (no room while it was slow "
            "or down), failed (it refused them), unreadable (no record could be built)",
            labels=["outcome"],
        )
        for outcome in ("logged", "dropped", "failed", "unreadable"):
            records.add_metric([outcome], getattr(writer, outcome))
        yield records
        yield GaugeMetricFamily(
            f"{prefix}_prediction_log_held",
            "Answers held for the monitor (queued or being sent)",
            value=writer.held,
        )

    def _admission(
        self, prefix: str, admission: Admission
    ) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        limit = GaugeMetricFamily(
            f"{prefix}_admission_limit", "Requests a route may have in flight now", labels=["route"]
        )
        in_flight = GaugeMetricFamily(f"{prefix}_admission_in_flight", "Requests in flight", labels=["route"])
        refused = CounterMetricFamily(
            f"{prefix}_admission_refused",
            "Requests refused before any work, by reason",
            labels=["route", "reason"],
        )
        for route, route_limit in list(admission.limits.items()):
            limit.add_metric([route], route_limit.limit)
            in_flight.add_metric([route], admission.in_flight[route])
        for (route, reason), count in list(admission.refused.items()):
            refused.add_metric([route, reason], count)
        yield from (limit, in_flight, refused)
