"""Metrics from the client hooks: one table of names, two sinks.

`MetricsObserver` turns hook events into counts and observations once (the one home of
"which event is which metric"); a sink stores them: `OtelSink` into OpenTelemetry
instruments (extra `mirakl-cancel[otel]`), `PrometheusCollector` into an in-process
aggregate that a `prometheus_client` registry collects (extra `mirakl-cancel[prometheus]`).

Labels stay few and bounded: a route (three), an HTTP status, an outcome, a final
state, a retry reason's kind (``HTTP 503``, ``timeout``, an exception class). Never an
order or action id: those belong to traces and logs, not to time series.
"""

from __future__ import annotations

import bisect
import contextlib
import threading
from collections.abc import Iterator
from typing import Any, Protocol

import attrs

from .._constants import METRIC_ACTION_LIFETIME_BUCKETS as _LIFETIME
from .._constants import METRIC_LATENCY_BUCKETS as _LATENCY
from .._constants import METRIC_POLL_LAG_BUCKETS as _LAG
from .._version import __version__
from .hooks import (
    ActionFinalEvent,
    ActionTrackedEvent,
    CallEndEvent,
    Observer,
    PollEvent,
    RateLimitEvent,
    ResponseEvent,
    RetryEvent,
    UncertainEvent,
)

__all__ = ["METRICS", "MetricsObserver", "OtelSink", "PrometheusCollector", "serve_metrics"]

@attrs.frozen
class Metric:
    """One metric: its Prometheus name (counters get `_total`), OTel name, kind, labels."""

    name: str
    otel_name: str
    kind: str  # "counter", "gauge" (up/down), "histogram"
    help: str
    unit: str
    labels: tuple[str, ...] = ()
    buckets: tuple[float, ...] = ()


METRICS: dict[str, Metric] = {m.name: m for m in (
    Metric("mirakl_cancel_requests", "mirakl_cancel.requests", "counter",
           "HTTP attempts by route and answer status ('none': no answer arrived)",
           "{request}", ("route", "status")),
    Metric("mirakl_cancel_request_duration_seconds", "mirakl_cancel.request.duration",
           "histogram", "Seconds from an attempt leaving to its answer", "s", ("route",),
           _LATENCY),
    Metric("mirakl_cancel_calls", "mirakl_cancel.calls", "counter",
           "Logical calls (retries included) by route and outcome", "{call}",
           ("route", "outcome")),
    Metric("mirakl_cancel_retries", "mirakl_cancel.retries", "counter",
           "Attempts retried, by route and reason", "{retry}", ("route", "reason")),
    Metric("mirakl_cancel_rate_limited", "mirakl_cancel.rate_limited", "counter",
           "429 answers, by route", "{response}", ("route",)),
    Metric("mirakl_cancel_rate_limit_pause_seconds", "mirakl_cancel.rate_limit.pause",
           "counter", "Seconds the client was told to pause by 429s", "s"),
    Metric("mirakl_cancel_uncertain", "mirakl_cancel.uncertain", "counter",
           "Cancels that may have been processed but whose answer was lost", "{request}",
           ("route",)),
    Metric("mirakl_cancel_pending_actions", "mirakl_cancel.pending_actions", "gauge",
           "Actions being tracked, not final yet", "{action}"),
    Metric("mirakl_cancel_actions_final", "mirakl_cancel.actions_final", "counter",
           "Actions whose tracking ended, by final state (SUCCESS, FAILED, TIMED_OUT, ERROR)",
           "{action}", ("state",)),
    Metric("mirakl_cancel_action_duration_seconds", "mirakl_cancel.action.duration",
           "histogram", "Seconds from acceptance (tracking start) to the final state", "s",
           ("state",), _LIFETIME),
    Metric("mirakl_cancel_poll_lag_seconds", "mirakl_cancel.poll.lag", "histogram",
           "Seconds a status read started after it was due", "s", (), _LAG),
)}


class Sink(Protocol):
    """Where `MetricsObserver` puts values."""

    def add(self, name: str, value: float, labels: tuple[str, ...]) -> None:
        """Add to a counter, or to an up/down gauge (negative allowed)."""

    def record(self, name: str, value: float, labels: tuple[str, ...]) -> None:
        """Observe a value in a histogram."""


def _reason_kind(reason: str) -> str:
    """`ClientOSError: [Errno 104] ...` → `ClientOSError`: a bounded label value."""
    return reason.split(":", 1)[0]


def _final_state(event: ActionFinalEvent) -> str:
    result = event.result
    if result.status is not None:
        return result.status.raw_status
    return "TIMED_OUT" if result.timed_out else "ERROR"


class MetricsObserver(Observer):
    """Hook events → metrics (see `METRICS`), into `sink`."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink

    def on_response(self, event: ResponseEvent) -> None:
        route = event.call.route
        status = "none" if event.status is None else str(event.status)
        self.sink.add("mirakl_cancel_requests", 1, (route, status))
        self.sink.record("mirakl_cancel_request_duration_seconds", event.elapsed, (route,))

    def on_call_end(self, event: CallEndEvent) -> None:
        self.sink.add("mirakl_cancel_calls", 1, (event.call.route, event.outcome.value))

    def on_retry(self, event: RetryEvent) -> None:
        self.sink.add("mirakl_cancel_retries", 1, (event.call.route, _reason_kind(event.reason)))

    def on_rate_limit(self, event: RateLimitEvent) -> None:
        self.sink.add("mirakl_cancel_rate_limited", 1, (event.call.route,))
        self.sink.add("mirakl_cancel_rate_limit_pause_seconds", event.seconds, ())

    def on_uncertain(self, event: UncertainEvent) -> None:
        self.sink.add("mirakl_cancel_uncertain", 1, (event.call.route,))

    def on_action_tracked(self, event: ActionTrackedEvent) -> None:
        self.sink.add("mirakl_cancel_pending_actions", 1, ())

    def on_poll(self, event: PollEvent) -> None:
        self.sink.record("mirakl_cancel_poll_lag_seconds", event.lag, ())

    def on_action_final(self, event: ActionFinalEvent) -> None:
        state = _final_state(event)
        self.sink.add("mirakl_cancel_pending_actions", -1, ())
        self.sink.add("mirakl_cancel_actions_final", 1, (state,))
        self.sink.record("mirakl_cancel_action_duration_seconds", event.result.elapsed, (state,))


class OtelSink:
    """OpenTelemetry instruments, made once from `METRICS` (a meter from the global
    provider unless one is given)."""

    def __init__(self, meter_provider: Any = None) -> None:
        from opentelemetry import metrics

        meter = metrics.get_meter("mirakl_cancel", __version__, meter_provider=meter_provider)
        self._instruments: dict[str, tuple[Metric, Any]] = {}
        for metric in METRICS.values():
            instrument: Any
            if metric.kind == "counter":
                instrument = meter.create_counter(metric.otel_name, metric.unit, metric.help)
            elif metric.kind == "gauge":
                instrument = meter.create_up_down_counter(metric.otel_name, metric.unit,
                                                          metric.help)
            else:
                instrument = meter.create_histogram(metric.otel_name, metric.unit, metric.help)
            self._instruments[metric.name] = (metric, instrument)

    def add(self, name: str, value: float, labels: tuple[str, ...]) -> None:
        metric, instrument = self._instruments[name]
        instrument.add(value, dict(zip(metric.labels, labels, strict=True)))

    def record(self, name: str, value: float, labels: tuple[str, ...]) -> None:
        metric, instrument = self._instruments[name]
        instrument.record(value, dict(zip(metric.labels, labels, strict=True)))


class _Histogram:
    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)  # the last one is +Inf
        self.sum = 0.0


class _Aggregate:
    """Counters and histograms in memory, safe to read from another thread."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.values: dict[str, dict[tuple[str, ...], float]] = {n: {} for n in METRICS}
        self.histograms: dict[str, dict[tuple[str, ...], _Histogram]] = {n: {} for n in METRICS}

    def add(self, name: str, value: float, labels: tuple[str, ...]) -> None:
        with self.lock:
            series = self.values[name]
            series[labels] = series.get(labels, 0.0) + value

    def record(self, name: str, value: float, labels: tuple[str, ...]) -> None:
        buckets = METRICS[name].buckets
        with self.lock:
            series = self.histograms[name]
            histogram = series.get(labels)
            if histogram is None:
                histogram = series[labels] = _Histogram(len(buckets))
            histogram.counts[bisect.bisect_left(buckets, value)] += 1
            histogram.sum += value


class PrometheusCollector(MetricsObserver):
    """A hook observer *and* a `prometheus_client` collector:

    >>> collector = PrometheusCollector()
    >>> client.hooks.add(collector)          # doctest: +SKIP
    >>> registry.register(collector)         # doctest: +SKIP (your own, or REGISTRY)

    One collector may observe several clients; their series add up.
    """

    def __init__(self) -> None:
        self._aggregate = _Aggregate()
        super().__init__(self._aggregate)

    def describe(self) -> Iterator[Any]:
        """No metric up front: `collect()` is cheap enough to describe them."""
        return iter(())

    def collect(self) -> Iterator[Any]:
        """The current values, as prometheus_client metric families."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        aggregate = self._aggregate
        with aggregate.lock:
            values = {name: dict(series) for name, series in aggregate.values.items()}
            histograms = {name: {labels: (list(h.counts), h.sum) for labels, h in series.items()}
                          for name, series in aggregate.histograms.items()}
        for metric in METRICS.values():
            family: Any
            if metric.kind == "histogram":
                family = HistogramMetricFamily(metric.name, metric.help, labels=metric.labels)
                for labels, (counts, total) in histograms[metric.name].items():
                    cumulative, running = [], 0
                    bounds = [*map(str, metric.buckets), "+Inf"]
                    for bound, count in zip(bounds, counts, strict=True):
                        running += count
                        cumulative.append((bound, running))
                    family.add_metric(list(labels), cumulative, total)
            else:
                cls = CounterMetricFamily if metric.kind == "counter" else GaugeMetricFamily
                family = cls(metric.name, metric.help, labels=metric.labels)
                series = values[metric.name]
                if not metric.labels and not series:
                    series = {(): 0.0}  # unlabelled series exist from the start
                for labels, value in series.items():
                    family.add_metric(list(labels), value)
            yield family


@contextlib.contextmanager
def serve_metrics(port: int, collector: PrometheusCollector) -> Iterator[int]:
    """Serve `/metrics` of `collector` on 127.0.0.1:`port` (0: any free port) for the
    block, on a thread of its own; yields the port."""
    from prometheus_client import CollectorRegistry, start_http_server

    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
